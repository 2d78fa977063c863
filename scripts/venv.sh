#!/usr/bin/env bash
# Creates .venv (git-ignored) with the Python peers of the VNC and nova tests:
#   nova==34.0.0  (nova.console.securityproxy.rfb.RFBSecurityProxy, nova.console.rfb.authvencrypt;
#                  nova.virt.ironic.driver.IronicDriver for conductor/tests/nova_ironic.rs, which
#                  also needs xorriso's xorrisofs as nova's mkisofs_cmd, from scripts/setup.sh)
#   vncdotool     (a second RFB client that captures a screenshot)
# Idempotent: a .venv that already imports both is kept. Needs python3 with the venv module.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
check() {
    "$PY" - <<'PY' 2>/dev/null
import importlib.metadata as m
assert m.version("nova") == "34.0.0"
import nova.console.securityproxy.rfb, nova.console.rfb.authvencrypt, vncdotool.api  # noqa
import nova.virt.ironic.driver, openstack.baremetal.v1._proxy  # noqa
PY
}
if [[ -x "$PY" ]] && check; then
    echo "venv.sh: $VENV ready (nova 34.0.0, vncdotool)"
    exit 0
fi
python3 -m venv "$VENV"
"$PY" -m pip install --no-cache-dir --quiet --upgrade pip
"$PY" -m pip install --no-cache-dir --quiet "nova==34.0.0" vncdotool service_identity
check || { echo "venv.sh: nova/vncdotool import check failed" >&2; exit 1; }
echo "venv.sh: $VENV ready (nova 34.0.0, vncdotool)"

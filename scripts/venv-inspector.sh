#!/usr/bin/env bash
# The real ironic-inspector the inspect service's tests drive, in a venv of
# its own: .venv-inspector/ at the repository root (git-ignored).
#
#   scripts/venv-inspector.sh        # create or update; idempotent
#
# Installs ironic-inspector (pinned: 12.5.0, the version the rig's
# inspector-up.sh starts) from PyPI into the venv only (never the system
# Python). The tests (inspect/tests/inspector_real.rs) link it into the
# state dir they give ../shared/rig/inspector-up.sh, so no test installs
# anything while it runs.
# Env: PORTHOLE_VENV_INSPECTOR (the venv's path), PYTHON (python3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${PORTHOLE_VENV_INSPECTOR:-$ROOT/.venv-inspector}
PY=${PYTHON:-python3}
say() { echo "venv-inspector.sh: $*" >&2; }

PKGS=("ironic-inspector==12.5.0")

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.porthole-inspector"
want=$(printf '%s\n' "${PKGS[@]}")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/ironic-inspector" ]; then
  say "up to date ($VENV)"
  exit 0
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/pip" install -q --disable-pip-version-check "${PKGS[@]}"
"$VENV/bin/ironic-inspector" --version >/dev/null 2>&1 || "$VENV/bin/python" -c 'import ironic_inspector'
printf '%s\n' "$want" >"$stamp"
say "ready: $VENV/bin/ironic-inspector"

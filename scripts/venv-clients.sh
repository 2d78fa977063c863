#!/usr/bin/env bash
# The OpenStack clients the conductor's acceptance tests drive, in a venv of
# their own: .venv-clients/ at the repository root (git-ignored).
#
#   scripts/venv-clients.sh          # create or update; idempotent
#
# Installs python-openstackclient, python-ironicclient, openstacksdk,
# python-ironic-inspector-client (`openstack baremetal introspection ...`,
# against the rig's ironic-inspector) and prometheus-client (its text
# parser, for the metrics tests) from PyPI into
# the venv only (never the system Python). Versions are pinned so
# the microversions the clients negotiate stay known (conductor advertises
# up to 1.99; ironicclient asks for its latest known version).
# Env: PORTHOLE_VENV_CLIENTS (the venv's path), PYTHON (python3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${PORTHOLE_VENV_CLIENTS:-$ROOT/.venv-clients}
PY=${PYTHON:-python3}
say() { echo "venv-clients.sh: $*" >&2; }

PKGS=(
  "python-openstackclient==10.5.0"
  "python-ironicclient==6.3.0"
  "openstacksdk==4.22.0"
  # `openstack baremetal introspection status` (inspector's own API, noauth).
  "python-ironic-inspector-client==5.4.0"
  # The metrics tests parse /metrics with Prometheus' own Python parser.
  "prometheus-client==0.26.0"
)

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.porthole-clients"
want=$(printf '%s\n' "${PKGS[@]}")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/openstack" ]; then
  say "up to date ($VENV)"
  exit 0
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/pip" install -q --disable-pip-version-check "${PKGS[@]}"
"$VENV/bin/openstack" --version >/dev/null
printf '%s\n' "$want" >"$stamp"
say "ready: $VENV/bin/openstack"

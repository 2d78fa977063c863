#!/usr/bin/env bash
# A real Keystone for the deploy service's Keystone v3 tests, in a venv of
# its own: .venv-keystone/ at the repository root (git-ignored).
#
#   scripts/venv-keystone.sh         # create or update; idempotent
#
# Installs keystone (pinned: 26.1.1, 2024.2) from PyPI into the venv only
# (never the system Python). scripts/keystone-up.sh runs it.
# Env: PORTHOLE_VENV_KEYSTONE (the venv's path), PYTHON (python3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${PORTHOLE_VENV_KEYSTONE:-$ROOT/.venv-keystone}
PY=${PYTHON:-python3}
say() { echo "venv-keystone.sh: $*" >&2; }

# bcrypt: 5.x makes passlib 1.7.4 (keystone's hasher) fail every password;
# 4.2.0 is what the 2024.2 release was tested with.
# oslo.context: 6.x dropped the RequestContext._domain_id keystone 26 reads
# (every admin call answered 500); 5.6.0 is 2024.2's.
# SQLAlchemy 2.1 / oslo.db 18: a second write in the server process found
# SQLite "database is locked"; 2.0.35 / 16.0.0 are 2024.2's.
PKGS=("keystone==26.1.1" "bcrypt==4.2.0" "oslo.context==5.6.0" "SQLAlchemy==2.0.35" "oslo.db==16.0.0")

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.porthole-keystone"
want=$(printf '%s\n' "${PKGS[@]}")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/keystone-manage" ]; then
  say "up to date ($VENV)"
  exit 0
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/pip" install -q --disable-pip-version-check "${PKGS[@]}"
"$VENV/bin/python" -c 'import keystone.server.wsgi'
printf '%s\n' "$want" >"$stamp"
say "ready: $VENV/bin/keystone-manage"

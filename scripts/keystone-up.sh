#!/usr/bin/env bash
# A real Keystone (PyPI's keystone in .venv-keystone, scripts/venv-keystone.sh)
# on 127.0.0.1, for the deploy service's Keystone v3 tests: SQLite, fernet
# tokens, `keystone-manage db_sync` and `bootstrap`, then a service of type
# `object-store` with public and internal endpoints in RegionOne (made in the
# bootstrap process) pointing at
# the rig's Swift. Keystone is served by keystone-wsgi-public (wsgiref).
#
#   keystone-up.sh up | down
#
# Env: KEYSTONE_STATE_DIR (required: config, database, keys, log, pid),
#      KEYSTONE_PORT (19950), KEYSTONE_PASSWORD_FILE (required: the admin
#      password, first line; read by the Python processes themselves, never
#      put in argv or the environment), KEYSTONE_TOKEN_EXPIRATION (3600 s),
#      KEYSTONE_SWIFT_URL (http://127.0.0.1:8080/v1/AUTH_$(project_id)s: the
#      public endpoint), KEYSTONE_SWIFT_INTERNAL_URL (the internal one; the
#      public one's by default),
#      PORTHOLE_VENV_KEYSTONE (the venv).
# Users: `admin` in domain Default with role admin on project `admin`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${PORTHOLE_VENV_KEYSTONE:-$ROOT/.venv-keystone}
STATE=${KEYSTONE_STATE_DIR:?KEYSTONE_STATE_DIR names the state dir}
PORT=${KEYSTONE_PORT:-19950}
EXPIRATION=${KEYSTONE_TOKEN_EXPIRATION:-3600}
SWIFT_URL=${KEYSTONE_SWIFT_URL:-'http://127.0.0.1:8080/v1/AUTH_$(project_id)s'}
SWIFT_INTERNAL_URL=${KEYSTONE_SWIFT_INTERNAL_URL:-$SWIFT_URL}
say() { echo "keystone-up.sh: $*" >&2; }

down() {
  local f="$STATE/keystone.pid"
  if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
    kill "$(cat "$f")"
    for _ in $(seq 1 50); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$f"
}

up() {
  local pwfile=${KEYSTONE_PASSWORD_FILE:?KEYSTONE_PASSWORD_FILE names the admin password file}
  if [ -f "$STATE/keystone.pid" ] && kill -0 "$(cat "$STATE/keystone.pid")" 2>/dev/null; then
    echo "already running"
    return 0
  fi
  "$ROOT/scripts/venv-keystone.sh"
  mkdir -p "$STATE"
  rm -rf "$STATE/fernet" "$STATE/credential" "$STATE/keystone.db" "$STATE/keystone.log" "$STATE/keystone.out"
  local conf="$STATE/keystone.conf"
  cat >"$conf" <<CONF
[DEFAULT]
log_file = $STATE/keystone.log
[database]
connection = sqlite:///$STATE/keystone.db
[fernet_tokens]
key_repository = $STATE/fernet
[credential]
key_repository = $STATE/credential
[token]
expiration = $EXPIRATION
CONF
  local km=("$VENV/bin/keystone-manage" --config-file "$conf")
  "${km[@]}" db_sync
  "${km[@]}" fernet_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)"
  "${km[@]}" credential_setup --keystone-user "$(id -un)" --keystone-group "$(id -gn)"
  # bootstrap takes the password from --bootstrap-password or the
  # environment: set it inside the Python process only.
  KS_PWFILE="$pwfile" "$VENV/bin/python" - "$conf" "$PORT" "$SWIFT_URL" "$SWIFT_INTERNAL_URL" <<'PY'
import os, sys
conf, port, swift, swift_internal = sys.argv[1:5]
with open(os.environ.pop("KS_PWFILE")) as f:
    os.environ["OS_BOOTSTRAP_PASSWORD"] = f.readline().strip()
from keystone.cmd import manage
url = f"http://127.0.0.1:{port}/v3"
sys.argv = ["keystone-manage", "--config-file", conf, "bootstrap",
            "--bootstrap-admin-url", url, "--bootstrap-internal-url", url,
            "--bootstrap-public-url", url, "--bootstrap-region-id", "RegionOne"]
manage.main()
# The object-store service and its endpoints, in this process: through the
# REST API the server's second write hit SQLite's "database is locked".
import uuid
from keystone.common import provider_api
catalog = provider_api.ProviderAPIs.catalog_api
sid = uuid.uuid4().hex
catalog.create_service(sid, {"id": sid, "type": "object-store", "name": "swift", "enabled": True})
for iface, url in (("public", swift), ("internal", swift_internal)):
    eid = uuid.uuid4().hex
    catalog.create_endpoint(eid, {"id": eid, "service_id": sid, "interface": iface,
                                  "region_id": "RegionOne", "url": url, "enabled": True})
PY
  OS_KEYSTONE_CONFIG_FILES="$conf" setsid "$VENV/bin/keystone-wsgi-public" \
    --host 127.0.0.1 --port "$PORT" >>"$STATE/keystone.out" 2>&1 </dev/null &
  echo $! >"$STATE/keystone.pid"
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$PORT/v3" >/dev/null 2>&1; then break; fi
    kill -0 "$(cat "$STATE/keystone.pid")" 2>/dev/null || { say "keystone exited: $(tail -5 "$STATE/keystone.out")"; exit 1; }
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$PORT/v3" >/dev/null || { say "keystone does not answer on $PORT"; exit 1; }
  say "up on http://127.0.0.1:$PORT/v3 (pid $(cat "$STATE/keystone.pid"))"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) say "usage: keystone-up.sh up|down"; exit 2 ;;
esac

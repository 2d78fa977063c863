#!/usr/bin/env bash
# Porthole's demo: a serial console over IPMI SOL on a simulated BMC, asked
# for through the conductor's Ironic API with the real `openstack` CLI.
#
#   scripts/demo.sh                    # interactive; Ctrl-C stops everything
#   scripts/demo.sh --check            # non-interactive: prove a byte round trip, then stop
#   scripts/demo.sh --backend socat    # the socat backend instead of the native one
#   scripts/demo.sh --rig-base 17020   # another port block (default 23000)
#   scripts/demo.sh --help             # this text
#
# Ports, all on 127.0.0.1, from the rig base B (--rig-base, or
# PORTHOLE_DEMO_RIG_BASE; default 23000): the rig (../shared/rig, 2 BMCs,
# RIG_RUN_DIR=.run/demo/rig) takes B+10..B+11, B+90, B+100..B+101 and
# B+600..B+601; `console-svc serve` listens on B+950 (PORTHOLE_DEMO_GRPC_PORT)
# with console ports B+900..B+909 (PORTHOLE_DEMO_PORT_RANGE, START:END with
# END excluded) and metrics on B+951 (PORTHOLE_DEMO_SVC_METRICS_PORT); the
# conductor (Ironic API) on B+960 (PORTHOLE_DEMO_API_PORT), metrics on B+961
# (PORTHOLE_DEMO_API_METRICS_PORT).
#
# Builds console-svc and the conductor (debug), starts the rig, both
# services and a fresh conductor database (a previous run's .run/demo state
# is removed first, so the demo and --check can run any number of times in
# one checkout), creates node "demo-node" on bmc0 (the password goes in a
# request body, never in argv), runs `openstack baremetal node console
# enable` and `... console show`, and tells you how to be the viewer and the
# node, and which console-svc commands to try (console-svc knows the node by
# its UUID, as the conductor enabled it). --check also reads both services'
# /metrics. Needs python3 (rig.json, the --check round trip). Everything it
# started is stopped by pid on exit. Logs: .run/demo/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RIG_DIR=${PORTHOLE_RIG_DIR:-$ROOT/../shared/rig}
DEMO=$ROOT/.run/demo
export RIG_RUN_DIR=$DEMO/rig
NODE=demo-node
CHECK=0
BACKEND=native
RIG_BASE=${PORTHOLE_DEMO_RIG_BASE:-23000}
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case $1 in
    --check) CHECK=1 ;;
    --backend) BACKEND=${2:?--backend needs native or socat}; shift ;;
    --rig-base) RIG_BASE=${2:?--rig-base needs a port number}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case $BACKEND in native|socat) ;; *) echo "demo.sh: --backend is native or socat, not $BACKEND" >&2; exit 2 ;; esac
case $RIG_BASE in
  ''|*[!0-9]*) echo "demo.sh: --rig-base is a port number, not $RIG_BASE" >&2; exit 2 ;;
esac
[ "$RIG_BASE" -ge 1024 ] && [ "$RIG_BASE" -le 31000 ] ||
  { echo "demo.sh: --rig-base must be within 1024..31000 (its ports end at +960, below 32768)" >&2; exit 2; }
GRPC=127.0.0.1:${PORTHOLE_DEMO_GRPC_PORT:-$((RIG_BASE + 950))}
SERVER=http://$GRPC
RANGE=${PORTHOLE_DEMO_PORT_RANGE:-$((RIG_BASE + 900)):$((RIG_BASE + 910))}
API=127.0.0.1:${PORTHOLE_DEMO_API_PORT:-$((RIG_BASE + 960))}
SVC_METRICS=127.0.0.1:${PORTHOLE_DEMO_SVC_METRICS_PORT:-$((RIG_BASE + 951))}
COND_METRICS=127.0.0.1:${PORTHOLE_DEMO_API_METRICS_PORT:-$((RIG_BASE + 961))}

say() { echo "demo.sh: $*" >&2; }
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/console-svc
CONDUCTOR=${CARGO_TARGET_DIR:-$ROOT/target}/debug/conductor
OS="$ROOT/.venv-clients/bin/openstack --os-auth-type none --os-endpoint http://$API"
SVC_PID=""
COND_PID=""
RIG_OWNED=0

same_proc() { [ "$(awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null)" = "$2" ]; }
stop_service() {
  [ -n "$SVC_PID" ] || return 0
  local start=$SVC_START
  kill -TERM "$SVC_PID" 2>/dev/null || true   # console-svc stops its consoles on SIGTERM
  for _ in $(seq 1 150); do same_proc "$SVC_PID" "$start" || break; sleep 0.1; done
  if same_proc "$SVC_PID" "$start"; then say "console-svc $SVC_PID did not stop; killing it"; kill -KILL -- "-$SVC_PID" 2>/dev/null || true; fi
  SVC_PID=""
}
stop_conductor() {
  [ -n "$COND_PID" ] || return 0
  kill -TERM "$COND_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do same_proc "$COND_PID" "$COND_START" || break; sleep 0.1; done
  same_proc "$COND_PID" "$COND_START" && kill -KILL "$COND_PID" 2>/dev/null
  COND_PID=""
}
cleanup() {
  stop_conductor
  stop_service
  # Only a rig this run started: a refused start must not stop another demo's.
  [ "$RIG_OWNED" = 1 ] && "$RIG_DIR/rig-down.sh" >/dev/null 2>&1
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$ROOT/scripts/setup.sh"
say "building console-svc and the conductor"
(cd "$ROOT" && cargo build -q -p console-svc -p conductor)
"$ROOT/scripts/venv-clients.sh"   # the openstack CLI, in .venv-clients
# Another demo (or anything else) on our ports would answer in our place.
for p in "${GRPC##*:}" "${API##*:}" "${SVC_METRICS##*:}" "${COND_METRICS##*:}" $(seq "${RANGE%%:*}" $((${RANGE##*:} - 1))); do
  if ss -Hltn "( sport = :$p )" | grep -q .; then
    say "port $p is already in use (another demo running? stop it, or pick other ports with --rig-base)"; exit 1
  fi
done
mkdir -p "$DEMO"
[ -s "$RIG_RUN_DIR/pids" ] && "$RIG_DIR/rig-down.sh" >/dev/null 2>&1   # left over by a killed demo
# Start clean: a previous run's conductor database (and its key) would hold
# node demo-node already; console-svc keeps nothing (its pid dir is how it
# stops what a killed run left, so it stays).
rm -f "$DEMO"/conductor.sqlite*
say "starting the rig (2 simulated BMCs, base port $RIG_BASE)"
RIG_OWNED=1
RIG_BASE_PORT=$RIG_BASE RIG_BMCS=2 "$RIG_DIR/rig-up.sh" >"$DEMO/rig.log" 2>&1 ||
  { cat "$DEMO/rig.log" >&2; exit 1; }

# bmc0's fields from rig.json.
read -r BMC_PORT BMC_USER PW_FILE NODE_PORT < <(python3 -c '
import json, sys
try:
    b = json.load(open(sys.argv[1]))["bmcs"][0]
    print(b["port"], b["username"], b["password_file"], b["host_console"]["port"])
except (OSError, ValueError, LookupError) as e:
    sys.exit("demo.sh: cannot read bmc0 from %s: %s" % (sys.argv[1], e))' "$RIG_RUN_DIR/rig.json") || true
[ -n "${NODE_PORT:-}" ] || { say "cannot read bmc0 from $RIG_RUN_DIR/rig.json"; exit 1; }

say "starting console-svc serve ($BACKEND backend) on $GRPC"
env -u PORTHOLE_TEST_CONSOLE_SVC_BIN PORTHOLE_LOG=${PORTHOLE_LOG:-info} setsid "$BIN" serve --listen "$GRPC" \
  --backend "$BACKEND" --port-range "$RANGE" --socat-address 127.0.0.1 \
  --terminal-pid-dir "$DEMO/pids" --metrics-listen "$SVC_METRICS" </dev/null >"$DEMO/console-svc.log" 2>&1 &
SVC_PID=$!
SVC_START=$(awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$SVC_PID/stat")
for i in $(seq 1 100); do
  "$BIN" list --server "$SERVER" >/dev/null 2>&1 && break
  kill -0 "$SVC_PID" 2>/dev/null || { cat "$DEMO/console-svc.log" >&2; say "console-svc exited"; exit 1; }
  [ "$i" = 100 ] && { say "console-svc did not answer within 20 s"; exit 1; }
  sleep 0.2
done

say "starting the conductor (Ironic API) on $API"
PORTHOLE_LOG=${PORTHOLE_LOG:-info} setsid "$CONDUCTOR" --listen "$API" --console-svc "$SERVER" \
  --database "$DEMO/conductor.sqlite" --metrics-listen "$COND_METRICS" </dev/null >"$DEMO/conductor.log" 2>&1 &
COND_PID=$!
COND_START=$(awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$COND_PID/stat")
for i in $(seq 1 100); do
  python3 -c "import urllib.request as u; u.urlopen('http://$API/v1')" 2>/dev/null && break
  kill -0 "$COND_PID" 2>/dev/null || { cat "$DEMO/conductor.log" >&2; say "conductor exited"; exit 1; }
  [ "$i" = 100 ] && { say "the conductor did not answer within 20 s"; exit 1; }
  sleep 0.2
done

say "creating node $NODE on bmc0 (UDP $BMC_PORT) through the Ironic API"
# Through a request body, so the BMC password is in no process's argv. The
# node's UUID is what console-svc knows it by.
UUID=$(python3 - "$API" "$NODE" "$BMC_PORT" "$BMC_USER" "$PW_FILE" <<'PY'
import json, sys, urllib.error, urllib.request
api, node, port, user, pw_file = sys.argv[1:]
try:
    body = {"name": node, "driver": "ipmi", "driver_info": {
        "ipmi_address": "127.0.0.1", "ipmi_port": int(port), "ipmi_username": user,
        "ipmi_password": open(pw_file).read().strip(), "ipmi_cipher_suite": 3}}
    req = urllib.request.Request(f"http://{api}/v1/nodes", json.dumps(body).encode(),
        {"Content-Type": "application/json", "X-OpenStack-Ironic-API-Version": "1.78"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        print(json.load(resp)["uuid"])
except urllib.error.HTTPError as e:
    detail = e.read().decode(errors="replace").replace("\n", " ")[:500]
    sys.exit(f"demo.sh: creating node {node} failed: HTTP {e.code}: {detail}")
except (OSError, ValueError, KeyError) as e:
    sys.exit(f"demo.sh: creating node {node} failed: {e}")
PY
) || exit 1
say "node $NODE is $UUID"
say "openstack baremetal node console enable $NODE"
$OS baremetal node console enable "$NODE"
for i in $(seq 1 50); do
  $OS baremetal node console show "$NODE" -f json >"$DEMO/console.json"
  grep -q '"url": "tcp://' "$DEMO/console.json" && break
  [ "$i" = 50 ] && { cat "$DEMO/console.json" >&2; say "no console URL after 10 s"; exit 1; }
  sleep 0.2
done
say "openstack baremetal node console show $NODE"
cat "$DEMO/console.json"
PORT=$(sed -n 's/.*"url": "tcp:\/\/[^"]*:\([0-9]*\)".*/\1/p' "$DEMO/console.json")
[ -n "$PORT" ] || { say "console show gave no port"; exit 1; }

if [ "$CHECK" = 1 ]; then
  say "checking a byte round trip through tcp://127.0.0.1:$PORT"
  python3 - "$PORT" "$NODE_PORT" <<'PY' || { say "round trip failed"; exit 1; }
import socket, sys, time
def main():
  viewer = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
  node = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5)
  def wait_for(sock, needle, within, poke=None):
      got, end = b"", time.time() + within
      while time.time() < end:
          if poke: poke()
          sock.settimeout(0.7)
          try:
              chunk = sock.recv(4096)
          except socket.timeout:
              continue
          if not chunk: raise SystemExit("connection closed; got %r" % got)
          got += chunk
          if needle in got: return got
      raise SystemExit("%r did not arrive within %ss; got %r" % (needle, within, got))
  # The rig may drop a new session's first SOL packet: prime until one arrives.
  wait_for(node, b"\r", 30, poke=lambda: viewer.sendall(b"\r"))
  wait_for(viewer, b"demo-out", 30, poke=lambda: node.sendall(b"demo-out\r\n"))
  viewer.sendall(b"demo-in \x00\x03\x1b\xff\r")
  wait_for(node, b"demo-in \x00\x03\x1b\xff\r", 15)
  print("demo.sh: round trip ok: node output reached the viewer, keystrokes (8-bit) reached the node")
try:
  main()
except OSError as e:
  sys.exit("demo.sh: round trip: %s" % e)
PY
  python3 - "$SVC_METRICS" "$COND_METRICS" <<'PY' || { say "metrics check failed"; exit 1; }
import sys, urllib.request
try:
    svc, cond = (urllib.request.urlopen(f"http://{a}/metrics", timeout=5).read().decode() for a in sys.argv[1:])
except OSError as e:
    raise SystemExit("demo.sh: reading /metrics: %s" % e)
typed = [l for l in svc.splitlines() if l.startswith('porthole_console_viewer_bytes_total{kind="serial",direction="to_node"}')]
if not typed or float(typed[0].split()[-1]) <= 0 or not cond.rstrip().endswith("# EOF"):
    raise SystemExit("demo.sh: /metrics does not show the round trip: %r" % typed)
print("demo.sh: metrics ok: console-svc counted %s bytes typed" % typed[0].split()[-1])
PY
  $OS baremetal node console disable "$NODE"
  say "check passed"
  exit 0
fi

cat <<EOF

  Porthole demo is running (console-svc pid $SVC_PID, $BACKEND backend, gRPC $SERVER).

  The console of node "$NODE":   tcp://127.0.0.1:$PORT
    be the viewer (what nova-serialproxy does):   socat - TCP:127.0.0.1:$PORT
                                     or simply:   nc 127.0.0.1 $PORT
    be the node's OS on the serial line:          socat - TCP:127.0.0.1:$NODE_PORT
  Type in one, read it in the other ("~." at line start is ipmitool's escape).

  Ironic's CLI (the conductor on http://$API):
            $OS baremetal node console show $NODE
            $OS baremetal node power off $NODE
  console-svc's CLI:
            $BIN list --server $SERVER
            $BIN show $UUID --server $SERVER --json
            $BIN log $UUID --server $SERVER          (native backend)
            $BIN disable $UUID --server $SERVER
  (console-svc knows the node by its UUID: the conductor enables consoles
  under the node's UUID, not its name. The conductor wants this console on:
  after a console-svc disable it enables it again at once; to turn it off,
  use $OS baremetal node console disable $NODE.)
  Prometheus metrics:  curl http://$SVC_METRICS/metrics     (console-svc)
                       curl http://$COND_METRICS/metrics    (conductor)
  Logs: $DEMO/console-svc.log, $DEMO/conductor.log

  Ctrl-C stops the conductor, console-svc and the rig.
EOF
while kill -0 "$SVC_PID" 2>/dev/null; do sleep 1; done
say "console-svc exited; see $DEMO/console-svc.log"

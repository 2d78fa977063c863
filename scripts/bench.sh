#!/usr/bin/env bash
# Serial console benchmark (tests/benches/serial/) against a rig of its own.
#
#   scripts/bench.sh                      # writes tests/bench-results/serial.md
#   scripts/bench.sh --rig-base 17000     # the rig on another port block (default 26000)
#   scripts/bench.sh --port-base 17700    # console-svc ports from here (default 27000)
#   scripts/bench.sh --out /tmp/serial.md # write the figures elsewhere (a trial run)
#   scripts/bench.sh --help               # this text; starts nothing, writes nothing
#
# 1. starts ../shared/rig with RIG_RUN_DIR=.run/bench, RIG_BASE_PORT from
#    --rig-base (or PORTHOLE_BENCH_RIG_BASE, default 26000), RIG_BMCS=4 (a
#    leftover rig in that run dir is stopped first);
# 2. builds console-svc in release;
# 3. runs `cargo bench -p porthole-tests --bench serial` (bounded by
#    PORTHOLE_BENCH_TIMEOUT seconds, default 1200) with the rig and the binary;
# 4. writes the date, the machine and the bench's figures, exactly as
#    printed, to tests/bench-results/serial.md (or --out FILE).
#
# The rig takes B..B+603 of its base B; console-svc instances take
# P..P+750 of --port-base P (or PORTHOLE_BENCH_PORT_BASE, default 27000):
# the two blocks must not overlap (checked), and stay clear of the test
# harness (28000..31999). Sizes: PORTHOLE_BENCH_KEYSTROKES (200),
# PORTHOLE_BENCH_ENABLES (100), PORTHOLE_BENCH_CONSOLES (100).
# Everything listens on 127.0.0.1 only. On exit (success, failure or Ctrl-C)
# the console-svc processes the bench recorded are stopped by pid, and the
# rig by its recorded pids (rig-down.sh). Progress and logs: .run/bench-work/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_ARGS="$*"
RIG_BASE_PORT=${PORTHOLE_BENCH_RIG_BASE:-26000}
PORT_BASE=${PORTHOLE_BENCH_PORT_BASE:-27000}
RESULTS=$ROOT/tests/bench-results/serial.md
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case $1 in
    --rig-base) RIG_BASE_PORT=${2:?--rig-base needs a port number}; shift ;;
    --port-base) PORT_BASE=${2:?--port-base needs a port number}; shift ;;
    --out) RESULTS=${2:?--out needs a file}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for v in "$RIG_BASE_PORT" "$PORT_BASE"; do
  case $v in ''|*[!0-9]*) echo "bench.sh: $v is not a port number" >&2; exit 2 ;; esac
  [ "$v" -ge 1024 ] && [ "$v" -le 32000 ] || { echo "bench.sh: port base $v is outside 1024..32000" >&2; exit 2; }
done
if [ "$PORT_BASE" -le $((RIG_BASE_PORT + 603)) ] && [ "$RIG_BASE_PORT" -le $((PORT_BASE + 750)) ]; then
  echo "bench.sh: the rig ($RIG_BASE_PORT..$((RIG_BASE_PORT + 603))) and console-svc ($PORT_BASE..$((PORT_BASE + 750))) port blocks overlap" >&2
  exit 2
fi
case $RESULTS in /*) ;; *) RESULTS=$PWD/$RESULTS ;; esac
RIG_DIR=${PORTHOLE_RIG_DIR:-$(cd "$ROOT/../shared/rig" && pwd)}
export RIG_RUN_DIR=$ROOT/.run/bench RIG_BASE_PORT RIG_BMCS=4
WORK=$ROOT/.run/bench-work
TIMEOUT=${PORTHOLE_BENCH_TIMEOUT:-1200}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

log() { echo "bench.sh: $*" >&2; }

# Still running, and still the console-svc we started (not a reused pid).
is_our_svc() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q 'console-svc serve'; }

stop_services() {
  [ -s "$WORK/pids" ] || return 0
  local pid
  while read -r pid; do is_our_svc "$pid" && kill -TERM "$pid" 2>/dev/null || true; done <"$WORK/pids"
  for _ in $(seq 1 150); do
    local left=0
    while read -r pid; do is_our_svc "$pid" && left=1; done <"$WORK/pids"
    [ "$left" = 0 ] && return 0
    sleep 0.1
  done
  while read -r pid; do
    is_our_svc "$pid" && { log "killing console-svc $pid"; kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"; }
  done <"$WORK/pids"
}

cleanup() {
  stop_services || true
  "$RIG_DIR/rig-down.sh" >&2 || true
}

machine() {
  local cpu
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- Machine: nproc $(nproc), CPU \"${cpu:-unknown}\", $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
  echo "- Commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- console-svc proto tests || echo ' (with uncommitted changes)')"
  echo "- Tools: $(ipmitool -V), $(socat -V | sed -n 's/^socat version \([^ ]*\).*/socat \1/p'), $(rustc -V | cut -d' ' -f1-2)"
  echo "- Rig: ../shared/rig, $RIG_BMCS simulated BMCs (ipmi_sim, lanplus, -C 3), base port $RIG_BASE_PORT, 127.0.0.1"
  echo "- Load average (1, 5, 15 min): $LOAD_BEFORE before the bench, $(cut -d' ' -f1-3 /proc/loadavg) after (other work on the machine shows here)"
  echo "- Command: scripts/bench.sh${BENCH_ARGS:+ $BENCH_ARGS} (cargo bench -p porthole-tests --bench serial; console-svc built with --release)"
}

main() {
  cd "$ROOT"
  cargo metadata --no-deps --format-version 1 | grep -q '"name":"porthole-tests"' ||
    { log "porthole-tests is not a workspace member (Cargo.toml members)"; exit 1; }
  [ -s "$RIG_RUN_DIR/pids" ] && { log "stopping a leftover bench rig"; "$RIG_DIR/rig-down.sh" >&2; }
  rm -rf "$WORK"; mkdir -p "$WORK" "$(dirname "$RESULTS")"
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  log "building console-svc (release) and the bench"
  cargo build --release -p console-svc
  cargo bench -p porthole-tests --bench serial --no-run

  log "starting the rig ($RIG_BMCS BMCs, base port $RIG_BASE_PORT)"
  "$RIG_DIR/rig-up.sh" >&2

  log "running the bench (at most ${TIMEOUT}s)"
  local status=0
  LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
  PORTHOLE_BENCH_RIG_JSON=$RIG_RUN_DIR/rig.json \
  PORTHOLE_BENCH_CONSOLE_SVC=$TARGET_DIR/release/console-svc \
  PORTHOLE_BENCH_WORK_DIR=$WORK \
  PORTHOLE_BENCH_PORT_BASE=$PORT_BASE \
    timeout --kill-after=30 "$TIMEOUT" cargo bench -p porthole-tests --bench serial \
      >"$WORK/figures.md" 2> >(tee "$WORK/bench.log" >&2) || status=$?
  if [ ! -s "$WORK/figures.md" ]; then
    log "the bench printed no figures (status $status); see $WORK/bench.log"
    exit 1
  fi
  { echo "# Serial console benchmark"; echo; machine; echo; cat "$WORK/figures.md"; } >"$RESULTS"
  log "wrote $RESULTS"
  [ "$status" = 0 ] || log "the bench failed (status $status); the failed rows say why"
  return "$status"
}

main "$@"

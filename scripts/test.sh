#!/usr/bin/env bash
# Porthole's test command: everything CI checks, against a rig of its own.
#
#   scripts/test.sh                          # the whole suite
#   scripts/test.sh -- --test serial_io      # extra arguments go to `cargo test`:
#   scripts/test.sh -- bytes_flow            #   one test file, or tests whose name has this
#
# 1. scripts/setup.sh (Debian packages; idempotent), scripts/check-fresh.sh
#    (everything the build reads from the system comes from those packages:
#    exit 5 if not), scripts/venv.sh, scripts/venv-clients.sh (nova,
#    vncdotool, the OpenStack clients) and scripts/venv-inspector.sh
#    (ironic-inspector 12.5 for the inspect service's tests), then
#    scripts/k8s-check.sh (deploy-k8s/ rendered and validated: exit 6 if not);
# 2. cargo build --workspace --all-targets (the tests run target/debug/console-svc);
# 3. starts ../shared/rig with RIG_RUN_DIR=.run/test-rig, RIG_BASE_PORT=24000
#    (PORTHOLE_TEST_RIG_BASE), RIG_BMCS=6 and a random, distinctive BMC
#    password (the secrets test looks for it in argv, environments and logs);
# 4. cargo test --workspace with PORTHOLE_RIG_JSON set, so every rig test
#    runs for real, within PORTHOLE_TEST_TIMEOUT seconds (default 2700: cargo
#    runs the test binaries one after another: the phase took 1496 s in a
#    quiet 2-core rehearsal, and longer beside a release build); then
#    cargo fmt --check, cargo clippy -D warnings and scripts/deny.sh
#    (cargo-deny, installed from crates.io if missing).
#
# A run in which no test ran (a filter that matches no test name) fails:
# "0 passed, 0 failed" is not a pass.
#
# The rig is stopped by its recorded pids on exit, whatever happens. The exit
# code is the first failing step's (0 when all pass; 4 when no test ran). Logs: .run/test-*.log,
# and each console-svc's own log in .run/test-logs/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RIG_DIR=${PORTHOLE_RIG_DIR:-$ROOT/../shared/rig}
RUN=$ROOT/.run
export RIG_RUN_DIR=$RUN/test-rig
TEST_TIMEOUT=${PORTHOLE_TEST_TIMEOUT:-2700}
[ "${1:-}" = "--" ] && shift

say() { echo "test.sh: $*" >&2; }
[ -x "$RIG_DIR/rig-up.sh" ] || { say "no rig at $RIG_DIR (set PORTHOLE_RIG_DIR)"; exit 2; }
mkdir -p "$RUN"
cd "$ROOT"

export PORTHOLE_TEST_SVC_PIDS=$RUN/test-svc-pids   # console-svc pids the tests started
export PORTHOLE_TEST_LOG_DIR=$RUN/test-logs        # each console-svc's stderr, saved
rm -rf "$PORTHOLE_TEST_LOG_DIR"

rig_down() { "$RIG_DIR/rig-down.sh" >/dev/null 2>&1 || true; }
# The same process as recorded: pid and start time (field 22 of stat) match.
same_proc() { [ "$(awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null)" = "$2" ]; }
# console-svc instances a killed test run left behind: SIGTERM their
# process groups (they stop their consoles), SIGKILL after 15 s.
stop_leftover_services() {
  local f pid sig
  for sig in TERM KILL; do
    for f in "$PORTHOLE_TEST_SVC_PIDS"/*; do
      [ -f "$f" ] || continue
      pid=${f##*/}
      if same_proc "$pid" "$(cat "$f")"; then
        say "stopping leftover console-svc $pid (SIG$sig)"; kill -"$sig" -- "-$pid" 2>/dev/null || true
      else rm -f "$f"; fi
    done
    [ "$sig" = TERM ] && for _ in $(seq 1 150); do
      ls "$PORTHOLE_TEST_SVC_PIDS"/* >/dev/null 2>&1 || break
      for f in "$PORTHOLE_TEST_SVC_PIDS"/*; do same_proc "${f##*/}" "$(cat "$f" 2>/dev/null)" || rm -f "$f"; done
      sleep 0.1
    done
  done
  return 0
}
cleanup() { stop_leftover_services; rig_down; }
trap cleanup EXIT
trap 'exit 130' INT TERM

say "setup"
"$ROOT/scripts/setup.sh"
# What the build reads from the system must come from setup.sh's packages
# (a package that is merely present here would hide a missing install step).
say "fresh-machine rehearsal (scripts/check-fresh.sh)"
"$ROOT/scripts/check-fresh.sh" 2>"$RUN/test-fresh.log" ||
  { cat "$RUN/test-fresh.log" >&2; say "check-fresh.sh failed: scripts/setup.sh misses a package"; exit 5; }
# The real Python peers: nova 34.0.0's RFB proxy and vncdotool (.venv), the
# OpenStack clients (.venv-clients). Separate venvs: nova pins old libraries.
say "python peers (.venv, .venv-clients, .venv-inspector)"
"$ROOT/scripts/venv.sh"
"$ROOT/scripts/venv-clients.sh"
# The real ironic-inspector 12.5 the inspect service's tests drive (.venv-inspector).
"$ROOT/scripts/venv-inspector.sh"
# The real Keystone the deploy service's Swift store authenticates against (.venv-keystone).
"$ROOT/scripts/venv-keystone.sh"
# deploy-k8s/: rendered (two kustomize versions must agree), validated
# (kubernetes-validate --strict, yamllint, checkov) into .run/k8s/, which
# the rehearsal test (tests/tests/k8s_rehearsal.rs) starts process by process.
say "deploy-k8s (scripts/k8s-check.sh; log: .run/test-k8s.log)"
"$ROOT/scripts/k8s-check.sh" >"$RUN/test-k8s.log" 2>&1 ||
  { cat "$RUN/test-k8s.log" >&2; say "k8s-check.sh failed"; exit 6; }
export PORTHOLE_K8S_RENDERED=$RUN/k8s

say "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

say "starting the rig in $RIG_RUN_DIR"
[ -s "$RIG_RUN_DIR/pids" ] && rig_down   # a rig left over by an interrupted run
RIG_BASE_PORT=${PORTHOLE_TEST_RIG_BASE:-24000} RIG_BMCS=6 RIG_BMC_PASS="Pw-$RANDOM-porthole" \
  "$RIG_DIR/rig-up.sh" >"$RUN/test-rig.log" 2>&1 || { cat "$RUN/test-rig.log" >&2; say "rig-up failed"; exit 2; }
export PORTHOLE_RIG_JSON=$RIG_RUN_DIR/rig.json
# Here every peer is installed: a test that finds one missing fails instead
# of skipping (plain `cargo test` elsewhere still skips with a notice).
export PORTHOLE_REQUIRE_PEERS=1

status=0
say "cargo test --workspace (log: .run/test-cargo.log)"
set +e
started=$SECONDS
timeout --kill-after=30 "$TEST_TIMEOUT" cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$RUN/test-cargo.log"
tests=${PIPESTATUS[0]}
set -e
say "cargo test took $((SECONDS - started))s (limit ${TEST_TIMEOUT}s)"
[ "$tests" = 124 ] && say "cargo test did not finish within ${TEST_TIMEOUT}s"
status=$tests
# The rmcp backend's default UDP mode is one shared socket; its suites run
# once more with a socket per console (only on a full run, not a filtered one).
if [ $# = 0 ]; then
  say "rmcp suites again with a UDP socket per console (PORTHOLE_TEST_RMCP_UDP=per-console)"
  set +e
  PORTHOLE_TEST_RMCP_UDP=per-console timeout --kill-after=30 300 cargo test --no-fail-fast \
    -p porthole-rmcp --test rig_session --test rig_sol --test rig_wire 2>&1 | tee -a "$RUN/test-cargo.log"
  again=${PIPESTATUS[0]}
  PORTHOLE_TEST_RMCP_UDP=per-console timeout --kill-after=30 300 cargo test --no-fail-fast \
    -p porthole-tests --tests -- rmcp 2>&1 | tee -a "$RUN/test-cargo.log"
  [ "$again" = 0 ] && again=${PIPESTATUS[0]}
  set -e
  [ "$status" = 0 ] && status=$again
fi
count() { awk -v f="$1" '/^test result:/ { for (i = 1; i < NF; i++) if ($(i+1) ~ "^" f) n += $i } END { print n + 0 }' "$RUN/test-cargo.log"; }
ran=$(( $(count passed) + $(count failed) ))
if [ "$ran" = 0 ]; then
  say "no test ran${*:+ with cargo test arguments: $*}: a filter matches test names (e.g. bytes_flow_both_ways_8bit_clean::native), a file is --test FILE (e.g. --test serial_io)"
  [ "$status" = 0 ] && status=4
fi

lint=""
say "cargo fmt --check"
cargo fmt --all --check >"$RUN/test-fmt.log" 2>&1 || { cat "$RUN/test-fmt.log" >&2; lint="fmt FAILED "; }
say "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy -q --workspace --all-targets -- -D warnings >"$RUN/test-clippy.log" 2>&1 ||
  { cat "$RUN/test-clippy.log" >&2; lint+="clippy FAILED"; }
say "cargo deny: licenses, bans, sources, advisories where reachable (scripts/deny.sh)"
"$ROOT/scripts/deny.sh" >"$RUN/test-deny.log" 2>&1 || { cat "$RUN/test-deny.log" >&2; lint+="${lint:+ }deny FAILED"; }
grep -h "SKIPPED" "$RUN/test-deny.log" >&2 || true
if [ "$status" = 0 ] && [ -n "$lint" ]; then status=3; fi

say "tests: $(count passed) passed, $(count failed) failed, $(count ignored) ignored (cargo test exit $tests); fmt/clippy/deny: ${lint:-ok}"
exit "$status"

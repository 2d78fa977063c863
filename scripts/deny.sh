#!/usr/bin/env bash
# Supply-chain checks with cargo-deny, configured by deny.toml at the root:
# licenses (an allow list), bans (one TLS/crypto backend: ring; no aws-lc-rs,
# OpenSSL or native-tls), sources (crates.io only) and, where the RustSec
# advisory database can be fetched, advisories.
#
#   scripts/deny.sh              # install cargo-deny if missing, then check
#   scripts/deny.sh --install    # only install it
#
# cargo-deny is installed from crates.io with `cargo install --locked
# cargo-deny` into ~/.cargo/bin (CARGO_HOME) when `cargo deny` is not there;
# PORTHOLE_CARGO_DENY_VERSION pins a version (default: the one below).
# Advisories need the database from its git repository; when it cannot be
# fetched (a machine that reaches only package registries) that check is
# reported as skipped, and the others still decide the exit code.
# PORTHOLE_DENY_ADVISORIES=require makes a failed fetch an error instead.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${PORTHOLE_CARGO_DENY_VERSION:-0.20.2}
say() { echo "deny.sh: $*" >&2; }

if ! cargo deny --version >/dev/null 2>&1; then
  say "cargo-deny is missing: cargo install --locked cargo-deny@$VERSION (a few minutes, once)"
  start=$(date +%s)
  cargo install --locked --quiet "cargo-deny@$VERSION"
  say "installed $(cargo deny --version) in $(($(date +%s) - start)) s"
fi
[ "${1:-}" = --install ] && exit 0

cd "$ROOT"
# Errors only: duplicate versions are warnings (`cargo deny check bans`
# lists them), not a reason to fail.
say "cargo deny check bans licenses sources"
cargo deny --log-level error check bans licenses sources

say "cargo deny check advisories"
log=$ROOT/.run/deny-advisories.log
mkdir -p "$ROOT/.run"
if cargo deny --log-level error check advisories >"$log" 2>&1; then
  say "advisories: ok"
elif grep -qiE "failed to (fetch|clone|open)|unable to (fetch|clone)|could not resolve|network|connect" "$log"; then
  [ "${PORTHOLE_DENY_ADVISORIES:-}" = require ] && { cat "$log" >&2; say "the advisory database cannot be fetched"; exit 1; }
  say "advisories: SKIPPED, the RustSec database cannot be fetched here ($(grep -m1 -iE 'fail|error' "$log" | cut -c1-200))"
else
  cat "$log" >&2
  exit 1
fi

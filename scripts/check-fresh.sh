#!/usr/bin/env bash
# Fresh-machine rehearsal: prove that what scripts/setup.sh installs is all
# the build reads from the system, so a missing install step fails here and
# not on a newcomer's machine (a developer's machine that happens to have the
# package hides it; that is how libprotobuf-dev went missing).
#
#   scripts/check-fresh.sh            # the checks below, a few seconds
#   scripts/check-fresh.sh --build    # also a real etcd-client build (minutes
#                                     # the first time: its own target dir)
#
# Everything else the build needs comes from crates.io. What it reads from
# the system:
#   - protoc and the google/protobuf/*.proto files etcd-client's protos
#     import without shipping them (its build script runs protoc);
#   - a C compiler, archiver and libc headers (ring, rusqlite's bundled SQLite).
#
# 1. Every package `setup.sh --list` names must be installed.
# 2. Ownership: each of those system files (protoc, each imported
#    google/protobuf file, cc, ar, stdio.h) must belong (dpkg -S) to a package
#    setup.sh lists or to one of their dependencies (apt-cache depends).
# 3. Isolation: .run/fresh/ gets copies of only what setup.sh's packages
#    ship (dpkg -L): bin/protoc and include/google/protobuf/. A copied protoc
#    looks for imports only beside itself (../include), never in
#    /usr/include: checked first with an empty include dir, where
#    descriptor.proto must NOT be found (else this rehearsal proves nothing).
# 4. That protoc, with that include dir only, compiles etcd-client's protos
#    with the same files and -I as etcd-client's build script.
# 5. --build: `cargo build -p etcd-client` with PROTOC and PROTOC_INCLUDE
#    pointed at the copies, in .run/fresh-target (etcd-client's build script
#    is made to run again each time).
#
# Exit 0 when all pass; 1 with one line per problem otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FRESH=$ROOT/.run/fresh
BUILD=0
case ${1:-} in
  --build) BUILD=1 ;;
  "") ;;
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
  *) echo "check-fresh.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac
say() { echo "check-fresh.sh: $*" >&2; }
problems=0
problem() { say "FAIL: $*"; problems=$((problems + 1)); }

mapfile -t PKGS < <("$ROOT/scripts/setup.sh" --list)
[ "${#PKGS[@]}" -gt 0 ] || { say "setup.sh --list named no package"; exit 1; }

# 1. installed
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in "${PKGS[@]}"; do installed "$p" || problem "package $p (setup.sh) is not installed: run scripts/setup.sh"; done

# 2. ownership. The dependency closure of setup.sh's packages, as apt sees it.
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances "${PKGS[@]}" 2>/dev/null | grep -v '^ ' | sed 's/:.*//' | sort -u)
[ -n "$closure" ] || { say "apt-cache depends gave nothing (run apt-get update once)"; exit 1; }
owner() { dpkg -S "$1" 2>/dev/null | head -1 | sed 's/:.*//; s/, .*//'; }
owned() {   # owned WHAT PATH: PATH comes from a package setup.sh installs
  local what=$1 path=$2 pkg
  [ -e "$path" ] || { problem "$what: $path does not exist"; return; }
  path=$(readlink -f "$path")
  pkg=$(owner "$path")
  if [ -z "$pkg" ]; then problem "$what: $path belongs to no Debian package (installed by hand?)"
  elif ! grep -qx "$pkg" <<<"$closure"; then problem "$what: $path comes from $pkg, which setup.sh neither lists nor pulls in"
  else say "ok: $what $path ($pkg)"; fi
}
ETCD_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "etcd-client":
        print(os.path.dirname(p["manifest_path"]))
        break')
[ -d "$ETCD_DIR/proto" ] || { say "cannot find etcd-client's sources (cargo fetch first)"; exit 1; }
# The google/protobuf files etcd-client imports but does not ship: protoc's include path.
mapfile -t WKT < <(grep -rhoE '^import "google/protobuf/[^"]+"' "$ETCD_DIR/proto" | cut -d'"' -f2 | sort -u |
  while read -r f; do [ -e "$ETCD_DIR/proto/$f" ] || echo "$f"; done)
[ "${#WKT[@]}" -gt 0 ] || problem "etcd-client imports no google/protobuf file: update this script"
command -v protoc >/dev/null || problem "protoc is not on PATH"
owned "protoc" "$(command -v protoc || echo /usr/bin/protoc)"
for f in "${WKT[@]}"; do owned "import $f" "/usr/include/$f"; done
for tool in cc ar; do
  command -v "$tool" >/dev/null || { problem "$tool is not on PATH"; continue; }
  owned "$tool" "$(command -v "$tool")"
done
owned "libc headers" /usr/include/stdio.h

# 3. isolation: copies of only what setup.sh's packages ship.
rm -rf "$FRESH"; mkdir -p "$FRESH/bin" "$FRESH/include" "$FRESH/empty/include" "$FRESH/empty/bin"
files=$(dpkg -L "${PKGS[@]}" 2>/dev/null || true)
protoc=$(grep -E '/bin/protoc$' <<<"$files" | head -1 || true)
[ -n "$protoc" ] || { problem "no package setup.sh lists ships bin/protoc (protobuf-compiler)"; protoc=/nonexistent; }
[ -x "$protoc" ] && cp "$protoc" "$FRESH/bin/protoc" && cp "$protoc" "$FRESH/empty/bin/protoc"
while read -r f; do
  [ -f "$f" ] || continue
  rel=${f#*/include/}; mkdir -p "$FRESH/include/$(dirname "$rel")"; cp "$f" "$FRESH/include/$rel"
done < <(grep -E '/include/google/protobuf/' <<<"$files" || true)
for f in "${WKT[@]}"; do
  [ -f "$FRESH/include/$f" ] || problem "$f: no package setup.sh lists ships it (libprotobuf-dev)"
done
printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nmessage M { google.protobuf.FileDescriptorProto f = 1; }\n' >"$FRESH/probe.proto"
if [ -x "$FRESH/empty/bin/protoc" ]; then
  if "$FRESH/empty/bin/protoc" -I"$FRESH" -I"$FRESH/empty/include" -o /dev/null "$FRESH/probe.proto" 2>/dev/null; then
    problem "a copied protoc with an empty include dir still finds descriptor.proto: this rehearsal cannot tell a missing package"
  else say "ok: a copied protoc with an empty include dir does not find descriptor.proto"; fi
fi

# 4. etcd-client's protos, as its build.rs compiles them.
ETCD_PROTOS=(etcd/api/authpb/auth.proto etcd/api/etcdserverpb/rpc.proto etcd/api/mvccpb/kv.proto
  etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto
  etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto)
for f in "${ETCD_PROTOS[@]}"; do
  [ -f "$ETCD_DIR/proto/$f" ] || problem "etcd-client no longer has proto/$f: update this script from its build.rs"
done
if [ -x "$FRESH/bin/protoc" ]; then
  if out=$(cd "$ETCD_DIR" && "$FRESH/bin/protoc" -Iproto -I"$FRESH/include" -o "$FRESH/etcd.bin" \
        "${ETCD_PROTOS[@]/#/proto/}" 2>&1); then
    say "ok: etcd-client's protos compile with only setup.sh's protoc and include files"
  else problem "etcd-client's protos do not compile with setup.sh's files only: $(tr '\n' ' ' <<<"$out" | cut -c1-300)..."; fi
fi

# 5. the real build, pointed at the copies.
if [ "$BUILD" = 1 ] && [ "$problems" = 0 ]; then
  T=$ROOT/.run/fresh-target
  rm -rf "$T"/debug/build/etcd-client-* "$T"/debug/.fingerprint/etcd-client-*
  say "cargo build -p etcd-client with PROTOC=$FRESH/bin/protoc PROTOC_INCLUDE=$FRESH/include (target $T)"
  if (cd "$ROOT" && CARGO_TARGET_DIR=$T PROTOC=$FRESH/bin/protoc PROTOC_INCLUDE=$FRESH/include \
        cargo build -q --locked -p etcd-client); then
    say "ok: etcd-client builds with only setup.sh's protoc and include files"
  else problem "cargo build -p etcd-client failed with setup.sh's files only"; fi
fi

if [ "$problems" -gt 0 ]; then say "$problems problem(s): add the missing package to scripts/setup.sh"; exit 1; fi
say "a fresh machine with setup.sh's packages has everything the build reads from the system"

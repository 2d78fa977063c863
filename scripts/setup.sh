#!/usr/bin/env bash
# Install what Porthole's scripts and tests need on a fresh Debian machine.
#
#   scripts/setup.sh           # install what is missing
#   scripts/setup.sh --list    # print the Debian packages, one a line (check-fresh.sh reads it)
#
# Debian packages: ipmitool, socat, OpenIPMI's ipmi_sim (the rig's BMCs),
# etcd, TigerVNC and openssl (the rig's other peers), iproute2 (ss), procps,
# netcat, a C toolchain, protoc (etcd-client compiles etcd's protos at build
# time), Python with venv (the real OpenStack clients and nova in tests) and
# curl (sushy-tools' start script), QEMU (its VNC server is a test upstream),
# mtools, dosfstools and xorriso (independent readers of the deploy service's
# floppy and ISO images in its tests), isolinux and syslinux-common (the BIOS
# loader its boot-ISO test boots in QEMU), fdisk (sfdisk reads the partition
# table a partition-image deploy wrote). Installs only what is missing (apt-get update
# only when an install fails without it), so a second run does nothing.
# Needs root for the install. The Rust toolchain (cargo, rustfmt, clippy)
# must already be there; this script checks for it.
set -euo pipefail

PKGS=(ipmitool socat openipmi etcd-server etcd-client iproute2 procps netcat-openbsd
      openssl tigervnc-standalone-server tigervnc-tools build-essential ca-certificates
      protobuf-compiler libprotobuf-dev python3 python3-venv python3-pip curl qemu-system-x86
      mtools dosfstools xorriso isolinux syslinux-common fdisk)

# xorriso: xorrisofs is nova's mkisofs_cmd (the config drive) in conductor/tests/nova_ironic.rs
PKGS+=(xorriso)
# tshark: Wireshark's IPMI/RMCP dissector decodes porthole-rmcp's packets (conductor/rmcp/tests/rig_wire.rs)
PKGS+=(tshark)
if [ "${1:-}" = --list ]; then printf '%s\n' "${PKGS[@]}"; exit 0; fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "setup.sh: run as root to install: ${missing[*]}" >&2; exit 1; }
  echo "setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
  apt_install || { apt-get update -qq >/dev/null && apt_install; }
fi

for tool in cargo rustc; do
  command -v "$tool" >/dev/null || { echo "setup.sh: $tool not found; install Rust 1.88+ (rustup)" >&2; exit 1; }
done
for sub in fmt clippy; do
  cargo "$sub" --version >/dev/null 2>&1 || echo "setup.sh: warning: cargo $sub is missing (rustup component add ${sub/fmt/rustfmt})" >&2
done
exit 0

#!/usr/bin/env bash
# The Kubernetes manifests' tools (scripts/k8s-check.sh uses them), in
# .venv-k8s/ at the repository root (git-ignored):
#
#   scripts/venv-k8s.sh        # create or update; idempotent
#
# - From PyPI, into the venv only: kubernetes-validate 1.37.0 (the
#   Kubernetes JSON schemas 1.25..1.37, strict variants included),
#   yamllint 1.38.0, checkov 3.3.30.
# - A kustomize renderer from Debian's packages: kubernetes-client 1.20
#   (kubectl 1.20.2, kustomize v2.0.3), unpacked into
#   .venv-k8s/kubectl-debian/ with `apt-get download` + `dpkg-deb -x`, not
#   installed: it would collide with /usr/bin/kubectl where the machine
#   image ships one (google-cloud-cli's kubectl 1.32, kustomize v5.5; its
#   apt source is not reachable here, so it cannot be installed, only used
#   where present). k8s-check.sh renders with every renderer it finds and
#   requires them to agree.
# Env: PORTHOLE_VENV_K8S (the venv's path), PYTHON (python3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${PORTHOLE_VENV_K8S:-$ROOT/.venv-k8s}
PY=${PYTHON:-python3}
say() { echo "venv-k8s.sh: $*" >&2; }

PKGS=("kubernetes-validate==1.37.0" "yamllint==1.38.0" "checkov==3.3.30")
DEB=kubernetes-client

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.porthole-k8s"
want=$(printf '%s\n' "${PKGS[@]}")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/checkov" ]; then
  say "python tools up to date ($VENV)"
else
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PKGS[@]}"
  "$VENV/bin/kubernetes-validate" --version >/dev/null
  "$VENV/bin/yamllint" --version >/dev/null
  "$VENV/bin/checkov" --version >/dev/null
  printf '%s\n' "$want" >"$stamp"
fi

KDIR=$VENV/kubectl-debian
if [ ! -x "$KDIR/usr/bin/kubectl" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  say "fetching Debian's $DEB"
  (cd "$tmp" && { apt-get download -q "$DEB" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get download -q "$DEB" >/dev/null; }; })
  rm -rf "$KDIR"
  dpkg-deb -x "$tmp"/"$DEB"_*.deb "$KDIR"
fi
"$KDIR/usr/bin/kubectl" version --client >/dev/null
say "ready: $VENV/bin/{kubernetes-validate,yamllint,checkov}, $KDIR/usr/bin/kubectl ($("$KDIR/usr/bin/kubectl" version --client --short 2>/dev/null || echo 1.20))"

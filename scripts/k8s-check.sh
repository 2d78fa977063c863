#!/usr/bin/env bash
# Renders and validates deploy-k8s/ (scripts/test.sh runs it before the
# cargo tests; the rehearsal test reads what it renders):
#
#   scripts/k8s-check.sh
#
# 1. scripts/venv-k8s.sh (the tools, idempotent);
# 2. renders every overlay (deploy-k8s/overlays/*) with each kustomize it
#    finds: Debian's kubectl 1.20 (kustomize v2.0.3, always) and `kubectl`
#    on PATH when it is another one (the machine image's 1.32, kustomize
#    v5.5); their outputs must be the same objects. The newest renderer's
#    output goes to .run/k8s/<overlay>.yaml and, as a JSON list, .json;
# 3. kubernetes-validate --strict against each supported Kubernetes
#    version (K8S_VERSIONS below), yamllint (deploy-k8s/.yamllint.yaml) on
#    the sources and the rendered output, checkov on the rendered output
#    (suppressions are annotations on the objects, each with its reason);
# 4. canaries: an unknown field must fail kubernetes-validate, a writable
#    root file system must fail checkov (so neither check passes vacuously);
# 5. deploy-k8s/Containerfile against the manifests (scripts/k8s_check.py).
# Exit code 1 on the first failing step, which it names.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${PORTHOLE_VENV_K8S:-$ROOT/.venv-k8s}
OUT=$ROOT/.run/k8s
# Kubernetes versions the manifests support: grpc probes are GA from 1.27.
K8S_VERSIONS=(1.27.0 1.28.0 1.29.0 1.30.0 1.31.0 1.32.0 1.33.0 1.34.0 1.35.0 1.36.0 1.37.0)
say() { echo "k8s-check.sh: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

"$ROOT/scripts/venv-k8s.sh"
PY=$VENV/bin/python
CHECK=$ROOT/scripts/k8s_check.py
rm -rf "$OUT"
mkdir -p "$OUT/render" "$OUT/canary"
cd "$ROOT"

renderers=("debian=$VENV/kubectl-debian/usr/bin/kubectl")
if command -v kubectl >/dev/null 2>&1; then
  path_kubectl=$(command -v kubectl)
  if ! cmp -s "$path_kubectl" "$VENV/kubectl-debian/usr/bin/kubectl"; then
    renderers+=("path=$path_kubectl")
  fi
fi

overlays=()
for dir in deploy-k8s/overlays/*/; do
  o=$(basename "$dir")
  overlays+=("$o")
  first=""
  for r in "${renderers[@]}"; do
    name=${r%%=*}; bin=${r#*=}
    out="$OUT/render/$o.$name.yaml"
    # v5 warns on stderr about the fields kept for v2.0.3 (see base/kustomization.yaml).
    "$bin" kustomize "$dir" >"$out" 2>"$out.err" ||
      { cat "$out.err" >&2; fail "$name kubectl kustomize $dir"; }
    if [ -n "$first" ]; then
      "$PY" "$CHECK" same "$first" "$out" || fail "renderers disagree on overlay $o"
    fi
    first=$out
  done
  cp "$first" "$OUT/$o.yaml"
  "$PY" "$CHECK" json "$OUT/$o.yaml" "$OUT/$o.json"
  say "rendered $o (${#renderers[@]} renderer(s) agree: ${renderers[*]%%=*})"
done

for o in "${overlays[@]}"; do
  for v in "${K8S_VERSIONS[@]}"; do
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$OUT/$o.yaml" ||
      fail "kubernetes-validate --strict -k $v $o"
  done
done
say "kubernetes-validate --strict: ${overlays[*]} against ${K8S_VERSIONS[*]}"

"$VENV/bin/yamllint" -s -c deploy-k8s/.yamllint.yaml deploy-k8s || fail "yamllint deploy-k8s"
for o in "${overlays[@]}"; do
  # kustomize's output has no leading '---'; everything else is as strict.
  "$VENV/bin/yamllint" -s -d "{extends: deploy-k8s/.yamllint.yaml, rules: {document-start: disable}}" \
    "$OUT/$o.yaml" || fail "yamllint $o (rendered)"
done
say "yamllint: sources and rendered overlays"

# Files, not -d: checkov skips a directory whose path has a dot-folder
# (.run) in it and then passes having scanned nothing.
scan=()
for o in "${overlays[@]}"; do scan+=(-f "$OUT/$o.yaml"); done
"$VENV/bin/checkov" "${scan[@]}" --framework kubernetes --compact --skip-download \
  >"$OUT/checkov.log" 2>&1 || { cat "$OUT/checkov.log" >&2; fail "checkov"; }
result=$(grep -m1 'Passed checks' "$OUT/checkov.log") || fail "checkov printed no result (scanned nothing?)"
say "checkov: $result"

# Canaries: each validator must refuse a broken copy of ha.
"$PY" "$CHECK" mutate "$OUT/ha.yaml" "$OUT/canary/unknown-field.yaml" unknown-field
if "$VENV/bin/kubernetes-validate" --strict --quiet -k "${K8S_VERSIONS[-1]}" \
    "$OUT/canary/unknown-field.yaml" >/dev/null 2>&1; then
  fail "kubernetes-validate --strict accepted an unknown field (canary)"
fi
"$PY" "$CHECK" mutate "$OUT/ha.yaml" "$OUT/canary/writable-root.yaml" writable-root
if "$VENV/bin/checkov" -f "$OUT/canary/writable-root.yaml" --framework kubernetes --quiet --skip-download \
    --check CKV_K8S_22 >/dev/null 2>&1; then
  fail "checkov accepted a writable root file system (canary)"
fi
say "canaries refused: unknown field (kubernetes-validate), writable root (checkov CKV_K8S_22)"

"$PY" "$CHECK" containerfile deploy-k8s/Containerfile "$OUT/ha.yaml" || fail "Containerfile"
say "Containerfile: pinned bases, non-root users, runtime packages only, the binaries the manifests run"
say "ok: .run/k8s/{$(IFS=,; echo "${overlays[*]}")}.{yaml,json}"

#!/usr/bin/env bash
# Prints what kfistio costs next to what a user would otherwise run:
#   1. `kfistio build oauth2-proxy` against `kubectl kustomize` of the same directory;
#   2. `kfistio verify` (every installation and directory) against `kubectl kustomize`
#      of the same builds;
#   3. a full `kfistio sync`, and `kfistio sync --check`.
# Wall time is the mean of RUNS runs; memory is the peak resident set size.
# Needs kubectl and GNU time (/usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
command -v kubectl >/dev/null || { echo "kubectl is not on PATH" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time (/usr/bin/time) is missing: apt-get install time" >&2; exit 1; }

mkdir -p _output/bin
go build -o _output/bin/kfistio ./cmd/kfistio
kfistio=_output/bin/kfistio
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# measure NAME CMD... : runs CMD RUNS times; sets $wall (mean seconds) and $rss (peak KiB).
measure() {
  local total=0 peak=0 w m
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -f "%e %M" -o "$tmp/t" "$@" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; return 1; }
    read -r w m <"$tmp/t"
    total=$(echo "$total + $w" | bc -l)
    [ "$m" -gt "$peak" ] && peak=$m
  done
  wall=$(echo "scale=3; $total / $RUNS" | bc -l)
  rss=$peak
}

# measure_all NAME CMD-FILE: like measure, for a script of several commands.
row() { printf "%-58s %8.3f s %8.1f MiB\n" "$1" "$2" "$(echo "$3 / 1024" | bc -l)"; }
ratio() { printf "%-58s %8.2fx   %8.2fx\n" "ratio kfistio / kubectl" "$(echo "$1 / $3" | bc -l)" "$(echo "$2 / $4" | bc -l)"; }

echo "runs: $RUNS; $(kubectl version --client 2>/dev/null | head -2 | tr '\n' ' ')"
echo
echo "1. build the default overlay"
measure "$kfistio" build oauth2-proxy; kw=$wall; km=$rss
measure kubectl kustomize manifests/istio-install/overlays/oauth2-proxy; cw=$wall; cm=$rss
row "kfistio build oauth2-proxy" "$kw" "$km"
row "kubectl kustomize manifests/istio-install/overlays/oauth2-proxy" "$cw" "$cm"
ratio "$kw" "$km" "$cw" "$cm"

echo
echo "2. verify everything against building everything"
# The same builds verify makes: every directory, one installation per overlay,
# the installations with the opt-in oauth2-proxy policies, and the default
# installation with the opt-in egress component.
listing=$("$kfistio" build no-such-overlay 2>&1 || true)
dirs=$(echo "$listing" | sed -n 's/.*directories of the embedded tree: //p' | tr -d ',')
overlays=$(echo "$listing" | sed -n 's/.*overlays: //p' | tr -d ',')
installation() { # name overlay [component]
  local d=_output/bench/installation-$1
  mkdir -p "$d"
  {
    echo "resources:"
    for r in istio-crds/base istio-namespace/base "istio-install/overlays/$2" cluster-local-gateway/base kubeflow-istio-resources/base; do
      echo "- ../../../manifests/$r"
    done
    if [ -n "${3:-}" ]; then printf 'components:\n- ../../../manifests/istio-install/components/%s\n' "$3"; fi
  } >"$d/kustomization.yaml"
  echo "kubectl kustomize $d >/dev/null"
}
{
  echo "set -e"
  for d in $dirs; do echo "kubectl kustomize manifests/$d >/dev/null"; done
  for o in $overlays; do installation "$o" "$o"; done
  policies="oauth2-proxy gke insecure ambient-oauth2-proxy ambient-oauth2-proxy-gke"
  for o in $policies; do installation "policies-$o" "$o" oauth2-proxy-policies; done
  installation egress oauth2-proxy sidecar-egress
} >"$tmp/kustomize-all.sh"
measure "$kfistio" verify; vw=$wall; vm=$rss
measure bash "$tmp/kustomize-all.sh"; aw=$wall; am=$rss
row "kfistio verify ($(echo $dirs | wc -w) directories, $(( $(echo $overlays | wc -w) + 6 )) installations)" "$vw" "$vm"
row "kubectl kustomize of the same builds" "$aw" "$am"
ratio "$vw" "$vm" "$aw" "$am"

echo
echo "3. sync"
measure "$kfistio" sync; row "kfistio sync (5 renders, split, write)" "$wall" "$rss"
measure "$kfistio" sync --check; row "kfistio sync --check" "$wall" "$rss"

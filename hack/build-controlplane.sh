#!/usr/bin/env bash
# Builds the local control plane of the cluster tests into _output/bin:
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from
# k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3, and kwok (fake
# nodes and kubelets). The versions are those of tools/controlplane/go.mod.
# The first build takes several minutes; later ones come from the Go cache.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/_output/bin
mkdir -p "$out"
# Nothing to do when the binaries were built from these very inputs.
stampfile=$out/../controlplane.stamp
inputs=$(cat tools/controlplane/go.mod tools/controlplane/go.sum "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$stampfile" ] && [ "$(cat "$stampfile")" = "$inputs" ]; then
  echo "control plane up to date in $out" >&2
  exit 0
fi
cd tools/controlplane
k8s=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
kwok=$(go list -m -f '{{.Version}}' sigs.k8s.io/kwok)
stamp="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 \
-X k8s.io/component-base/version.gitMinor=$(echo "$k8s" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  echo "building $cmd $k8s" >&2
  go build -o "$out/$cmd" -ldflags "$stamp" "k8s.io/kubernetes/cmd/$cmd"
done
echo "building etcd $etcd" >&2
go build -o "$out/etcd" go.etcd.io/etcd/server/v3
echo "building kwok $kwok" >&2
go build -o "$out/kwok" -ldflags "-X sigs.k8s.io/kwok/pkg/consts.Version=$kwok" sigs.k8s.io/kwok/cmd/kwok
# kwok's lifecycle stages (nodes become Ready and keep their lease, pods run
# and become Ready), for its --config.
moddir=$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
stages=$out/../kwok-stages
rm -rf "$stages" && mkdir -p "$stages"
for d in node/fast node/heartbeat-with-lease pod/fast; do
  for f in "$moddir/kustomize/stage/$d"/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || cp "$f" "$stages/"
  done
done
chmod -R u+w "$stages"
echo "$inputs" >"$stampfile"
ls "$out" "$stages" >&2

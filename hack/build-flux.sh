#!/usr/bin/env bash
# Builds Flux's kustomize-controller for the GitOps tests into _output/bin,
# with the CRDs it needs into _output/flux-crds:
#   - kustomize-controller and its Kustomization CRD, from the module that
#     tools/flux/go.mod pins;
#   - the source CRDs (GitRepository, OCIRepository, Bucket, ExternalArtifact)
#     that it watches, from github.com/fluxcd/source-controller at the version
#     of the source API it is built with, as its own test suite takes them.
#     The go command checks that module against the checksum database.
# About two minutes cold; nothing to do for one built from the same inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/_output/bin
crds=$PWD/_output/flux-crds
mkdir -p "$out"
stamp=$out/../flux.stamp
hash=$(cat tools/flux/go.mod tools/flux/go.sum "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] && [ -x "$out/kustomize-controller" ] && [ -d "$crds" ]; then
  echo "kustomize-controller up to date in $out" >&2
  exit 0
fi
cd tools/flux
version=$(go list -m -f '{{.Version}}' github.com/fluxcd/kustomize-controller)
source=$(go list -m -f '{{.Version}}' github.com/fluxcd/source-controller/api)
echo "building kustomize-controller $version (source API $source)" >&2
go build -o "$out/kustomize-controller" github.com/fluxcd/kustomize-controller
rm -rf "$crds" && mkdir -p "$crds"
cp "$(go list -m -f '{{.Dir}}' github.com/fluxcd/kustomize-controller)"/config/crd/bases/*.yaml "$crds/"
srcdir=$(go mod download -json "github.com/fluxcd/source-controller@$source" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
for kind in gitrepositories ocirepositories buckets externalartifacts; do
  cp "$srcdir/config/crd/bases/source.toolkit.fluxcd.io_$kind.yaml" "$crds/"
done
chmod -R u+w "$crds"
echo "$hash" >"$stamp"
ls "$crds" >&2

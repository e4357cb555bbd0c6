#!/usr/bin/env bash
# Builds istiod (pilot-discovery) into _output/bin for the cluster tests, from
# the istio.io/istio module that the project's go.mod pins (it is a tool of
# the module, so the build uses the module's own dependency versions), and
# stamped with the release of internal/upstream/release.go, as Istio's
# release builds are. About a minute warm; nothing to do when it was built
# from the same inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/_output/bin
mkdir -p "$out"
stampfile=$out/../istiod.stamp
inputs=$(cat go.mod go.sum internal/upstream/release.go "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$stampfile" ] && [ "$(cat "$stampfile")" = "$inputs" ] && [ -x "$out/pilot-discovery" ]; then
  echo "istiod up to date in $out" >&2
  exit 0
fi
release=$(sed -n 's/^const Release = "\(.*\)"/\1/p' internal/upstream/release.go)
echo "building pilot-discovery $release ($(go list -m -f '{{.Version}}' istio.io/istio))" >&2
go build -o "$out/pilot-discovery" -ldflags "-X istio.io/istio/pkg/version.buildVersion=$release" \
  istio.io/istio/pilot/cmd/pilot-discovery
echo "$inputs" >"$stampfile"

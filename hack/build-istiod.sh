#!/usr/bin/env bash
# Builds the istiods (pilot-discovery) of the cluster tests into _output/bin,
# each stamped with its release, as Istio's release builds are:
#   - the pinned release of internal/upstream/release.go, from the
#     istio.io/istio module that the project's go.mod pins (it is a tool of
#     the module, so the build uses the module's own dependency versions):
#     _output/bin/pilot-discovery;
#   - the previous release, the one of Kubeflow's previous Istio tree, from
#     its own module: _output/bin/istio-$previous/pilot-discovery, and
#     render, that release's `istioctl manifest generate`.
# About a minute each warm; nothing to do for one built from the same inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/_output/bin
mkdir -p "$out"

# The previous release and the module that pins it.
previous=1.26.1
previous_module=tools/istio-1.26

# inputs FILE...: the hash of the files and of this script.
inputs() { cat "$@" "$0" | sha256sum | cut -d' ' -f1; }

# up_to_date STAMP HASH BINARY...: whether STAMP records HASH and every
# BINARY is there.
up_to_date() {
  local stamp=$1 hash=$2 b
  shift 2
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] || return 1
  for b; do [ -x "$b" ] || return 1; done
}

release=$(sed -n 's/^const Release = "\(.*\)"/\1/p' internal/upstream/release.go)
stamp=$out/../istiod.stamp
hash=$(inputs go.mod go.sum internal/upstream/release.go)
if up_to_date "$stamp" "$hash" "$out/pilot-discovery"; then
  echo "istiod $release up to date in $out" >&2
else
  echo "building pilot-discovery $release ($(go list -m -f '{{.Version}}' istio.io/istio))" >&2
  go build -o "$out/pilot-discovery" -ldflags "-X istio.io/istio/pkg/version.buildVersion=$release" \
    istio.io/istio/pilot/cmd/pilot-discovery
  echo "$hash" >"$stamp"
fi

dir=$out/istio-$previous
stamp=$out/../istio-$previous.stamp
hash=$(inputs "$previous_module"/go.mod "$previous_module"/go.sum "$previous_module"/render/*.go)
if up_to_date "$stamp" "$hash" "$dir/pilot-discovery" "$dir/render"; then
  echo "istiod $previous up to date in $dir" >&2
else
  echo "building pilot-discovery and render $previous ($previous_module)" >&2
  (
    cd "$previous_module"
    go build -o "$dir/pilot-discovery" -ldflags "-X istio.io/istio/pkg/version.buildVersion=$previous" \
      istio.io/istio/pilot/cmd/pilot-discovery
    go build -o "$dir/render" ./render
  )
  echo "$hash" >"$stamp"
fi

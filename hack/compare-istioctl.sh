#!/usr/bin/env bash
# Builds istioctl from the pinned istio.io/istio module (its own throwaway
# module under _output/, so the project's go.mod stays as it is) and shows
# that every render of `kfistio sync` equals `istioctl manifest generate` of
# the same inputs. Then builds kfistio and shows that the Istio analyzer
# findings (IST*) of `kfistio doctor -f FILE` equal `istioctl analyze` of FILE
# with the default installation, for every manifest of doctor's test data.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^const ModuleVersion = "\(.*\)"/\1/p' internal/upstream/release.go)
release=$(sed -n 's/^const Release = "\(.*\)"/\1/p' internal/upstream/release.go)
work=_output/istioctl-build
mkdir -p "$work" _output/bin
cat > "$work/go.mod" <<MOD
module istioctlbuild

go 1.26
MOD
(
  cd "$work"
  GONOSUMDB=github.com/openshift/api go get -tool "istio.io/istio/istioctl/cmd/istioctl@$version" \
    >get.log 2>&1 || { cat get.log >&2; exit 1; }
  go build -o ../bin/istioctl \
    -ldflags "-X istio.io/istio/pkg/version.buildVersion=$release" \
    istio.io/istio/istioctl/cmd/istioctl
)
echo "istioctl $(_output/bin/istioctl version --remote=false 2>/dev/null | head -1) from istio.io/istio $version" >&2
go run ./hack/istioctl-compare -istioctl _output/bin/istioctl -root .
go build -o _output/bin/kfistio ./cmd/kfistio
go run ./hack/analyze-compare -istioctl _output/bin/istioctl -kfistio _output/bin/kfistio -root .

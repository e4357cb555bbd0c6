package upstream

import (
	"regexp"

	"github.com/kubeflow/kfistio/internal/revision"
)

// Release is the Istio release the tree is generated from. It is the only place in
// the repository that names it: image tags, chart labels and injector values are
// all derived from it by `kfistio sync`.
//
// To move to another release, set Release and ModuleVersion to the release and the
// istio.io/istio pseudo-version of its tag commit, run
// `go get istio.io/istio@<ModuleVersion> && go mod tidy`, then `kfistio sync`, and
// review the diff. A test fails when go.mod and ModuleVersion disagree.
const Release = "1.29.1"

// Revision is the revision name of Release, for a control plane installed
// next to another one (an upgrade by revision): 1.29.1 is 1-29-1.
var Revision = revision.Of(Release)

// ModulePath is the Go module that carries Istio's charts, profiles and renderer.
const ModulePath = "istio.io/istio"

// ModuleVersion is the pseudo-version of ModulePath at the commit tagged Release.
const ModuleVersion = "v0.0.0-20260306174214-6991a379e1fc"

// versionPattern matches Istio release numbers: 1.minor.patch.
var versionPattern = regexp.MustCompile(`\b1\.[0-9]+\.[0-9]+\b`)

// OtherVersions returns the Istio release numbers in s that are not Release.
func OtherVersions(s string) []string {
	var out []string
	for _, v := range versionPattern.FindAllString(s, -1) {
		if v != Release {
			out = append(out, v)
		}
	}
	return out
}

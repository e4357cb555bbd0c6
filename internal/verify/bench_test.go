package verify

import (
	"testing"

	"github.com/kubeflow/kfistio/internal/build"
)

// BenchmarkVerifyAll is `kfistio verify` with no arguments: every
// installation and every directory of the embedded tree.
func BenchmarkVerifyAll(b *testing.B) {
	tree, err := build.Embedded()
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		rep, err := Run(Options{Tree: tree})
		if err != nil {
			b.Fatal(err)
		}
		if !rep.Passed {
			b.Fatalf("verify failed: %v", rep.Failed())
		}
	}
}

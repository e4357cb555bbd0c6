package inject

import (
	"embed"
	"io/fs"
	"path"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/object"
)

//go:embed samples/*.yaml
var samplesFS embed.FS

// Samples returns the sample Kubeflow workloads that verify injects: a
// restricted Deployment, one with its own init container, a KServe predictor
// pod with a storage initializer, and a notebook StatefulSet. Each passes the
// restricted Pod Security level before injection.
func Samples() ([]*unstructured.Unstructured, error) {
	files, err := fs.Glob(samplesFS, "samples/*.yaml")
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, f := range files {
		b, err := samplesFS.ReadFile(f)
		if err != nil {
			return nil, err
		}
		objs, err := object.Parse(path.Base(f), b)
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
	return out, nil
}

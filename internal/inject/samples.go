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

// Namespace labels that decide how a namespace's pods join the mesh.
const (
	InjectionLabel = "istio-injection"
	DataplaneLabel = "istio.io/dataplane-mode"
)

// SampleNamespaceLabels are the labels of the namespace of a sample workload
// in a build: as the build labels it, and labelled for injection, as Kubeflow
// labels its namespaces, unless the build puts it in ambient mode.
func SampleNamespaceLabels(objs []*unstructured.Unstructured, name string) map[string]string {
	labels := map[string]string{}
	if ns := object.Index(objs)[object.KeyOf("Namespace", "", name)]; ns != nil {
		for k, v := range ns.GetLabels() {
			labels[k] = v
		}
	}
	if _, ambient := labels[DataplaneLabel]; !ambient {
		if _, set := labels[InjectionLabel]; !set {
			labels[InjectionLabel] = "enabled"
		}
	}
	return labels
}

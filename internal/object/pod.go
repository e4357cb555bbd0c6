package object

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// Index maps the Key of each object to the object.
func Index(objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	m := make(map[string]*unstructured.Unstructured, len(objs))
	for _, o := range objs {
		m[Key(o)] = o
	}
	return m
}

// podPaths gives, for each kind that runs pods, where its pod metadata and
// pod spec are.
var podPaths = map[string][]string{
	"Pod":                   nil,
	"Deployment":            {"spec", "template"},
	"StatefulSet":           {"spec", "template"},
	"DaemonSet":             {"spec", "template"},
	"ReplicaSet":            {"spec", "template"},
	"ReplicationController": {"spec", "template"},
	"Job":                   {"spec", "template"},
	"CronJob":               {"spec", "jobTemplate", "spec", "template"},
}

// HasPodTemplate reports whether o is a Pod or a built-in kind that runs pods.
func HasPodTemplate(o *unstructured.Unstructured) bool {
	_, ok := podPaths[o.GetKind()]
	return ok
}

// PodTemplatePath returns the field path of o's pod (metadata and spec), or
// nil for a Pod itself.
func PodTemplatePath(o *unstructured.Unstructured) []string { return podPaths[o.GetKind()] }

// PodTemplate returns the metadata and spec of the pods o runs, or nil for an
// object that runs none.
func PodTemplate(o *unstructured.Unstructured) (*corev1.PodTemplateSpec, error) {
	path, ok := podPaths[o.GetKind()]
	if !ok {
		return nil, nil
	}
	m, found, err := unstructured.NestedMap(o.Object, path...)
	if path == nil {
		m, found = o.Object, true
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Key(o), err)
	}
	tpl := &corev1.PodTemplateSpec{}
	if !found {
		return tpl, nil
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, tpl); err != nil {
		return nil, fmt.Errorf("%s: pod template: %w", Key(o), err)
	}
	return tpl, nil
}

// PodSpec returns the spec of the pods o runs, or nil.
func PodSpec(o *unstructured.Unstructured) (*corev1.PodSpec, error) {
	tpl, err := PodTemplate(o)
	if err != nil || tpl == nil {
		return nil, err
	}
	return &tpl.Spec, nil
}

// EditPodSpec changes the pod spec of o in place with edit.
func EditPodSpec(o *unstructured.Unstructured, edit func(*corev1.PodSpec)) error {
	tpl, err := PodTemplate(o)
	if err != nil || tpl == nil {
		return err
	}
	edit(&tpl.Spec)
	spec, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&tpl.Spec)
	if err != nil {
		return fmt.Errorf("%s: %w", Key(o), err)
	}
	return unstructured.SetNestedMap(o.Object, spec, append(append([]string{}, podPaths[o.GetKind()]...), "spec")...)
}

// ContainerEnv returns the value of env var name of container c in the pods
// of o.
func ContainerEnv(o *unstructured.Unstructured, c, name string) (string, bool) {
	spec, err := PodSpec(o)
	if err != nil || spec == nil {
		return "", false
	}
	for _, ctr := range spec.Containers {
		if ctr.Name != c {
			continue
		}
		for _, e := range ctr.Env {
			if e.Name == name {
				return e.Value, true
			}
		}
	}
	return "", false
}

// Container returns the container called name in spec, or nil.
func Container(spec *corev1.PodSpec, name string) *corev1.Container {
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	return nil
}

// SplitImage splits an image reference into its repository and tag ("" when
// it has none).
func SplitImage(image string) (repo, tag string) {
	i := strings.LastIndex(image, ":")
	if i < 0 || strings.Contains(image[i:], "/") {
		return image, ""
	}
	return image[:i], image[i+1:]
}

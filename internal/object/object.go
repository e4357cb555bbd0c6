package object

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/kyaml/resid"
	"sigs.k8s.io/yaml"
)

// Key names an object the way every message of this project does:
// Kind/namespace/name, or Kind/name for cluster-scoped objects.
func Key(o *unstructured.Unstructured) string {
	return KeyOf(o.GetKind(), o.GetNamespace(), o.GetName())
}

// KeyOf is Key for an object that is not at hand.
func KeyOf(kind, namespace, name string) string {
	if namespace == "" {
		return kind + "/" + name
	}
	return kind + "/" + namespace + "/" + name
}

// SplitKey is the kind, namespace and name of the key of a namespaced
// object (Kind/namespace/name); ok is false for any other string.
func SplitKey(key string) (kind, namespace, name string, ok bool) {
	parts := strings.Split(key, "/")
	if len(parts) != 3 {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// Less orders objects as they are installed: kinds in kustomize's legacy order
// (Namespaces and CRDs first, webhooks last), then group and version, then
// namespace and name.
func Less(a, b *unstructured.Unstructured) bool {
	ga, gb := gvk(a), gvk(b)
	if !ga.Equals(gb) {
		return ga.IsLessThan(gb)
	}
	if a.GetNamespace() != b.GetNamespace() {
		return a.GetNamespace() < b.GetNamespace()
	}
	return a.GetName() < b.GetName()
}

func gvk(o *unstructured.Unstructured) resid.Gvk {
	k := o.GroupVersionKind()
	return resid.NewGvk(k.Group, k.Version, k.Kind)
}

// Sort sorts objs in place with Less.
func Sort(objs []*unstructured.Unstructured) {
	sort.SliceStable(objs, func(i, j int) bool { return Less(objs[i], objs[j]) })
}

// Marshal writes objs as one multi-document YAML stream with sorted map keys,
// so the same objects always give the same bytes.
func Marshal(objs []*unstructured.Unstructured) ([]byte, error) {
	var buf bytes.Buffer
	for i, o := range objs {
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			return nil, fmt.Errorf("marshal %s: %w", Key(o), err)
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(b)
	}
	return buf.Bytes(), nil
}

// Parse reads a multi-document YAML (or JSON) stream. Empty documents and
// documents holding only comments are skipped; a document that is not a
// Kubernetes object is an error naming the source and the document number.
func Parse(source string, data []byte) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []*unstructured.Unstructured
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, n, err)
		}
		if isBlank(doc) {
			continue
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, n, err)
		}
		if string(j) == "null" || string(j) == "{}" {
			continue
		}
		o := &unstructured.Unstructured{}
		if err := o.UnmarshalJSON(j); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, n, err)
		}
		if o.GetKind() == "" || o.GetAPIVersion() == "" || o.GetName() == "" {
			return nil, fmt.Errorf("%s: document %d: not a Kubernetes object (apiVersion, kind and metadata.name are required)", source, n)
		}
		objs = append(objs, o)
	}
}

func isBlank(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		t := strings.TrimSpace(line)
		if t != "" && t != "---" && !strings.HasPrefix(t, "#") {
			return false
		}
	}
	return true
}

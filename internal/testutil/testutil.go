// Package testutil holds helpers shared by the tests of several packages.
package testutil

import (
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/object"
)

// CopyDir copies the directory src into a new temporary directory, as
// <tmp>/<base of src>, and returns that copy's path.
func CopyDir(t testing.TB, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(filepath.Clean(src)))
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// WriteYAML writes objs as a YAML stream to file (in a temporary directory
// of t when file is a bare name) and returns its path.
func WriteYAML(t testing.TB, file string, objs []*unstructured.Unstructured) string {
	t.Helper()
	b, err := object.Marshal(objs)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(file) == file {
		file = filepath.Join(t.TempDir(), file)
	}
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

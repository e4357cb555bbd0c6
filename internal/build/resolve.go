package build

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// Resolve finds what arg names: an overlay name, a kustomization directory of
// t (relative to its root), or a kustomization directory on disk. It returns
// the tree to build and the directory in it.
func Resolve(t *Tree, arg string) (*Tree, string, error) {
	if o, ok := LookupOverlay(arg); ok {
		return t, o.Path, nil
	}
	if t.Has(arg) {
		return t, strings.TrimSuffix(filepath.ToSlash(arg), "/"), nil
	}
	if st, err := os.Stat(arg); err == nil && st.IsDir() {
		// A kustomization of the user's may reach anywhere on disk.
		abs, err := filepath.Abs(arg)
		if err != nil {
			return nil, "", err
		}
		d := &Tree{fs: filesys.MakeFsOnDisk(), root: filepath.ToSlash(abs), Source: arg}
		if !d.Has(".") {
			return nil, "", fmt.Errorf("%s has no kustomization.yaml", arg)
		}
		return d, ".", nil
	}
	dirs, err := t.Dirs()
	if err != nil {
		return nil, "", err
	}
	return nil, "", fmt.Errorf("unknown overlay or directory %q\n  overlays: %s\n  directories of %s: %s",
		arg, strings.Join(OverlayNames(), ", "), t.Source, strings.Join(dirs, ", "))
}

package build

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/manifests"
)

// Overlay is an install overlay users name on the command line.
type Overlay struct {
	Name string
	Path string // relative to the tree root
	// CNI is false for the overlay that injects istio-init instead.
	CNI bool
	// OAuth2Proxy is true when the overlay has oauth2-proxy external authorization.
	OAuth2Proxy bool
	// GKE is true for the overlays made for Google Kubernetes Engine; GKEOf
	// names the overlay that is the same elsewhere.
	GKE   bool
	GKEOf string
	// Ambient is true for the overlays of Istio's ambient mode (ztunnel).
	Ambient bool
	// RevisionPath is the overlay with its control plane as revision
	// upstream.Revision, for an upgrade by revision; empty when there is
	// none (the ambient overlays: ztunnel is upgraded in place only).
	RevisionPath string
	Help         string
}

// LabelsDir is the namespace-labels directory of o: the labels o needs on
// namespaces that other Kubeflow directories define, applied on their own
// (label-only). Empty when o needs none.
func (o Overlay) LabelsDir() string {
	switch {
	case !o.CNI:
		return InsecureLabelsDir
	case o.Ambient:
		return AmbientLabelsDir
	}
	return ""
}

// GKECNIBinDir is where the GKE overlays put the CNI plugin: GKE mounts
// /opt/cni/bin read-only.
const GKECNIBinDir = "/home/kubernetes/bin"

// DefaultOverlay is the overlay installed when none is named.
const DefaultOverlay = "oauth2-proxy"

// Overlays lists the install overlays, the default first.
var Overlays = []Overlay{
	{Name: "oauth2-proxy", Path: "istio-install/overlays/oauth2-proxy", CNI: true, OAuth2Proxy: true,
		RevisionPath: "istio-install/revision/oauth2-proxy", Help: "Istio CNI and oauth2-proxy external authorization (default)"},
	{Name: "gke", Path: "istio-install/overlays/gke", CNI: true, OAuth2Proxy: true, GKE: true, GKEOf: "oauth2-proxy",
		RevisionPath: "istio-install/revision/gke", Help: "oauth2-proxy with the CNI binary directory of GKE"},
	{Name: "insecure", Path: "istio-install/overlays/insecure", CNI: false, OAuth2Proxy: true,
		RevisionPath: "istio-install/revision/insecure", Help: "no CNI: privileged istio-init containers, for clusters without CNI support"},
	{Name: "ambient", Path: "istio-install/overlays/ambient", CNI: true, Ambient: true,
		Help: "ambient mode (ztunnel, no sidecars) without external authorization"},
	{Name: "ambient-gke", Path: "istio-install/overlays/ambient-gke", CNI: true, Ambient: true, GKE: true, GKEOf: "ambient",
		Help: "ambient mode on GKE"},
	{Name: "ambient-oauth2-proxy", Path: "istio-install/overlays/ambient-oauth2-proxy", CNI: true, Ambient: true, OAuth2Proxy: true,
		Help: "ambient mode with oauth2-proxy external authorization"},
	{Name: "ambient-oauth2-proxy-gke", Path: "istio-install/overlays/ambient-oauth2-proxy-gke", CNI: true, Ambient: true, OAuth2Proxy: true, GKE: true, GKEOf: "ambient-oauth2-proxy",
		Help: "ambient mode with oauth2-proxy external authorization, on GKE"},
}

// LookupOverlay returns the overlay called name.
func LookupOverlay(name string) (Overlay, bool) {
	for _, o := range Overlays {
		if o.Name == name {
			return o, true
		}
	}
	return Overlay{}, false
}

// OverlayNames returns the overlay names, the default first.
func OverlayNames() []string {
	names := make([]string, len(Overlays))
	for i, o := range Overlays {
		names[i] = o.Name
	}
	return names
}

// Tree is a kustomize tree laid out like manifests/.
type Tree struct {
	fs   filesys.FileSystem
	root string
	// Source says where the tree comes from, for messages.
	Source string
}

const embeddedRoot = "/manifests"

var (
	embeddedOnce sync.Once
	embeddedTree *Tree
	embeddedErr  error
)

// Embedded returns the tree compiled into the binary.
func Embedded() (*Tree, error) {
	embeddedOnce.Do(func() {
		mem := filesys.MakeFsInMemory()
		embeddedErr = fs.WalkDir(manifests.FS, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := fs.ReadFile(manifests.FS, p)
			if err != nil {
				return err
			}
			return mem.WriteFile(path.Join(embeddedRoot, p), b)
		})
		embeddedTree = &Tree{fs: mem, root: embeddedRoot, Source: "the embedded tree"}
	})
	return embeddedTree, embeddedErr
}

// Dir returns the tree rooted at the directory dir on disk. The tree is read
// into memory once, so every build sees the same files.
func Dir(dir string) (*Tree, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("manifests directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("manifests directory %s is not a directory", dir)
	}
	mem := filesys.MakeFsInMemory()
	err = filepath.WalkDir(abs, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return mem.WriteFile(filepath.ToSlash(p), b)
	})
	if err != nil {
		return nil, fmt.Errorf("read manifests directory: %w", err)
	}
	return &Tree{fs: mem, root: filepath.ToSlash(abs), Source: dir}, nil
}

// Dirs returns every directory of the tree that builds on its own (those with
// a Kustomization; kustomize Components build only as part of one), relative to
// the root, sorted.
func (t *Tree) Dirs() ([]string, error) {
	krustyMu.Lock()
	defer krustyMu.Unlock()
	var dirs []string
	err := t.fs.Walk(t.root, func(p string, info fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if !info.IsDir() && isKustomization(info.Name()) && !t.isComponent(p) {
			rel, err := filepath.Rel(t.root, filepath.Dir(p))
			if err != nil {
				return err
			}
			dirs = append(dirs, filepath.ToSlash(rel))
		}
		return nil
	})
	sort.Strings(dirs)
	return dirs, err
}

func (t *Tree) isComponent(file string) bool {
	b, err := t.fs.ReadFile(file)
	if err != nil {
		return false
	}
	var k struct{ Kind string }
	return yaml.Unmarshal(b, &k) == nil && k.Kind == "Component"
}

// kustomizationFiles are the names kustomize reads a kustomization from.
var kustomizationFiles = []string{"kustomization.yaml", "kustomization.yml", "Kustomization"}

func isKustomization(name string) bool { return slices.Contains(kustomizationFiles, name) }

// Has reports whether dir (relative to the root) is a kustomization directory.
func (t *Tree) Has(dir string) bool {
	krustyMu.Lock()
	defer krustyMu.Unlock()
	for _, name := range kustomizationFiles {
		if t.fs.Exists(t.path(dir) + "/" + name) {
			return true
		}
	}
	return false
}

func (t *Tree) path(dir string) string {
	return path.Join(filepath.ToSlash(t.root), path.Clean("/"+filepath.ToSlash(dir)))
}

// Result is one kustomize build.
type Result struct {
	// Dir is what was built, relative to the tree root.
	Dir    string
	resMap resmap.ResMap
}

// YAML is the build as `kubectl kustomize` prints it.
func (r *Result) YAML() ([]byte, error) { return r.resMap.AsYaml() }

// Objects returns the built objects in build order.
func (r *Result) Objects() ([]*unstructured.Unstructured, error) {
	var objs []*unstructured.Unstructured
	for _, res := range r.resMap.Resources() {
		m, err := res.Map()
		if err != nil {
			return nil, fmt.Errorf("build %s: %s: %w", r.Dir, res.CurId(), err)
		}
		objs = append(objs, &unstructured.Unstructured{Object: jsonValue(m).(map[string]any)})
	}
	return objs, nil
}

// jsonValue turns a value decoded from YAML into the types JSON decoding
// gives (int64 numbers, RFC 3339 strings for timestamps), which the
// unstructured helpers of apimachinery expect.
func jsonValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = jsonValue(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = jsonValue(e)
		}
		return x
	case int:
		return int64(x)
	case uint64:
		return int64(x)
	case time.Time:
		return x.Format(time.RFC3339)
	}
	return v
}

// krusty keeps shared OpenAPI state and is not safe for concurrent use; the
// lock also guards the in-memory file systems, which installations write to.
var krustyMu sync.Mutex

// Build runs kustomize on dir, a directory relative to the tree root.
func (t *Tree) Build(dir string) (*Result, error) {
	dir = strings.TrimSuffix(filepath.ToSlash(dir), "/")
	if !t.Has(dir) {
		return nil, fmt.Errorf("build %s: no kustomization in %s", dir, t.Source)
	}
	res, err := t.run(t.path(dir))
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", dir, err)
	}
	res.Dir = dir
	return res, nil
}

// run runs kustomize on the absolute path p of the tree's file system.
func (t *Tree) run(p string) (*Result, error) {
	krustyMu.Lock()
	defer krustyMu.Unlock()
	m, err := krusty.MakeKustomizer(options()).Run(t.fs, p)
	if err != nil {
		return nil, err
	}
	return &Result{resMap: m}, nil
}

// options are krusty's defaults with the ordering `kubectl kustomize` uses:
// the kustomization's sortOptions if it has any, else kustomize's legacy order.
func options() *krusty.Options {
	o := krusty.MakeDefaultOptions()
	o.Reorder = krusty.ReorderOptionUnspecified
	return o
}

// WithComponent builds objs with the kustomize Component at component (a
// directory relative to the root) applied to them, as a kustomization that
// lists objs and the component builds them.
func (t *Tree) WithComponent(component string, objs []*unstructured.Unstructured) ([]*unstructured.Unstructured, error) {
	docs, err := object.Marshal(objs)
	if err != nil {
		return nil, err
	}
	res, err := t.runBeside("component", strings.ReplaceAll(component, "/", "_"), []string{"objects.yaml"},
		[]string{t.fromBeside(component)}, map[string][]byte{"objects.yaml": docs})
	if err != nil {
		return nil, fmt.Errorf("build with component %s: %w", component, err)
	}
	return res.Objects()
}

// runBeside builds a kustomization of resources and components (paths from
// its directory) in the directory .kfistio-KIND/NAME next to the tree, never
// in it, with files written beside it.
func (t *Tree) runBeside(kind, name string, resources, components []string, files map[string][]byte) (*Result, error) {
	kustomization := map[string]any{
		"apiVersion": "kustomize.config.k8s.io/v1beta1",
		"kind":       "Kustomization",
		"resources":  resources,
	}
	if len(components) > 0 {
		kustomization["components"] = components
	}
	k, err := yaml.Marshal(kustomization)
	if err != nil {
		return nil, err
	}
	dir := path.Join(path.Dir(t.root), ".kfistio-"+kind, name)
	var errs []error
	krustyMu.Lock()
	errs = append(errs, t.fs.WriteFile(path.Join(dir, "kustomization.yaml"), k))
	for file, b := range files {
		errs = append(errs, t.fs.WriteFile(path.Join(dir, file), b))
	}
	krustyMu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return t.run(dir)
}

// fromBeside is the path of directory d of the tree from a directory that
// runBeside builds.
func (t *Tree) fromBeside(d string) string { return path.Join("../..", path.Base(t.root), d) }

// BuildObjects is Build followed by Objects.
func (t *Tree) BuildObjects(dir string) ([]*unstructured.Unstructured, error) {
	r, err := t.Build(dir)
	if err != nil {
		return nil, err
	}
	return r.Objects()
}

package tree

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// Files maps a path under the manifests directory to its generated content.
type Files map[string][]byte

// Paths returns the paths of f, sorted.
func (f Files) Paths() []string {
	ps := make([]string, 0, len(f))
	for p := range f {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// Generated is the result of Generate.
type Generated struct {
	Files    Files
	Warnings []string
}

// Generate renders the base and every variant from the inputs under the
// repository root and returns the generated files of manifests/.
func Generate(root string) (*Generated, error) {
	r, err := upstream.NewRenderer()
	if err != nil {
		return nil, err
	}
	defer func() { _ = r.Close() }()
	out := &Generated{Files: Files{}}
	var base split
	for _, rd := range Renders() {
		res, err := r.Render(rd.Inputs(root))
		if err != nil {
			return nil, err
		}
		out.Warnings = append(out.Warnings, res.Warnings...)
		s := splitRender(res.Objects)
		if rd.Name == BaseRender {
			base = s
			if err := out.Files.addBase(rd, s); err != nil {
				return nil, err
			}
			continue
		}
		c, err := variant(base, s)
		if err != nil {
			return nil, fmt.Errorf("%s (%s): %w", rd.Name, rd.describe(), err)
		}
		comment := fmt.Sprintf("# From the %s render to %s", BaseRender, rd.describe())
		if err := out.Files.addComponent(rd.Name, comment, c); err != nil {
			return nil, fmt.Errorf("write %s: %w", rd.Name, err)
		}
	}
	return out, nil
}

// addBase writes the base render, split into its three directories.
func (f Files) addBase(rd Render, s split) error {
	comment := "# " + rd.describe()
	for path, objs := range map[string][]*unstructured.Unstructured{
		CRDsFile:            s.crds,
		InstallFile:         s.install,
		ClusterLocalGateway: s.gateway,
	} {
		b, err := file(comment, objs)
		if err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		f[path] = b
	}
	return nil
}

// component is what turns one render into another: objects to add, and
// strategic-merge patches (changes, and deletes).
type component struct {
	resources, patches []*unstructured.Unstructured
}

// addComponent adds a kustomize Component under dir: each added object and
// each patch in a file of its own named after its object, every patch listed
// on its own (older kustomize versions cannot apply a delete patch that
// shares a file with other patches).
func (f Files) addComponent(dir, comment string, c component) error {
	var resources, patches []any
	add := func(name string, o *unstructured.Unstructured) error {
		if _, dup := f[dir+"/"+name]; dup {
			return fmt.Errorf("two objects would be written to %s", name)
		}
		b, err := file(comment, []*unstructured.Unstructured{o})
		if err != nil {
			return err
		}
		f[dir+"/"+name] = b
		return nil
	}
	for _, o := range c.resources {
		name := strings.ToLower(o.GetKind()) + "-" + o.GetName() + ".yaml"
		if err := add(name, o); err != nil {
			return err
		}
		resources = append(resources, name)
	}
	for _, p := range c.patches {
		prefix := "patch-"
		if p.Object["$patch"] == "delete" {
			prefix = "delete-"
		}
		name := prefix + strings.ToLower(p.GetKind()) + "-" + p.GetName() + ".yaml"
		if err := add(name, p); err != nil {
			return err
		}
		patches = append(patches, map[string]any{"path": name})
	}
	k := map[string]any{"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component"}
	if len(resources) > 0 {
		k["resources"] = resources
	}
	if len(patches) > 0 {
		k["patches"] = patches
	}
	b, err := yaml.Marshal(k)
	if err != nil {
		return err
	}
	f[dir+"/kustomization.yaml"] = withHeader(comment, b)
	return nil
}

func file(comment string, objs []*unstructured.Unstructured) ([]byte, error) {
	body, err := object.Marshal(objs)
	if err != nil {
		return nil, err
	}
	return withHeader(comment, body), nil
}

// withHeader puts Header and comment on top of body.
func withHeader(comment string, body []byte) []byte {
	return append([]byte(Header+"\n"+comment+"\n"), body...)
}

// split is a render cut into the three directories that hold it.
type split struct {
	crds, install, gateway []*unstructured.Unstructured
}

func splitRender(objs []*unstructured.Unstructured) split {
	var s split
	for _, o := range objs {
		switch {
		case o.GetKind() == "CustomResourceDefinition":
			s.crds = append(s.crds, o)
		case strings.HasPrefix(o.GetName(), ClusterLocalGatewayName):
			s.gateway = append(s.gateway, o)
		default:
			s.install = append(s.install, o)
		}
	}
	return s
}

// helmValuesConfigMap records the Helm values of a render for debugging; Istio
// documents that it has no effect. Variants leave it as the base render wrote it.
const helmValuesConfigMap = "values"

// variant returns the Component that turns the install part of from into
// that of to: the objects to has and from lacks, a delete patch for each
// object to lacks, and a strategic-merge patch for each object that differs.
// The CRDs and the cluster-local gateway, which live in directories of their
// own, must not differ.
func variant(from, to split) (component, error) {
	var c component
	var errs []error
	if !reflect.DeepEqual(from.crds, to.crds) {
		errs = append(errs, errors.New("the CustomResourceDefinitions differ"))
	}
	if !reflect.DeepEqual(from.gateway, to.gateway) {
		errs = append(errs, errors.New("the cluster-local-gateway objects differ"))
	}
	want := object.Index(to.install)
	for _, o := range from.install {
		key := object.Key(o)
		w, ok := want[key]
		delete(want, key)
		switch {
		case !ok:
			p := stub(o)
			p.Object["$patch"] = "delete"
			c.patches = append(c.patches, p)
		case reflect.DeepEqual(o.Object, w.Object):
		case o.GetKind() == "ConfigMap" && o.GetName() == helmValuesConfigMap:
		default:
			p := stub(o)
			for k, v := range strategicDiff(o.Object, w.Object, nil) {
				if k != "metadata" {
					p.Object[k] = v
				} else if meta, ok := v.(map[string]any); ok {
					for mk, mv := range meta {
						p.Object["metadata"].(map[string]any)[mk] = mv
					}
				}
			}
			c.patches = append(c.patches, p)
		}
	}
	for _, o := range want {
		c.resources = append(c.resources, o)
	}
	if len(errs) == 0 && len(c.patches) == 0 && len(c.resources) == 0 {
		errs = append(errs, errors.New("the render does not differ"))
	}
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	object.Sort(c.patches)
	object.Sort(c.resources)
	return c, nil
}

func stub(o *unstructured.Unstructured) *unstructured.Unstructured {
	meta := map[string]any{"name": o.GetName()}
	if o.GetNamespace() != "" {
		meta["namespace"] = o.GetNamespace()
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": o.GetAPIVersion(),
		"kind":       o.GetKind(),
		"metadata":   meta,
	}}
}

// strategicDiff is the strategic-merge patch from a to b: changed and added
// fields with b's values, removed fields set to null, and lists with a merge
// key (mergeKey) patched item by item: changed and added items, and
// {key, $patch: delete} for removed ones. Other lists are replaced whole.
func strategicDiff(a, b map[string]any, path []string) map[string]any {
	out := map[string]any{}
	for k, bv := range b {
		av, ok := a[k]
		switch {
		case !ok:
			out[k] = bv
		case reflect.DeepEqual(av, bv):
		default:
			am, aIsMap := av.(map[string]any)
			bm, bIsMap := bv.(map[string]any)
			al, aIsList := av.([]any)
			bl, bIsList := bv.([]any)
			switch {
			case aIsMap && bIsMap:
				out[k] = strategicDiff(am, bm, append(path, k))
			case aIsList && bIsList:
				out[k] = listDiff(al, bl, append(path, k))
			default:
				out[k] = bv
			}
		}
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			out[k] = nil
		}
	}
	return out
}

// mergeKey is the strategic-merge key of the list at path in the pod
// templates and Services that Istio renders, or "" for lists that a patch
// replaces whole.
func mergeKey(path []string) string {
	switch path[len(path)-1] {
	case "containers", "initContainers", "env", "volumes":
		return "name"
	case "volumeMounts":
		return "mountPath"
	case "ports":
		if len(path) >= 2 && path[len(path)-2] == "spec" {
			return "port" // Service ports
		}
		return "containerPort"
	}
	return ""
}

func listDiff(a, b []any, path []string) []any {
	key := mergeKey(path)
	if key == "" {
		return b
	}
	index := func(l []any) (map[any]map[string]any, bool) {
		m := map[any]map[string]any{}
		for _, x := range l {
			xm, ok := x.(map[string]any)
			if !ok || xm[key] == nil {
				return nil, false
			}
			m[xm[key]] = xm
		}
		return m, true
	}
	am, okA := index(a)
	bm, okB := index(b)
	if !okA || !okB {
		return b
	}
	var out []any
	for _, x := range b {
		xm := x.(map[string]any)
		old, ok := am[xm[key]]
		switch {
		case !ok:
			out = append(out, xm)
		case !reflect.DeepEqual(old, xm):
			d := strategicDiff(old, xm, path)
			d[key] = xm[key]
			out = append(out, d)
		}
	}
	for _, x := range a {
		xm := x.(map[string]any)
		if _, ok := bm[xm[key]]; !ok {
			out = append(out, map[string]any{key: xm[key], "$patch": "delete"})
		}
	}
	return out
}

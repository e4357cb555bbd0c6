package tree

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
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
	render := func(rd Render) (split, error) {
		res, err := r.Render(rd.Inputs(root))
		if err != nil {
			return split{}, err
		}
		out.Warnings = append(out.Warnings, res.Warnings...)
		return splitRender(res.Objects), nil
	}
	var base split
	for _, rd := range Renders() {
		s, err := render(rd)
		if err != nil {
			return nil, err
		}
		if rd.Name == BaseRender {
			base = s
			if err := out.Files.addBase(rd, s); err != nil {
				return nil, err
			}
			continue
		}
		from := base
		if rd.Revision != "" {
			if from, err = render(rd.withoutRevision()); err != nil {
				return nil, err
			}
		}
		c, gw, err := variant(from, s, rd.Revision)
		if err != nil {
			return nil, fmt.Errorf("%s (%s): %w", rd.Name, rd.describe(), err)
		}
		comment := fmt.Sprintf("# From the %s render to %s", BaseRender, rd.describe())
		if rd.Revision != "" {
			comment = fmt.Sprintf("# From the same render without a revision to %s", rd.describe())
		}
		if err := out.Files.addComponent(rd.Name, comment, c); err != nil {
			return nil, fmt.Errorf("write %s: %w", rd.Name, err)
		}
		if rd.GatewayDir != "" {
			if err := out.Files.addShared(rd.GatewayDir, "# The cluster-local gateway's part of the change to revision "+rd.Revision, gw); err != nil {
				return nil, fmt.Errorf("write %s: %w", rd.GatewayDir, err)
			}
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

// component is what turns one render into another: objects to add,
// strategic-merge patches (changes, and deletes), and renames (JSON patches
// of metadata.name, applied after the others).
type component struct {
	resources, patches []*unstructured.Unstructured
	renames            []rename
}

// rename gives an object the name another revision's render gives it.
type rename struct {
	from *unstructured.Unstructured // a stub with the old name
	to   string
}

// addShared adds the Component c under dir, unless an earlier render wrote
// the very same files there: several renders may share a part.
func (f Files) addShared(dir, comment string, c component) error {
	mine := Files{}
	if err := mine.addComponent(dir, comment, c); err != nil {
		return err
	}
	for p, b := range mine {
		if old, ok := f[p]; ok && !bytes.Equal(old, b) {
			return fmt.Errorf("%s: two renders change it differently", p)
		}
		f[p] = b
	}
	return nil
}

// addComponent adds a kustomize Component under dir: each added object and
// each patch in a file of its own named after its object, every patch listed
// on its own (older kustomize versions cannot apply a delete patch that
// shares a file with other patches), renames last.
func (f Files) addComponent(dir, comment string, c component) error {
	var resources, patches []any
	add := func(name string, b []byte) error {
		if _, dup := f[dir+"/"+name]; dup {
			return fmt.Errorf("two objects would be written to %s", name)
		}
		f[dir+"/"+name] = b
		return nil
	}
	addObject := func(name string, o *unstructured.Unstructured) error {
		b, err := file(comment, []*unstructured.Unstructured{o})
		if err != nil {
			return err
		}
		return add(name, b)
	}
	for _, o := range c.resources {
		name := strings.ToLower(o.GetKind()) + "-" + o.GetName() + ".yaml"
		if err := addObject(name, o); err != nil {
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
		if err := addObject(name, p); err != nil {
			return err
		}
		patches = append(patches, map[string]any{"path": name})
	}
	for _, r := range c.renames {
		name := "rename-" + strings.ToLower(r.from.GetKind()) + "-" + r.from.GetName() + ".yaml"
		b, err := yaml.Marshal([]any{map[string]any{"op": "replace", "path": "/metadata/name", "value": r.to}})
		if err != nil {
			return err
		}
		if err := add(name, withHeader(comment, b)); err != nil {
			return err
		}
		target := map[string]any{"kind": r.from.GetKind(), "name": r.from.GetName()}
		if ns := r.from.GetNamespace(); ns != "" {
			target["namespace"] = ns
		}
		patches = append(patches, map[string]any{"path": name, "target": target})
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
	return add("kustomization.yaml", withHeader(comment, b))
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
// documents that it has no effect. Variants leave its data as the base render
// wrote it.
const helmValuesConfigMap = "values"

// variant returns the Components that turn from into to: the install
// part's, and, for a revision, the cluster-local gateway's. The CRDs must not
// differ, nor the cluster-local gateway without a revision: they live in
// directories of their own.
func variant(from, to split, rev string) (install, gateway component, err error) {
	var errs []error
	if !reflect.DeepEqual(from.crds, to.crds) {
		errs = append(errs, errors.New("the CustomResourceDefinitions differ"))
	}
	if rev == "" && !reflect.DeepEqual(from.gateway, to.gateway) {
		errs = append(errs, errors.New("the cluster-local-gateway objects differ"))
	}
	install = changes(from.install, to.install, rev)
	if rev != "" {
		gateway = changes(from.gateway, to.gateway, rev)
	}
	if len(errs) == 0 && install.empty() {
		errs = append(errs, errors.New("the render does not differ"))
	}
	return install, gateway, errors.Join(errs...)
}

// changes returns the Component that turns the objects from into to: the
// objects to has and from lacks, a delete patch for each object to lacks, and
// a strategic-merge patch for each object that differs. With a revision, an
// object of from that to names for the revision (istiod, istiod-1-29-1) is
// patched and renamed, so that what an overlay changed in it carries over.
func changes(from, to []*unstructured.Unstructured, rev string) component {
	var c component
	want := object.Index(to)
	for _, o := range from {
		key := object.Key(o)
		w, ok := want[key]
		if !ok && rev != "" {
			if w, ok = want[object.KeyOf(o.GetKind(), o.GetNamespace(), revision.Name(o.GetName(), rev))]; ok {
				c.renames = append(c.renames, rename{from: stub(o), to: w.GetName()})
			}
		}
		if w != nil {
			delete(want, object.Key(w))
		}
		switch {
		case !ok:
			p := stub(o)
			p.Object["$patch"] = "delete"
			c.patches = append(c.patches, p)
		default:
			if o.GetKind() == "ConfigMap" && o.GetName() == helmValuesConfigMap {
				w = w.DeepCopy()
				w.Object["data"] = o.Object["data"]
			}
			if p := patchOf(o, w); p != nil {
				c.patches = append(c.patches, p)
			}
		}
	}
	for _, o := range want {
		c.resources = append(c.resources, o)
	}
	if rev != "" {
		c.markSteps(to)
	}
	object.Sort(c.patches)
	object.Sort(c.resources)
	return c
}

// markSteps labels each object that c adds or patches with the step of an
// upgrade by revision that applies it (revision.StepOf its object in to),
// adding a patch for a renamed object that has none.
func (c *component) markSteps(to []*unstructured.Unstructured) {
	in := object.Index(to)
	renamed := map[string]string{}
	for _, r := range c.renames {
		renamed[object.Key(r.from)] = object.KeyOf(r.from.GetKind(), r.from.GetNamespace(), r.to)
	}
	label := func(o *unstructured.Unstructured) {
		key := object.Key(o)
		if k, ok := renamed[key]; ok {
			key = k
		}
		l := o.GetLabels()
		if l == nil {
			l = map[string]string{}
		}
		l[revision.StepLabel] = revision.StepOf(in[key])
		o.SetLabels(l)
	}
	for _, r := range c.resources {
		label(r)
	}
	patched := map[string]bool{}
	for _, p := range c.patches {
		patched[object.Key(p)] = true
		if p.Object["$patch"] != "delete" {
			label(p)
		}
	}
	for _, r := range c.renames {
		if !patched[object.Key(r.from)] {
			p := stub(r.from)
			label(p)
			c.patches = append(c.patches, p)
		}
	}
}

func (c component) empty() bool {
	return len(c.patches) == 0 && len(c.resources) == 0 && len(c.renames) == 0
}

// patchOf is the strategic-merge patch from o to w, which may carry another
// name (a rename does that part); nil when they do not differ.
func patchOf(o, w *unstructured.Unstructured) *unstructured.Unstructured {
	w = w.DeepCopy()
	w.SetName(o.GetName())
	if reflect.DeepEqual(o.Object, w.Object) {
		return nil
	}
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
	return p
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
// templates, Services and webhook configurations that Istio renders, or ""
// for lists that a patch replaces whole.
func mergeKey(path []string) string {
	switch path[len(path)-1] {
	case "containers", "initContainers", "env", "volumes", "webhooks":
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

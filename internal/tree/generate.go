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
	renders := Renders()
	base := renders[0]
	rb, err := r.Render(base.Inputs(root))
	if err != nil {
		return nil, err
	}
	out.Warnings = append(out.Warnings, rb.Warnings...)
	baseSplit := splitRender(rb.Objects)
	comment := "# " + base.describe()
	for path, objs := range map[string][]*unstructured.Unstructured{
		CRDsFile:            baseSplit.crds,
		InstallFile:         baseSplit.install,
		ClusterLocalGateway: baseSplit.gateway,
	} {
		if out.Files[path], err = file(comment, objs); err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
	}
	for _, v := range renders[1:] {
		rv, err := r.Render(v.Inputs(root))
		if err != nil {
			return nil, err
		}
		out.Warnings = append(out.Warnings, rv.Warnings...)
		patches, err := patchSet(baseSplit, splitRender(rv.Objects))
		if err != nil {
			return nil, fmt.Errorf("%s (%s): %w", v.Name, v.describe(), err)
		}
		comment := "# A patch from the base render to " + v.describe()
		if err := out.Files.addComponent(v.Name, comment, patches); err != nil {
			return nil, fmt.Errorf("write %s: %w", v.Name, err)
		}
	}
	return out, nil
}

// addComponent adds a kustomize Component under dir that applies patches, each
// from a file of its own named after its object.
func (f Files) addComponent(dir, comment string, patches []*unstructured.Unstructured) error {
	var list []any
	for _, p := range patches {
		name := strings.ToLower(p.GetKind()) + "-" + p.GetName() + ".yaml"
		if p.Object["$patch"] == "delete" {
			name = "delete-" + name
		}
		b, err := file(comment, []*unstructured.Unstructured{p})
		if err != nil {
			return err
		}
		if _, dup := f[dir+"/"+name]; dup {
			return fmt.Errorf("two patches would be written to %s", name)
		}
		f[dir+"/"+name] = b
		list = append(list, map[string]any{"path": name})
	}
	k, err := yaml.Marshal(map[string]any{
		"apiVersion": "kustomize.config.k8s.io/v1alpha1",
		"kind":       "Component",
		"patches":    list,
	})
	if err != nil {
		return err
	}
	f[dir+"/kustomization.yaml"] = append([]byte(Header+"\n"+comment+"\n"), k...)
	return nil
}

func file(comment string, objs []*unstructured.Unstructured) ([]byte, error) {
	body, err := object.Marshal(objs)
	if err != nil {
		return nil, err
	}
	return append([]byte(Header+"\n"+comment+"\n"), body...), nil
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

// patchSet returns the strategic-merge patches that turn the install part of
// base into that of v: a delete patch for each object v lacks, and a data patch
// for each ConfigMap whose data differs. Any other difference is an error, so a
// new kind of upstream change is reviewed instead of silently lost.
func patchSet(base, v split) ([]*unstructured.Unstructured, error) {
	var errs []error
	if !reflect.DeepEqual(base.crds, v.crds) {
		errs = append(errs, errors.New("the CustomResourceDefinitions differ from the base render"))
	}
	if !reflect.DeepEqual(base.gateway, v.gateway) {
		errs = append(errs, errors.New("the cluster-local-gateway objects differ from the base render"))
	}
	want := map[string]*unstructured.Unstructured{}
	for _, o := range v.install {
		want[object.Key(o)] = o
	}
	var patches []*unstructured.Unstructured
	for _, o := range base.install {
		key := object.Key(o)
		w, ok := want[key]
		delete(want, key)
		switch {
		case !ok:
			p := stub(o)
			p.Object["$patch"] = "delete"
			patches = append(patches, p)
		case reflect.DeepEqual(o.Object, w.Object):
		case o.GetKind() == "ConfigMap" && o.GetName() == helmValuesConfigMap:
		case o.GetKind() == "ConfigMap":
			p, err := dataPatch(o, w)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			patches = append(patches, p)
		default:
			errs = append(errs, fmt.Errorf("%s differs from the base render beyond ConfigMap data", key))
		}
	}
	for key := range want {
		errs = append(errs, fmt.Errorf("%s is not in the base render", key))
	}
	if len(errs) == 0 && len(patches) == 0 {
		errs = append(errs, errors.New("the render does not differ from the base render"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	object.Sort(patches)
	return patches, nil
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

// dataPatch is the patch from ConfigMap a to ConfigMap b, which may differ only
// in data: changed keys carry b's value, removed keys are set to null.
func dataPatch(a, b *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	ad, _, _ := unstructured.NestedStringMap(a.Object, "data")
	bd, _, _ := unstructured.NestedStringMap(b.Object, "data")
	ac, bc := a.DeepCopy(), b.DeepCopy()
	delete(ac.Object, "data")
	delete(bc.Object, "data")
	if !reflect.DeepEqual(ac.Object, bc.Object) {
		return nil, fmt.Errorf("%s differs from the base render beyond its data", object.Key(a))
	}
	data := map[string]any{}
	for k, v := range bd {
		if ad[k] != v {
			data[k] = v
		}
	}
	for k := range ad {
		if _, ok := bd[k]; !ok {
			data[k] = nil
		}
	}
	p := stub(a)
	p.Object["data"] = data
	return p, nil
}

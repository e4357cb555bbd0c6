package verify

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/object"
)

// The GitOps objects of gitops/: Flux Kustomizations and Argo CD Applications.
const (
	fluxGroup = "kustomize.toolkit.fluxcd.io"
	argoGroup = "argoproj.io"
	syncWave  = "argocd.argoproj.io/sync-wave"
)

// gitOpsOverlay returns the install overlay of a directory of gitops/:
// TOOL/base installs the default overlay, TOOL/overlays/NAME overlay NAME.
func gitOpsOverlay(dir string) (build.Overlay, bool) {
	name := build.DefaultOverlay
	if _, rest, ok := strings.Cut(dir, "/overlays/"); ok {
		name = rest
	}
	return build.LookupOverlay(name)
}

// app is one Flux Kustomization or Argo CD Application of a GitOps build:
// the tree directory it applies and its place in the order.
type app struct {
	obj *unstructured.Unstructured
	key string
	dir string
	// stage is when the install needs the directory: 0 the CRDs and the
	// namespace, 1 the install overlay (its Istio objects need the CRDs), 2
	// the rest (their Istio objects need istiod to answer).
	stage int
}

// checkGitOps checks the Flux Kustomizations and Argo CD Applications of a
// gitops/ directory: together they apply exactly the directories of the
// documented installation of their overlay, each a directory of the tree,
// in the order the install needs (Flux: dependsOn, with wait so that Ready
// means ready; Argo CD: sync waves), and Argo CD applies server-side.
func checkGitOps(t *target) []Problem {
	var p problems
	o, ok := gitOpsOverlay(t.dir)
	if !ok {
		p.because("", t.dir, fmt.Sprintf("names no install overlay: want %s/base or %s/overlays/NAME with NAME one of %s",
			path.Dir(t.dir), path.Dir(t.dir), strings.Join(build.OverlayNames(), ", ")))
		return p
	}
	want, err := build.DefaultInstallation(o.Name).Dirs()
	if err != nil {
		p.because("", t.dir, err.Error())
		return p
	}
	var apps []app
	for _, u := range t.own {
		a, ok := appOf(&p, t, u, o)
		if ok {
			apps = append(apps, a)
		}
	}
	have := map[string]bool{}
	for _, a := range apps {
		d := a.dir
		if d == build.ClusterLocalM2MAuth {
			d = build.ClusterLocalGateway
		}
		if !slices.Contains(want, d) {
			p.because(a.key, "spec path", fmt.Sprintf("applies %s, which the installation of overlay %s does not hold (%s)", a.dir, o.Name, strings.Join(want, ", ")))
		}
		have[d] = true
	}
	for _, d := range want {
		if !have[d] {
			p.because("", t.dir, fmt.Sprintf("nothing applies %s, which the installation of overlay %s needs", d, o.Name))
		}
	}
	checkFluxOrder(&p, apps)
	checkArgoOrder(&p, apps)
	return p
}

// appOf reads the directory u applies, or records why it cannot.
func appOf(p *problems, t *target, u *unstructured.Unstructured, o build.Overlay) (app, bool) {
	key := object.Key(u)
	var field string
	switch u.GroupVersionKind().Group {
	case fluxGroup:
		field = "spec.path"
	case argoGroup:
		field = "spec.source.path"
	default:
		p.because(key, "kind", "neither a Flux Kustomization nor an Argo CD Application")
		return app{}, false
	}
	src, _, _ := unstructured.NestedString(u.Object, strings.Split(field, ".")...)
	dir, ok := strings.CutPrefix(path.Clean(strings.TrimPrefix(src, "./")), build.KubeflowPath+"/")
	if !ok {
		p.wrong(key, field, src, "a directory under "+build.KubeflowPath+", where kubeflow/manifests holds the tree")
		return app{}, false
	}
	if !t.env.tree.Has(dir) {
		p.wrong(key, field, src, "a kustomization directory of the tree")
		return app{}, false
	}
	a := app{obj: u, key: key, dir: dir, stage: 2}
	switch dir {
	case build.CRDsDir, build.NamespaceDir:
		a.stage = 0
	case o.Path:
		a.stage = 1
	}
	return a, true
}

// checkFluxOrder checks that each Flux Kustomization depends, directly or
// not, on every one of an earlier stage, on none that is missing and not
// on itself, and that those depended on wait for their objects.
func checkFluxOrder(p *problems, apps []app) {
	deps := map[string][]string{}
	byName := map[string]app{}
	for _, a := range apps {
		if a.obj.GroupVersionKind().Group != fluxGroup {
			continue
		}
		byName[a.obj.GetName()] = a
		list, _, _ := unstructured.NestedSlice(a.obj.Object, "spec", "dependsOn")
		for _, d := range list {
			m, _ := d.(map[string]any)
			name, _ := m["name"].(string)
			deps[a.obj.GetName()] = append(deps[a.obj.GetName()], name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		a := byName[name]
		for _, d := range deps[name] {
			if _, ok := byName[d]; !ok {
				p.because(a.key, "spec.dependsOn", fmt.Sprintf("depends on %s, which no Kustomization here defines: Flux waits for it forever", d))
			}
		}
		closure := dependencies(deps, name)
		if closure[name] {
			p.because(a.key, "spec.dependsOn", "depends on itself through its dependencies: Flux never applies it")
		}
		for _, other := range slices.Sorted(maps.Keys(byName)) {
			if b := byName[other]; b.stage < a.stage && !closure[other] {
				p.because(a.key, "spec.dependsOn", fmt.Sprintf("does not wait for %s (%s), which %s needs first", other, b.dir, a.dir))
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		for _, d := range deps[name] {
			b, ok := byName[d]
			if !ok {
				continue
			}
			if wait, _, _ := unstructured.NestedBool(b.obj.Object, "spec", "wait"); !wait {
				p.wrong(b.key, "spec.wait", false, fmt.Sprintf("true: %s depends on it, and without wait it is Ready once applied, before its objects are", name))
			}
		}
	}
}

// dependencies returns every Kustomization name depends on, directly or not.
func dependencies(deps map[string][]string, name string) map[string]bool {
	seen := map[string]bool{}
	next := slices.Clone(deps[name])
	for len(next) > 0 {
		d := next[0]
		next = next[1:]
		if !seen[d] {
			seen[d] = true
			next = append(next, deps[d]...)
		}
	}
	return seen
}

// checkArgoOrder checks that each Argo CD Application has a later sync wave
// than those of earlier stages, and applies server-side.
func checkArgoOrder(p *problems, apps []app) {
	waves := map[string]int{}
	var argo []app
	for _, a := range apps {
		if a.obj.GroupVersionKind().Group != argoGroup {
			continue
		}
		w, err := strconv.Atoi(a.obj.GetAnnotations()[syncWave])
		if v, ok := a.obj.GetAnnotations()[syncWave]; ok && err != nil {
			p.wrong(a.key, "annotation "+syncWave, v, "an integer")
		}
		waves[a.key] = w
		argo = append(argo, a)
		opts, _, _ := unstructured.NestedStringSlice(a.obj.Object, "spec", "syncPolicy", "syncOptions")
		if !slices.Contains(opts, "ServerSideApply=true") {
			p.wrong(a.key, "spec.syncPolicy.syncOptions", opts, "ServerSideApply=true: the Istio CRDs are larger than client-side apply's annotation allows, and istiod owns the CA bundles")
		}
	}
	for _, a := range argo {
		for _, b := range argo {
			if b.stage < a.stage && waves[b.key] >= waves[a.key] {
				p.because(a.key, "annotation "+syncWave, fmt.Sprintf("wave %d is not after wave %d of %s (%s), which %s needs first", waves[a.key], waves[b.key], b.key, b.dir, a.dir))
			}
		}
	}
}

// checkLabelsComponent checks that the Component of a namespace-labels
// directory, for GitOps tools, puts exactly the directory's labels on its
// Namespaces and leaves other Namespaces alone.
func checkLabelsComponent(t *target) []Problem {
	var p problems
	const other = "kfistio-unlisted"
	want := map[string]map[string]string{other: nil}
	for _, o := range t.own {
		if o.GetKind() == "Namespace" {
			want[o.GetName()] = o.GetLabels()
		}
	}
	var stubs []*unstructured.Unstructured
	for _, name := range slices.Sorted(maps.Keys(want)) {
		ns := &unstructured.Unstructured{}
		ns.SetAPIVersion("v1")
		ns.SetKind("Namespace")
		ns.SetName(name)
		stubs = append(stubs, ns)
	}
	component := path.Join(t.dir, build.LabelsComponent)
	got, err := t.env.tree.WithComponent(component, stubs)
	if err != nil {
		p.because("", component, err.Error())
		return p
	}
	for _, o := range got {
		if w := want[o.GetName()]; !maps.Equal(o.GetLabels(), w) {
			p.wrong(object.Key(o), "metadata.labels after "+component, o.GetLabels(), show(w)+", the labels of "+t.dir)
		}
	}
	return p
}

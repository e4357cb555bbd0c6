package verify

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/schema"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// Options says what Run checks.
type Options struct {
	Tree *build.Tree
	// Targets are install overlay names, each checked as its installation (what
	// install applies) and its directory, and directories of the tree. Empty
	// means every overlay and every directory of the tree.
	Targets []string
}

// Run builds and checks the targets opts names and reports on each. It
// returns an error only when it cannot run at all; a target that does not
// build is a failed check in the report.
func Run(opts Options) (*Report, error) {
	specs, err := targets(opts)
	if err != nil {
		return nil, err
	}
	e := &env{tree: opts.Tree, builds: map[string]*built{}, meshes: map[string]*upstreamMesh{}, schemas: &schemas{
		validators: map[[32]byte]*schema.Validator{}, verdicts: map[[32]byte][]string{},
	}}
	rep := &Report{Release: upstream.Release, Passed: true, Targets: make([]Target, len(specs))}
	// Builds are serialised (kustomize is not safe for concurrent use); the
	// checks of built targets run side by side.
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, s := range specs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			rep.Targets[i] = e.check(s)
		}()
	}
	wg.Wait()
	for _, t := range rep.Targets {
		rep.Passed = rep.Passed && t.Passed
	}
	return rep, nil
}

// Kinds of target.
const (
	KindInstallation = "installation"
	KindDirectory    = "directory"
)

// part is a piece of the tree a build may hold; facts apply to the parts they
// speak of.
type part uint

const (
	partCRDs part = 1 << iota
	partNamespace
	partInstall
	partGateway
	partM2M
	partKubeflow
	partEgress
	// partPolicies: the opt-in oauth2-proxy policies.
	partPolicies
	// partLabels: a namespace-labels directory, applied on its own.
	partLabels
	// partGitOps: Flux Kustomizations or Argo CD Applications of gitops/.
	partGitOps
)

// spec is a target before it is built: an installation or a directory.
type spec struct {
	name, kind string
	parts      part
	overlay    build.Overlay
	install    build.Installation
	dir        string
}

func (s spec) key() string {
	if s.kind == KindInstallation {
		return "installation:" + s.install.Name()
	}
	return "dir:" + s.dir
}

// sibling is the same kind of target for another overlay.
func (s spec) sibling(overlay string) spec {
	o, _ := build.LookupOverlay(overlay)
	if s.kind == KindInstallation {
		in := s.install
		in.Overlay = overlay
		return installationSpec(in)
	}
	if s.dir == s.overlay.RevisionPath {
		return dirSpec(o.RevisionPath)
	}
	return dirSpec(o.Path)
}

func installationSpec(in build.Installation) spec {
	o, _ := build.LookupOverlay(in.Overlay)
	p := partCRDs | partNamespace | partInstall | partGateway | partKubeflow
	if slices.Contains(in.Components, "sidecar-egress") {
		p |= partEgress
	}
	if slices.Contains(in.Components, build.OAuth2ProxyPolicies) {
		p |= partPolicies
	}
	return spec{name: in.Name(), kind: KindInstallation, overlay: o, install: in, parts: p}
}

func dirSpec(d string) spec {
	s := spec{name: d, kind: KindDirectory, dir: d}
	s.parts, s.overlay = dirParts(d)
	return s
}

func targets(opts Options) ([]spec, error) {
	var installs []build.Installation
	var dirs []string
	if len(opts.Targets) == 0 {
		all, err := opts.Tree.Dirs()
		if err != nil {
			return nil, err
		}
		for _, o := range build.Overlays {
			installs = append(installs, build.DefaultInstallation(o.Name))
			if o.RevisionPath != "" {
				in := build.DefaultInstallation(o.Name)
				in.Revision = upstream.Revision
				installs = append(installs, in)
			}
		}
		// The opt-in component, on the default overlay.
		egress := build.DefaultInstallation(build.DefaultOverlay)
		egress.Components = []string{"sidecar-egress"}
		// The opt-in policies, on every overlay with the oauth2-proxy provider.
		for _, o := range build.Overlays {
			if o.OAuth2Proxy {
				in := build.DefaultInstallation(o.Name)
				in.Components = []string{build.OAuth2ProxyPolicies}
				installs = append(installs, in)
			}
		}
		installs = append(installs, egress)
		dirs = all
	}
	for _, name := range opts.Targets {
		if o, ok := build.LookupOverlay(name); ok {
			installs = append(installs, build.DefaultInstallation(name))
			dirs = append(dirs, o.Path)
			continue
		}
		if !opts.Tree.Has(name) {
			all, _ := opts.Tree.Dirs()
			return nil, fmt.Errorf("%q is neither an overlay (%s) nor a directory of %s (%s)",
				name, strings.Join(build.OverlayNames(), ", "), opts.Tree.Source, strings.Join(all, ", "))
		}
		dirs = append(dirs, name)
	}
	var specs []spec
	for _, in := range installs {
		specs = append(specs, installationSpec(in))
	}
	for _, d := range dirs {
		specs = append(specs, dirSpec(d))
	}
	return specs, nil
}

// dirParts says which parts a directory of the tree holds. Directories it
// does not know get only the checks that apply to any build.
func dirParts(dir string) (part, build.Overlay) {
	for _, o := range build.Overlays {
		if o.Path == dir || o.RevisionPath == dir {
			return partInstall, o
		}
	}
	if strings.HasPrefix(dir, build.GitOpsDir+"/") {
		o, _ := gitOpsOverlay(dir)
		return partGitOps, o
	}
	switch dir {
	case build.CRDsDir:
		return partCRDs, build.Overlay{}
	case build.NamespaceDir:
		return partNamespace, build.Overlay{}
	case build.InsecureLabelsDir, build.AmbientLabelsDir:
		return partLabels, build.Overlay{}
	case build.InstallBaseDir:
		return partInstall, build.Overlay{Name: "base", Path: dir, CNI: true}
	case build.ClusterLocalGateway, build.ClusterLocalGatewayRevision:
		return partGateway, build.Overlay{}
	case build.ClusterLocalM2MAuth, build.ClusterLocalM2MAuthRevision:
		return partGateway | partM2M, build.Overlay{}
	case build.KubeflowResourcesDir:
		return partKubeflow, build.Overlay{}
	case build.ExampleDir:
		o, _ := build.LookupOverlay(build.DefaultOverlay)
		return partCRDs | partNamespace | partInstall | partGateway | partKubeflow, o
	case build.ExampleDir + "/ambient":
		o, _ := build.LookupOverlay("ambient-oauth2-proxy")
		return partCRDs | partNamespace | partInstall | partGateway | partKubeflow, o
	}
	return 0, build.Overlay{}
}

// env holds what several targets share: builds, the CRDs, the upstream mesh.
type env struct {
	tree    *build.Tree
	schemas *schemas
	mu      sync.Mutex
	builds  map[string]*built

	meshMu sync.Mutex
	// meshes holds the upstream mesh config by revision.
	meshes map[string]*upstreamMesh
}

type upstreamMesh struct {
	once sync.Once
	mesh map[string]any
	err  error
}

type built struct {
	objs []*unstructured.Unstructured
	err  error
}

// objects builds s, once.
func (e *env) objects(s spec) ([]*unstructured.Unstructured, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if b, ok := e.builds[s.key()]; ok {
		return b.objs, b.err
	}
	b := &built{}
	if s.kind == KindInstallation {
		b.objs, b.err = e.tree.InstallationObjects(s.install)
	} else {
		b.objs, b.err = e.tree.BuildObjects(s.dir)
	}
	e.builds[s.key()] = b
	return b.objs, b.err
}

// upstreamMesh is the mesh config upstream Istio renders for the default
// profile, with no Kubeflow input, for the control plane revision names.
func (e *env) upstreamMesh(names revision.Names) (map[string]any, error) {
	e.meshMu.Lock()
	m := e.meshes[names.Revision]
	if m == nil {
		m = &upstreamMesh{}
		e.meshes[names.Revision] = m
	}
	e.meshMu.Unlock()
	m.once.Do(func() {
		r, err := upstream.NewRenderer()
		if err != nil {
			m.err = err
			return
		}
		defer func() { _ = r.Close() }()
		var in upstream.Inputs
		if names.Revision != revision.Default {
			in.Set = []string{"revision=" + names.Revision}
		}
		out, err := r.Render(in)
		if err != nil {
			m.err = err
			return
		}
		cm := object.Index(out.Objects)[object.KeyOf("ConfigMap", revision.Namespace, names.Mesh)]
		if cm == nil {
			m.err = fmt.Errorf("upstream Istio %s renders no mesh ConfigMap %s", upstream.Release, names.Mesh)
			return
		}
		m.mesh, m.err = meshOf(cm)
	})
	return m.mesh, m.err
}

func meshOf(cm *unstructured.Unstructured) (map[string]any, error) {
	s, _, _ := unstructured.NestedString(cm.Object, "data", "mesh")
	m := map[string]any{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("%s key mesh: %w", object.Key(cm), err)
	}
	return m, nil
}

// target is a built target being checked.
type target struct {
	spec
	env *env
	// objs are the build, with the labels of the overlay's namespace-labels
	// directory on the namespaces an overlay labels (as install leaves
	// them on the cluster); own is the build alone.
	objs []*unstructured.Unstructured
	own  []*unstructured.Unstructured
	idx  map[string]*unstructured.Unstructured
	// names are those of the target's control plane revision.
	names revision.Names

	injectOnce sync.Once
	injected   []injection
	injectErr  error
}

// injection is one sample workload after Istio's injector.
type injection struct {
	sample *unstructured.Unstructured
	// injected is false when no injection webhook of the build selects the
	// sample; pod is then the sample's own.
	injected bool
	pod      *corev1.PodTemplateSpec
	err      error
}

func (t *target) has(p part) bool { return t.parts&p != 0 }

func (t *target) get(kind, ns, name string) *unstructured.Unstructured {
	return t.idx[object.KeyOf(kind, ns, name)]
}

// injections injects every sample workload with the target's injector.
func (t *target) injections() ([]injection, error) {
	t.injectOnce.Do(func() {
		in, err := inject.New(t.objs)
		if err != nil {
			t.injectErr = err
			return
		}
		samples, err := inject.Samples()
		if err != nil {
			t.injectErr = err
			return
		}
		for _, s := range samples {
			r := injection{sample: s}
			tpl, err := object.PodTemplate(s)
			if err == nil && in.Selects(inject.SampleNamespaceLabels(t.objs, s.GetNamespace()), tpl.Labels) {
				r.injected = true
				var out *unstructured.Unstructured
				if out, err = in.Inject(s); err == nil {
					tpl, err = object.PodTemplate(out)
				}
			}
			r.pod, r.err = tpl, err
			t.injected = append(t.injected, r)
		}
	})
	return t.injected, t.injectErr
}

// check builds s and runs every check that applies to it.
func (e *env) check(s spec) Target {
	objs, err := e.objects(s)
	if err != nil {
		return Target{Name: s.name, Kind: s.kind, Checks: []Check{{
			ID: "BUILD", Title: buildTitle(s), Problems: []Problem{{Reason: err.Error()}},
		}}}
	}
	return e.checkBuilt(s, objs)
}

// checkBuilt runs every check that applies to s on its built objects, with
// the labels of its overlay's namespace-labels directory.
func (e *env) checkBuilt(s spec, objs []*unstructured.Unstructured) Target {
	var labels []*unstructured.Unstructured
	if dir := s.overlay.LabelsDir(); dir != "" && s.parts&partInstall != 0 {
		var err error
		if labels, err = e.objects(dirSpec(dir)); err != nil {
			return Target{Name: s.name, Kind: s.kind, Checks: []Check{{
				ID: "BUILD", Title: buildTitle(s), Problems: []Problem{{Reason: err.Error()}},
			}}}
		}
	}
	return e.checkWith(s, objs, labels)
}

// checkWith runs every check that applies to s on objs, the namespaces of
// objs labelled as labels say.
func (e *env) checkWith(s spec, objs, labels []*unstructured.Unstructured) Target {
	out := Target{Name: s.name, Kind: s.kind, Passed: true}
	out.Checks = append(out.Checks, Check{ID: "BUILD", Title: buildTitle(s), Passed: true})
	all := withNamespaceLabels(objs, labels)
	t := &target{spec: s, env: e, objs: all, own: objs, idx: object.Index(all), names: revision.Find(all)}
	for _, c := range checks {
		if !c.applies(t) {
			continue
		}
		problems := c.run(t)
		out.Checks = append(out.Checks, Check{ID: c.id, Title: c.title, Passed: len(problems) == 0, Problems: problems})
		out.Passed = out.Passed && len(problems) == 0
	}
	return out
}

// withNamespaceLabels returns objs with the labels of each Namespace of labels
// on that Namespace of objs, or labels' Namespace added where objs lack it.
func withNamespaceLabels(objs, labels []*unstructured.Unstructured) []*unstructured.Unstructured {
	if len(labels) == 0 {
		return objs
	}
	out := slices.Clone(objs)
	idx := object.Index(out)
	for _, l := range labels {
		o := idx[object.Key(l)]
		if o == nil {
			out = append(out, l.DeepCopy())
			continue
		}
		merged := o.DeepCopy()
		m := merged.GetLabels()
		if m == nil {
			m = map[string]string{}
		}
		for k, v := range l.GetLabels() {
			m[k] = v
		}
		merged.SetLabels(m)
		out[slices.Index(out, o)] = merged
	}
	return out
}

func buildTitle(s spec) string {
	if s.kind == KindInstallation {
		return "builds with kustomize as one kustomization (no clashing objects)"
	}
	return "builds with kustomize"
}

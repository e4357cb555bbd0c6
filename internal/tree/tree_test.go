package tree

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"golang.org/x/mod/modfile"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/testutil"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// update rewrites the generated files of manifests/ (the golden files of
// sync) instead of comparing them: go test ./internal/tree -update.
var update = flag.Bool("update", false, "rewrite the generated files of manifests/ from a fresh render")

const repoRoot = "../.."

var (
	genOnce sync.Once
	gen     *Generated
	genErr  error
)

// generated renders once per test binary.
func generated(t *testing.T) *Generated {
	t.Helper()
	genOnce.Do(func() { gen, genErr = Generate(repoRoot) })
	if genErr != nil {
		t.Fatal(genErr)
	}
	return gen
}

func TestCommittedTreeIsAFreshRender(t *testing.T) {
	g := generated(t)
	dir := filepath.Join(repoRoot, "manifests")
	if *update {
		if _, err := Write(dir, g.Files); err != nil {
			t.Fatal(err)
		}
	}
	changes, err := Compare(dir, g.Files)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range changes {
		t.Errorf("manifests/%s differs from a fresh render (run `go run ./cmd/kfistio sync` or go test -update):\n%s", c.Path, c.Diff)
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	first := generated(t)
	second, err := Generate(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Files) != len(second.Files) {
		t.Fatalf("%d files, then %d", len(first.Files), len(second.Files))
	}
	for p, b := range first.Files {
		if !bytes.Equal(b, second.Files[p]) {
			t.Errorf("%s differs between two renders", p)
		}
	}
}

func TestGeneratedFilesCarryTheHeader(t *testing.T) {
	for p, b := range generated(t).Files {
		if !strings.HasPrefix(string(b), Header+"\n") {
			t.Errorf("%s does not start with %q", p, Header)
		}
	}
}

func TestSplit(t *testing.T) {
	files := generated(t).Files
	kinds := func(path string) map[string]int {
		objs, err := object.Parse(path, files[path])
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]int{}
		for _, o := range objs {
			m[o.GetKind()]++
			if path != ClusterLocalGateway && strings.HasPrefix(o.GetName(), ClusterLocalGatewayName) {
				t.Errorf("%s: %s belongs in %s", path, object.Key(o), ClusterLocalGateway)
			}
		}
		return m
	}
	if crds := kinds(CRDsFile); len(crds) != 1 || crds["CustomResourceDefinition"] != 14 {
		t.Errorf("%s holds %v, want the 14 Istio CRDs only", CRDsFile, crds)
	}
	if k := kinds(InstallFile); k["CustomResourceDefinition"] != 0 || k["DaemonSet"] != 1 || k["Deployment"] != 2 {
		t.Errorf("%s holds %v, want istiod, the ingress gateway and the CNI DaemonSet, no CRDs", InstallFile, k)
	}
	if k := kinds(ClusterLocalGateway); k["Deployment"] != 1 || k["HorizontalPodAutoscaler"] != 1 || k["Service"] != 1 {
		t.Errorf("%s holds %v", ClusterLocalGateway, k)
	}
}

func TestGeneratedObjectsAreSorted(t *testing.T) {
	for _, p := range []string{CRDsFile, InstallFile, ClusterLocalGateway} {
		objs, err := object.Parse(p, generated(t).Files[p])
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(objs); i++ {
			if object.Less(objs[i], objs[i-1]) {
				t.Errorf("%s: %s comes after %s", p, object.Key(objs[i]), object.Key(objs[i-1]))
			}
		}
	}
}

func TestNoOtherIstioVersionInManifests(t *testing.T) {
	err := filepath.WalkDir(filepath.Join(repoRoot, "manifests"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if v := upstream.OtherVersions(string(b)); len(v) > 0 {
			t.Errorf("%s names Istio %v; the only release in the tree is %s (internal/upstream/release.go)", p, v, upstream.Release)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOtherVersionsFindsAStaleTag(t *testing.T) {
	stale := "image: gcr.io/istio-release/proxyv2:1.28.3\nhelm.sh/chart: istiod-" + upstream.Release
	if got := upstream.OtherVersions(stale); len(got) != 1 || got[0] != "1.28.3" {
		t.Fatalf("OtherVersions = %v, want [1.28.3]", got)
	}
	if got := upstream.OtherVersions("rfc7519#section-4.1.3 v0.15.0 " + upstream.Release); len(got) != 0 {
		t.Fatalf("OtherVersions = %v, want none", got)
	}
}

func TestGoModPinsTheRelease(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.Parse("go.mod", b, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range f.Require {
		if r.Mod.Path == upstream.ModulePath {
			if r.Mod.Version != upstream.ModuleVersion {
				t.Fatalf("go.mod requires %s %s, but internal/upstream/release.go says Istio %s is %s",
					upstream.ModulePath, r.Mod.Version, upstream.Release, upstream.ModuleVersion)
			}
			return
		}
	}
	t.Fatalf("go.mod does not require %s", upstream.ModulePath)
}

func TestCompareFindsDriftAndWriteRepairsIt(t *testing.T) {
	g := generated(t)
	dir := testutil.CopyDir(t, filepath.Join(repoRoot, "manifests"))
	// A hand edit inside a generated file, a deleted generated file, and a
	// generated file that sync no longer produces.
	install := filepath.Join(dir, filepath.FromSlash(InstallFile))
	b, _ := os.ReadFile(install)
	if err := os.WriteFile(install, bytes.Replace(b, []byte("ENABLE_NATIVE_SIDECARS"), []byte("ENABLE_NATIVE_SIDECARZ"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, filepath.FromSlash(CRDsFile))); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "istio-install", "components", "old", "zz.yaml")
	if err := os.MkdirAll(filepath.Dir(stale), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte(Header+"\nkind: Old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	changes, err := Compare(dir, g.Files)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range changes {
		got[c.Path] = c.Diff
	}
	if d := got[InstallFile]; !hasLine(d, "-", "name: ENABLE_NATIVE_SIDECARZ") || !hasLine(d, "+", "name: ENABLE_NATIVE_SIDECARS") {
		t.Errorf("diff of %s does not show the hand edit:\n%s", InstallFile, d)
	}
	if _, ok := got[CRDsFile]; !ok {
		t.Errorf("the deleted %s is not reported", CRDsFile)
	}
	if _, ok := got["istio-install/components/old/zz.yaml"]; !ok {
		t.Errorf("the stale generated file is not reported")
	}
	if len(got) != 3 {
		t.Errorf("reported %d changes, want 3: %v", len(got), changes)
	}
	if _, err := Write(dir, g.Files); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("the stale generated file was not removed")
	}
	again, err := Write(dir, g.Files)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 0 {
		t.Errorf("a second Write changed %v", again)
	}
}

// hasLine reports whether the diff d has a line that starts with sign and
// ends with text.
func hasLine(d, sign, text string) bool {
	for _, l := range strings.Split(d, "\n") {
		if strings.HasPrefix(l, sign) && strings.HasSuffix(l, text) {
			return true
		}
	}
	return false
}

func TestHandWrittenFilesAreLeftAlone(t *testing.T) {
	dir := testutil.CopyDir(t, filepath.Join(repoRoot, "manifests"))
	mine := filepath.Join(dir, "istio-install", "base", "patches", "mine.yaml")
	if err := os.WriteFile(mine, []byte("# my patch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(dir, generated(t).Files); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mine); err != nil {
		t.Fatalf("a hand-written file was touched: %v", err)
	}
}

func obj(kind, name string, data map[string]string) *unstructured.Unstructured {
	o := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": kind,
		"metadata": map[string]any{"name": name, "namespace": "istio-system"}}}
	if data != nil {
		d := map[string]any{}
		for k, v := range data {
			d[k] = v
		}
		o.Object["data"] = d
	}
	return o
}

func TestVariant(t *testing.T) {
	base := split{install: []*unstructured.Unstructured{
		obj("ConfigMap", "injector", map[string]string{"values": "a", "config": "c", "gone": "x"}),
		obj("ConfigMap", helmValuesConfigMap, map[string]string{"merged-values": "1"}),
		obj("ServiceAccount", "cni", nil),
		obj("Service", "istiod", nil),
		withEnv(obj("Deployment", "istiod", nil), "A=1", "B=2", "C=3"),
	}}
	to := split{install: []*unstructured.Unstructured{
		obj("ConfigMap", "injector", map[string]string{"values": "b", "config": "c"}),
		obj("ConfigMap", helmValuesConfigMap, map[string]string{"merged-values": "2"}),
		obj("Service", "istiod", nil),
		withEnv(obj("Deployment", "istiod", nil), "A=1", "B=changed", "D=4"),
		obj("ServiceAccount", "ztunnel", nil),
	}}
	c, _, err := variant(base, to, "")
	if err != nil {
		t.Fatal(err)
	}
	patches, _ := object.Marshal(c.patches)
	want := `apiVersion: v1
$patch: delete
kind: ServiceAccount
metadata:
  name: cni
  namespace: istio-system
---
apiVersion: v1
data:
  gone: null
  values: b
kind: ConfigMap
metadata:
  name: injector
  namespace: istio-system
---
apiVersion: v1
kind: Deployment
metadata:
  name: istiod
  namespace: istio-system
spec:
  template:
    spec:
      containers:
      - env:
        - name: B
          value: changed
        - name: D
          value: "4"
        - $patch: delete
          name: C
        name: discovery
`
	if normalize(string(patches)) != normalize(want) {
		t.Errorf("patches:\n%s\nwant:\n%s", patches, want)
	}
	if len(c.resources) != 1 || object.Key(c.resources[0]) != "ServiceAccount/istio-system/ztunnel" {
		t.Errorf("resources %v", c.resources)
	}
}

// A revision renames the objects of the default control plane, patching
// what differs under the old name first, so that what overlays changed in
// them carries over; objects of the revision alone are added; the
// cluster-local gateway's part goes to a Component of its own; each object
// the Components add or change is labelled with its step of an upgrade.
func TestVariantOfARevision(t *testing.T) {
	labelled := func(o *unstructured.Unstructured, rev string) *unstructured.Unstructured {
		o.SetLabels(map[string]string{"istio.io/rev": rev})
		return o
	}
	from := split{
		install: []*unstructured.Unstructured{
			labelled(withEnv(obj("Deployment", "istiod", nil), "REVISION=default", "A=1"), "default"),
			obj("ServiceAccount", "istiod", nil),
			obj("ServiceAccount", "istio-cni", nil),
		},
		gateway: []*unstructured.Unstructured{labelled(obj("Service", "cluster-local-gateway", nil), "default")},
	}
	to := split{
		install: []*unstructured.Unstructured{
			labelled(withEnv(obj("Deployment", "istiod-r1", nil), "REVISION=r1", "A=1"), "r1"),
			obj("ServiceAccount", "istiod-r1", nil),
			obj("ServiceAccount", "istio-cni", nil),
			obj("Service", "istiod-revision-tag-default", nil),
		},
		gateway: []*unstructured.Unstructured{labelled(obj("Service", "cluster-local-gateway", nil), "r1")},
	}
	c, gw, err := variant(from, to, "r1")
	if err != nil {
		t.Fatal(err)
	}
	var renames []string
	for _, r := range c.renames {
		renames = append(renames, object.Key(r.from)+" -> "+r.to)
	}
	if want := []string{"Deployment/istio-system/istiod -> istiod-r1", "ServiceAccount/istio-system/istiod -> istiod-r1"}; !slices.Equal(renames, want) {
		t.Errorf("renames %v, want %v", renames, want)
	}
	patches, _ := object.Marshal(c.patches)
	want := `apiVersion: v1
kind: ServiceAccount
metadata:
  labels:
    kfistio.kubeflow.org/upgrade-step: start
  name: istiod
  namespace: istio-system
---
apiVersion: v1
kind: Deployment
metadata:
  labels:
    istio.io/rev: r1
    kfistio.kubeflow.org/upgrade-step: start
  name: istiod
  namespace: istio-system
spec:
  template:
    spec:
      containers:
      - env:
        - name: REVISION
          value: r1
        name: discovery
`
	if normalize(string(patches)) != normalize(want) {
		t.Errorf("patches:\n%s\nwant:\n%s", patches, want)
	}
	if len(c.resources) != 1 || object.Key(c.resources[0]) != "Service/istio-system/istiod-revision-tag-default" {
		t.Errorf("resources %v", c.resources)
	}
	if len(gw.patches) != 1 || gw.patches[0].GetLabels()["istio.io/rev"] != "r1" {
		t.Errorf("gateway patches %v", gw.patches)
	}
	// The files: patches by their old names, renames as JSON patches after
	// them.
	f := Files{}
	if err := f.addComponent("c", "# test", c); err != nil {
		t.Fatal(err)
	}
	k := string(f["c/kustomization.yaml"])
	if i, j := strings.Index(k, "patch-deployment-istiod.yaml"), strings.Index(k, "rename-deployment-istiod.yaml"); i < 0 || j < i {
		t.Errorf("kustomization does not list the patch, then the rename:\n%s", k)
	}
	if got := string(f["c/rename-deployment-istiod.yaml"]); !strings.Contains(got, "path: /metadata/name") || !strings.Contains(got, "value: istiod-r1") {
		t.Errorf("rename:\n%s", got)
	}
}

// withEnv gives o a pod template with one container, discovery, with env.
func withEnv(o *unstructured.Unstructured, env ...string) *unstructured.Unstructured {
	var list []any
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		list = append(list, map[string]any{"name": k, "value": v})
	}
	o.Object["spec"] = map[string]any{"template": map[string]any{"spec": map[string]any{
		"containers": []any{map[string]any{"name": "discovery", "env": list}},
	}}}
	return o
}

// normalize sorts the lines of each document, so the comparison ignores key
// order.
func normalize(s string) string {
	var docs []string
	for _, d := range strings.Split(s, "---\n") {
		lines := strings.Split(strings.TrimSpace(d), "\n")
		sort.Strings(lines)
		docs = append(docs, strings.Join(lines, "\n"))
	}
	return strings.Join(docs, "\n---\n")
}

func TestVariantRefusesWhatItCannotExpress(t *testing.T) {
	cases := map[string]struct{ base, variant split }{
		"changed CRDs": {
			split{crds: []*unstructured.Unstructured{obj("CustomResourceDefinition", "a", nil)}},
			split{},
		},
		"no difference": {
			split{install: []*unstructured.Unstructured{obj("Service", "istiod", nil)}},
			split{install: []*unstructured.Unstructured{obj("Service", "istiod", nil)}},
		},
	}
	for name, c := range cases {
		if _, _, err := variant(c.base, c.variant, ""); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// Each variant Component, applied to the generated base after the
// Components its render builds on, gives exactly its render (except the
// informational Helm values ConfigMap): the patches lose nothing and add
// nothing. A revision's cluster-local gateway Component does the same for
// the generated cluster-local gateway.
func TestVariantComponentsReproduceTheirRender(t *testing.T) {
	g := generated(t)
	r, err := upstream.NewRenderer()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	for _, v := range Renders()[1:] {
		t.Run(v.Name, func(t *testing.T) {
			rv, err := r.Render(v.Inputs(repoRoot))
			if err != nil {
				t.Fatal(err)
			}
			s := splitRender(rv.Objects)
			reproduces(t, g.Files, InstallFile, append(slices.Clone(v.On), v.Name), s.install)
			if v.GatewayDir != "" {
				reproduces(t, g.Files, ClusterLocalGateway, []string{v.GatewayDir}, s.gateway)
			}
		})
	}
}

// reproduces builds the generated file base with the generated components,
// in order, and compares the result with want.
func reproduces(t *testing.T, files Files, base string, components []string, want []*unstructured.Unstructured) {
	t.Helper()
	dir := t.TempDir()
	for p, b := range files {
		if p == base || slices.ContainsFunc(components, func(c string) bool { return strings.HasPrefix(p, c+"/") }) {
			target := filepath.Join(dir, filepath.FromSlash(p))
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(target, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	k := "resources:\n- " + filepath.Base(base) + "\ncomponents:\n"
	for _, c := range components {
		k += "- ../../" + c + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.Dir(base), "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	tree, err := build.Dir(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tree.BuildObjects(filepath.Dir(base))
	if err != nil {
		t.Fatal(err)
	}
	// The step labels are the components' own, for upgrades by revision.
	for _, o := range got {
		if l := o.GetLabels(); l[revision.StepLabel] != "" {
			delete(l, revision.StepLabel)
			o.SetLabels(l)
		}
	}
	wantIdx, have := object.Index(want), object.Index(got)
	for _, m := range []map[string]*unstructured.Unstructured{wantIdx, have} {
		for key, o := range m {
			if o.GetKind() == "ConfigMap" && strings.HasPrefix(o.GetName(), helmValuesConfigMap) {
				delete(m, key)
			}
		}
	}
	for key, w := range wantIdx {
		h, ok := have[key]
		if !ok {
			t.Errorf("%s of the render is missing", key)
			continue
		}
		// kustomize drops null fields, which the API server also reads as
		// absent.
		if !reflect.DeepEqual(object.Canonical(h.Object), object.Canonical(w.Object)) {
			hb, _ := json.Marshal(h.Object)
			wb, _ := json.Marshal(w.Object)
			t.Errorf("%s differs from the render:\n%s\n%s", key, hb, wb)
		}
	}
	for key := range have {
		if _, ok := wantIdx[key]; !ok {
			t.Errorf("%s is not in the render", key)
		}
	}
}

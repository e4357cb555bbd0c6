package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/testcluster"
	"github.com/kubeflow/kfistio/manifests"
)

// Flux's kustomize-controller (hack/build-flux.sh) reconciles the Flux
// Kustomizations of gitops/flux for every install overlay, from the tree
// served as a GitRepository's artifact, with the real istiod: every
// Kustomization becomes Ready, istiod writes its CA bundles, and a forced
// reconciliation then applies nothing (the controller's own log and events
// say so) while each inventory holds exactly its directory's build. The
// labels an overlay needs on Kubeflow's Namespaces come with them, through the
// namespace-labels Component, and are kept.
func TestFluxInstallsEveryOverlay(t *testing.T) {
	f := startFlux(t)
	for _, o := range build.Overlays {
		t.Run(o.Name, func(t *testing.T) {
			ks := f.kustomizations(t, o, nil)
			before := f.existingNamespaces(t)
			eventMark := f.events.count()
			f.apply(t, ks)
			started := time.Now()
			f.waitReady(t, ks, 4*time.Minute)
			t.Logf("all %d Kustomizations Ready in %s", len(ks), time.Since(started).Round(time.Second))
			for _, e := range f.events.since(eventMark) {
				if e.Severity == "error" {
					t.Logf("on the way: %s %s: %s", e.Reason, e.Object.Name, firstLine(e.Message))
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			if err := cluster.WaitIstiod(ctx); err != nil {
				t.Fatal(err)
			}
			in := build.DefaultInstallation(o.Name)
			m := &mesh{in: in, objs: objects(t, nil, in)}
			m.checkCABundles(t)
			f.checkInventories(t, ks)
			// Flux adopts a Namespace that was there without field managers
			// (the API server records its fields as before-first-apply's, a
			// manager the controller removes at its next apply): that one
			// change, once, then nothing.
			changes, problems := f.forceReconcile(t, ks)
			report(t, problems)
			var adopted []string
			for _, obj := range slices.Sorted(maps.Keys(changes)) {
				if before[obj] && changes[obj] == "configured" {
					adopted = append(adopted, obj)
				} else {
					t.Errorf("the forced reconciliation %s %s", changes[obj], obj)
				}
			}
			if len(adopted) > 0 {
				t.Logf("adopted by the first forced reconciliation: %s", strings.Join(adopted, ", "))
				report(t, f.driftProblems(t, ks))
			}
			report(t, f.labelProblems(t, o))
			if o.Name != "insecure" && o.Name != "ambient" {
				return
			}
			// What the README warns of: the labels directory as a
			// Kustomization of its own fights Kubeflow's Namespaces, as both
			// apply with the controller's one field manager.
			t.Run("a Kustomization of the labels fights", func(t *testing.T) {
				labels := &unstructured.Unstructured{Object: map[string]any{
					"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
					"metadata": map[string]any{"name": "namespace-labels", "namespace": fluxNamespace},
					"spec": map[string]any{"interval": "10m", "prune": false, "path": "./" + path.Join(build.KubeflowPath, o.LabelsDir()),
						"sourceRef": map[string]any{"kind": "GitRepository", "name": fluxSource}},
				}}
				f.apply(t, []*unstructured.Unstructured{labels})
				f.waitReady(t, []*unstructured.Unstructured{labels}, time.Minute)
				problems := f.labelProblems(t, o)
				t.Logf("Kubeflow's Namespaces after it: %s", strings.Join(problems, "; "))
				if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, "istio-injection") }) {
					t.Errorf("the labels Kustomization left Kubeflow's istio-injection labels alone: %v", problems)
				}
				waitGone(t, f.c.Dynamic.Resource(kustomizationsGVR).Namespace(fluxNamespace), "namespace-labels", true)
				f.reconcile(t, "kubeflow-namespaces")
				eventually(t, "Kubeflow's Namespaces restored", time.Minute, func() error {
					if p := f.labelProblems(t, o); len(p) > 0 {
						return fmt.Errorf("%s", strings.Join(p, "; "))
					}
					return nil
				})
			})
		})
	}
}

// What Flux users hit, each with a clear condition, and convergence once the
// cause is gone: a Kustomization that points at a removed overlay, one
// reconciled before the Istio CRDs exist, and istiod down while one is
// reconciled.
func TestFluxRecovers(t *testing.T) {
	f := startFlux(t)
	o, _ := build.LookupOverlay(build.DefaultOverlay)
	ks := f.kustomizations(t, o, func(k *unstructured.Unstructured) {
		switch k.GetName() {
		case "istio-install":
			k.Object["spec"].(map[string]any)["path"] = "./common/istio/istio-install/overlays/removed"
		case "kubeflow-istio-resources":
			delete(k.Object["spec"].(map[string]any), "dependsOn")
		}
	})
	deleteIstioCRDs(t)
	var crds *unstructured.Unstructured
	ks = slices.DeleteFunc(ks, func(k *unstructured.Unstructured) bool {
		if k.GetName() == "istio-crds" {
			crds = k
			return true
		}
		return false
	})
	f.apply(t, ks)
	// Which of two messages says the CRD is missing depends on whether the
	// controller has seen the kind before: its cached discovery then names
	// the resource the API server no longer serves.
	f.waitCondition(t, "kubeflow-istio-resources", "False", `no matches for kind "Gateway"`,
		"Gateway/kubeflow/kubeflow-gateway not found: the server could not find the requested resource")
	f.waitCondition(t, "istio-install", "False", "dependency 'flux-system/istio-crds' not found")

	f.apply(t, []*unstructured.Unstructured{crds})
	f.waitCondition(t, "istio-install", "False", "kustomization path not found")
	f.patch(t, "istio-install", `{"spec":{"path":"./common/istio/istio-install/overlays/oauth2-proxy"}}`)
	ks = append(ks, crds)
	f.waitReady(t, ks, 4*time.Minute)

	// istiod down: its webhook refuses every Istio object, so the
	// reconciliation of the gateway fails, and succeeds by itself at the
	// retry interval once istiod is back.
	restart := cluster.StopIstiod()
	f.reconcile(t, "cluster-local-gateway")
	f.waitCondition(t, "cluster-local-gateway", "False", `failed calling webhook "validation.istio.io"`)
	restart()
	f.waitReady(t, ks, 2*time.Minute)

	// A change by hand is drift: the forced reconciliation reverts it and
	// says so, and the next one finds nothing.
	edit := `{"apiVersion":"autoscaling/v2","kind":"HorizontalPodAutoscaler",
"metadata":{"name":"cluster-local-gateway","namespace":"istio-system"},"spec":{"maxReplicas":7}}`
	u := &unstructured.Unstructured{}
	if err := json.Unmarshal([]byte(edit), &u.Object); err != nil {
		t.Fatal(err)
	}
	applyObject(t, f.c, u)
	if p := f.driftProblems(t, ks); !slices.ContainsFunc(p, func(s string) bool {
		return strings.Contains(s, "configured HorizontalPodAutoscaler/istio-system/cluster-local-gateway")
	}) {
		t.Errorf("maxReplicas changed by hand: drift %v, want the HorizontalPodAutoscaler configured", p)
	}
	report(t, f.driftProblems(t, ks))
}

// flux is kustomize-controller running against the cluster, with the tree
// served as the artifact of GitRepository flux-system/kubeflow-manifests.
type flux struct {
	c        *kube.Client
	tree     *build.Tree
	log      string
	events   *fluxEvents
	revision string
}

const (
	fluxNamespace = "flux-system"
	fluxSource    = "kubeflow-manifests"
	// fluxManager is the field manager of the controller's applies.
	fluxManager = "kustomize-controller"
	// kubeflowNamespaces is the path in the artifact of the stand-in for
	// Kubeflow's own Namespaces (common/kubeflow-namespace and the like).
	kubeflowNamespaces = "kubeflow/namespaces"
)

var (
	kustomizationsGVR = schema.GroupVersionResource{Group: "kustomize.toolkit.fluxcd.io", Version: "v1", Resource: "kustomizations"}
	gitRepositoryGVR  = schema.GroupVersionResource{Group: "source.toolkit.fluxcd.io", Version: "v1", Resource: "gitrepositories"}
	crdGVR            = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

// startFlux installs Flux's CRDs, serves the artifact, runs the controller,
// and removes all of it, with what the Kustomizations leave, when the test
// ends.
func startFlux(t *testing.T) *flux {
	t.Helper()
	bin, err := testcluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	controller := filepath.Join(bin, "kustomize-controller")
	crdDir := filepath.Join(filepath.Dir(bin), "flux-crds")
	if _, err := os.Stat(controller); err != nil {
		t.Fatalf("kustomize-controller is not built (%v): run hack/build-flux.sh", err)
	}
	c, _ := connect(t)
	tree, err := build.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	f := &flux{c: c, tree: tree, log: filepath.Join(t.TempDir(), "kustomize-controller.log"), events: &fluxEvents{}}
	ctx := context.Background()
	crds := applyFluxCRDs(t, c, crdDir)
	t.Cleanup(func() {
		for _, name := range crds {
			_ = c.Dynamic.Resource(crdGVR).Delete(ctx, name, metav1.DeleteOptions{})
		}
		_ = c.Kube.CoreV1().Namespaces().Delete(ctx, fluxNamespace, metav1.DeleteOptions{})
		deleteIstioCRDs(t)
		deleteNamespace(t, c, "istio-system")
	})
	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": fluxNamespace}}}
	applyObject(t, c, ns)

	artifact, digest := treeArtifact(t)
	sum := sha1.Sum(artifact)
	f.revision = "main@sha1:" + hex.EncodeToString(sum[:])
	files := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(artifact) }))
	t.Cleanup(files.Close)
	events := httptest.NewServer(f.events)
	t.Cleanup(events.Close)

	logFile, err := os.Create(f.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(controller, "--metrics-addr=127.0.0.1:0", "--health-addr=127.0.0.1:0",
		"--enable-leader-election=false", "--log-encoding=json", "--requeue-dependency=5s", "--events-addr="+events.URL)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+cluster.Kubeconfig, "RUNTIME_NAMESPACE="+fluxNamespace)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		_ = logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(f.log)
			t.Logf("kustomize-controller's log, last lines:\n%s", tail(string(b), 30))
		}
	})

	repo := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
		"metadata": map[string]any{"name": fluxSource, "namespace": fluxNamespace},
		"spec":     map[string]any{"url": "https://github.com/kubeflow/manifests", "interval": "1h", "ref": map[string]any{"branch": "main"}},
	}}
	applyObject(t, c, repo)
	now := time.Now().UTC().Format(time.RFC3339)
	status := map[string]any{"status": map[string]any{
		"observedGeneration": int64(1),
		"artifact": map[string]any{"path": "kubeflow-manifests.tar.gz", "url": files.URL + "/kubeflow-manifests.tar.gz",
			"revision": f.revision, "digest": "sha256:" + digest, "lastUpdateTime": now, "size": int64(len(artifact))},
		"conditions": []any{map[string]any{"type": "Ready", "status": "True", "reason": "Succeeded",
			"message": "stored artifact for revision " + f.revision, "lastTransitionTime": now, "observedGeneration": int64(1)}},
	}}
	body, _ := json.Marshal(status)
	if _, err := c.Dynamic.Resource(gitRepositoryGVR).Namespace(fluxNamespace).Patch(ctx, fluxSource, types.MergePatchType, body, metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("set the artifact of GitRepository/%s/%s: %v", fluxNamespace, fluxSource, err)
	}
	return f
}

// applyFluxCRDs applies the CRDs of dir, waits until they are Established,
// and returns their names.
func applyFluxCRDs(t *testing.T, c *kube.Client, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no Flux CRDs in %s (%v): run hack/build-flux.sh", dir, err)
	}
	var names []string
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := object.Parse(file, b)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			applyObject(t, c, o)
			names = append(names, o.GetName())
		}
	}
	for _, name := range names {
		eventually(t, "CustomResourceDefinition/"+name+" Established", time.Minute, func() error {
			crd, err := c.Dynamic.Resource(crdGVR).Get(context.Background(), name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if s, _ := condition(crd, "Established"); s != "True" {
				return fmt.Errorf("not Established")
			}
			return nil
		})
	}
	return names
}

// treeArtifact is the tarball source-controller would serve for
// kubeflow/manifests: the tree at common/istio, and a stand-in for Kubeflow's
// own Namespaces at kubeflowNamespaces. It returns the tarball and its
// SHA-256.
func treeArtifact(t *testing.T) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	add := func(name string, b []byte) {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	err := fs.WalkDir(manifests.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(manifests.FS, p)
		if err == nil {
			add(path.Join(build.KubeflowPath, p), b)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	add(kubeflowNamespaces+"/kustomization.yaml", []byte("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- namespaces.yaml\n"))
	namespaces, err := object.Marshal(kubeflowNamespaceObjects())
	if err != nil {
		t.Fatal(err)
	}
	add(kubeflowNamespaces+"/namespaces.yaml", namespaces)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return buf.Bytes(), hex.EncodeToString(sum[:])
}

// kubeflowNamespaceLabels are the labels of Namespaces as Kubeflow's
// directories define them: labels of their own and the Pod Security level
// they set.
var kubeflowNamespaceLabels = map[string]map[string]any{
	"kubeflow":                  {"control-plane": "kubeflow", "istio-injection": "enabled", "pod-security.kubernetes.io/enforce": "restricted"},
	"kubeflow-user-example-com": {"app.kubernetes.io/part-of": "kubeflow-profile", "istio-injection": "enabled", "pod-security.kubernetes.io/enforce": "restricted"},
	"knative-serving":           {"istio-injection": "enabled", "pod-security.kubernetes.io/enforce": "restricted"},
}

// kubeflowNamespaceObjects are the Namespaces of kubeflowNamespaceLabels.
func kubeflowNamespaceObjects() []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, name := range slices.Sorted(maps.Keys(kubeflowNamespaceLabels)) {
		out = append(out, &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace",
			"metadata": map[string]any{"name": name, "labels": maps.Clone(kubeflowNamespaceLabels[name])}}})
	}
	return out
}

// kustomizations returns the Flux Kustomizations of gitops/flux for overlay
// o, with the stand-in for Kubeflow's Namespaces (and the namespace-labels
// Component of o, as the README says), kubeflow-istio-resources depending on
// it, each changed by edit (if not nil). The Kustomizations are deleted, and
// what they applied pruned, when the test ends.
func (f *flux) kustomizations(t *testing.T, o build.Overlay, edit func(*unstructured.Unstructured)) []*unstructured.Unstructured {
	t.Helper()
	dir := build.GitOpsDir + "/flux/base"
	if o.Name != build.DefaultOverlay {
		dir = build.GitOpsDir + "/flux/overlays/" + o.Name
	}
	ks, err := f.tree.BuildObjects(dir)
	if err != nil {
		t.Fatal(err)
	}
	spec := map[string]any{
		"interval": "10m", "retryInterval": "30s", "timeout": "5m", "prune": true, "wait": true,
		"sourceRef": map[string]any{"kind": "GitRepository", "name": fluxSource}, "path": "./" + kubeflowNamespaces,
	}
	if d := o.LabelsDir(); d != "" {
		spec["components"] = []any{path.Join("../..", build.KubeflowPath, d, build.LabelsComponent)}
	}
	ks = append(ks, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
		"metadata": map[string]any{"name": "kubeflow-namespaces", "namespace": fluxNamespace}, "spec": spec,
	}})
	for _, k := range ks {
		if k.GetName() == "kubeflow-istio-resources" {
			deps, _, _ := unstructured.NestedSlice(k.Object, "spec", "dependsOn")
			_ = unstructured.SetNestedSlice(k.Object, append(deps, map[string]any{"name": "kubeflow-namespaces"}), "spec", "dependsOn")
		}
		if edit != nil {
			edit(k)
		}
	}
	t.Cleanup(func() { f.deleteAll(t) })
	return ks
}

// deleteAll deletes every Kustomization and waits until the controller has
// pruned what they applied and they are gone, then until the Namespaces they
// deleted are.
func (f *flux) deleteAll(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	res := f.c.Dynamic.Resource(kustomizationsGVR).Namespace(fluxNamespace)
	list, err := res.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Errorf("list Kustomizations: %v", err)
		return
	}
	for _, k := range list.Items {
		if err := res.Delete(ctx, k.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete Kustomization/%s/%s: %v", fluxNamespace, k.GetName(), err)
		}
	}
	for _, k := range list.Items {
		waitGone(t, res, k.GetName(), false)
	}
	// A reconciliation that failed halfway applied objects its inventory
	// does not hold, and the controller does not prune them: delete them,
	// or the next installation finds them owned by another field manager.
	for _, k := range list.Items {
		dir, ok := treeDir(&k)
		if !ok {
			continue
		}
		objs, err := f.tree.BuildObjects(dir)
		if err != nil {
			continue // a removed overlay
		}
		for _, o := range objs {
			if o.GetKind() == "CustomResourceDefinition" || o.GetKind() == "Namespace" {
				continue
			}
			r, err := f.c.Resource(o)
			if err != nil {
				continue // its CRD is gone, and the object with it
			}
			live, err := r.Get(ctx, o.GetName(), metav1.GetOptions{})
			if err != nil {
				continue
			}
			if slices.ContainsFunc(live.GetManagedFields(), func(m metav1.ManagedFieldsEntry) bool { return m.Manager == fluxManager }) {
				waitGone(t, r, o.GetName(), true)
			}
		}
	}
	namespaces := f.c.Dynamic.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"})
	for name := range kubeflowNamespaceLabels {
		waitGone(t, namespaces, name, false)
	}
}

// apply applies objs server-side.
func (f *flux) apply(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		applyObject(t, f.c, o)
	}
}

// patch merges a patch into Kustomization name.
func (f *flux) patch(t *testing.T, name, patch string) {
	t.Helper()
	if _, err := f.c.Dynamic.Resource(kustomizationsGVR).Namespace(fluxNamespace).Patch(context.Background(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch Kustomization/%s/%s: %v", fluxNamespace, name, err)
	}
}

// reconcile asks the controller to reconcile Kustomization name now, as
// `flux reconcile` does, and returns the request's token.
func (f *flux) reconcile(t *testing.T, name string) string {
	t.Helper()
	token := strconv.FormatInt(time.Now().UnixNano(), 10)
	f.patch(t, name, fmt.Sprintf(`{"metadata":{"annotations":{"reconcile.fluxcd.io/requestedAt":%q}}}`, token))
	return token
}

// waitReady waits until every Kustomization of ks is Ready at the revision
// of the artifact.
func (f *flux) waitReady(t *testing.T, ks []*unstructured.Unstructured, wait time.Duration) {
	t.Helper()
	eventually(t, "every Kustomization Ready", wait, func() error {
		var notReady []string
		for _, k := range ks {
			live, err := f.get(k.GetName())
			if err != nil {
				return err
			}
			status, msg := condition(live, "Ready")
			if rev, _, _ := unstructured.NestedString(live.Object, "status", "lastAppliedRevision"); status != "True" || rev != f.revision {
				notReady = append(notReady, fmt.Sprintf("%s: Ready=%s %s", k.GetName(), status, firstLine(msg)))
			}
		}
		if len(notReady) > 0 {
			return fmt.Errorf("%s", strings.Join(notReady, "; "))
		}
		return nil
	})
}

// waitCondition waits until Kustomization name's Ready condition has status
// and a message that holds one of want.
func (f *flux) waitCondition(t *testing.T, name, status string, want ...string) {
	t.Helper()
	eventually(t, fmt.Sprintf("Kustomization %s Ready=%s with %q", name, status, want), 2*time.Minute, func() error {
		live, err := f.get(name)
		if err != nil {
			return err
		}
		s, msg := condition(live, "Ready")
		if s != status || !slices.ContainsFunc(want, func(w string) bool { return strings.Contains(msg, w) }) {
			return fmt.Errorf("Ready=%s: %s", s, msg)
		}
		return nil
	})
	live, _ := f.get(name)
	_, msg := condition(live, "Ready")
	t.Logf("Kustomization %s: %s", name, msg)
}

func (f *flux) get(name string) (*unstructured.Unstructured, error) {
	return f.c.Dynamic.Resource(kustomizationsGVR).Namespace(fluxNamespace).Get(context.Background(), name, metav1.GetOptions{})
}

// treeDir is the directory of the tree that Kustomization k applies, if it
// applies one.
func treeDir(k *unstructured.Unstructured) (string, bool) {
	p, _, _ := unstructured.NestedString(k.Object, "spec", "path")
	return strings.CutPrefix(p, "./"+build.KubeflowPath+"/")
}

// checkInventories checks that each Kustomization of the tree records in
// its inventory exactly the objects of its directory's build.
func (f *flux) checkInventories(t *testing.T, ks []*unstructured.Unstructured) {
	t.Helper()
	for _, k := range ks {
		dir, ok := treeDir(k)
		if !ok {
			continue
		}
		objs, err := f.tree.BuildObjects(dir)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, o := range objs {
			want = append(want, strings.Join([]string{o.GetNamespace(), o.GetName(), o.GroupVersionKind().Group, o.GetKind()}, "_"))
		}
		live, err := f.get(k.GetName())
		if err != nil {
			t.Fatal(err)
		}
		entries, _, _ := unstructured.NestedSlice(live.Object, "status", "inventory", "entries")
		var got []string
		for _, e := range entries {
			id, _ := e.(map[string]any)["id"].(string)
			got = append(got, id)
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("Kustomization %s: inventory %v, want the build of %s: %v", k.GetName(), got, dir, want)
		}
	}
}

// driftProblems forces a reconciliation of every Kustomization and says
// what the controller applied, and what went wrong.
func (f *flux) driftProblems(t *testing.T, ks []*unstructured.Unstructured) []string {
	t.Helper()
	changes, problems := f.forceReconcile(t, ks)
	for _, obj := range slices.Sorted(maps.Keys(changes)) {
		problems = append(problems, fmt.Sprintf("the forced reconciliation %s %s", changes[obj], obj))
	}
	return problems
}

// forceReconcile forces a reconciliation of every Kustomization and returns
// what the controller applied, by object ("Kind/namespace/name" as Flux
// writes it): each object its log does not report unchanged and each one
// its events report a change of; and the problems: a Kustomization it did
// not apply, an error event.
func (f *flux) forceReconcile(t *testing.T, ks []*unstructured.Unstructured) (map[string]string, []string) {
	t.Helper()
	logMark := fileSize(t, f.log)
	eventMark := f.events.count()
	tokens := map[string]string{}
	for _, k := range ks {
		tokens[k.GetName()] = f.reconcile(t, k.GetName())
	}
	eventually(t, "every Kustomization reconciled again", 2*time.Minute, func() error {
		for name, token := range tokens {
			live, err := f.get(name)
			if err != nil {
				return err
			}
			handled, _, _ := unstructured.NestedString(live.Object, "status", "lastHandledReconcileAt")
			if s, msg := condition(live, "Ready"); handled != token || s != "True" {
				return fmt.Errorf("%s: handled %q, Ready=%s %s", name, handled, s, firstLine(msg))
			}
		}
		return nil
	})
	changes := map[string]string{}
	var problems []string
	applied := map[string]bool{}
	for _, line := range linesSince(t, f.log, logMark) {
		var entry struct {
			Msg    string            `json:"msg"`
			Name   string            `json:"name"`
			Output map[string]string `json:"output"`
		}
		if json.Unmarshal([]byte(line), &entry) != nil || entry.Msg != "server-side apply completed" {
			continue
		}
		applied[entry.Name] = true
		for obj, action := range entry.Output {
			if action != "unchanged" {
				changes[obj] = action
			}
		}
	}
	for name := range tokens {
		if !applied[name] {
			problems = append(problems, fmt.Sprintf("Kustomization %s: the controller logged no server-side apply", name))
		}
	}
	for _, e := range f.events.since(eventMark) {
		switch {
		case e.Severity == "error":
			problems = append(problems, fmt.Sprintf("event after the forced reconciliation: %s %s: %s", e.Reason, e.Object.Name, e.Message))
		case e.Reason == "Progressing" && !strings.HasPrefix(e.Message, "Health check passed"):
			for _, line := range strings.Split(e.Message, "\n") {
				if i := strings.LastIndex(line, " "); i > 0 {
					changes[line[:i]] = line[i+1:]
				}
			}
		}
	}
	return changes, problems
}

// existingNamespaces returns the Namespaces of the stand-in and istio-system
// that exist, as Flux names them.
func (f *flux) existingNamespaces(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, name := range append(slices.Collect(maps.Keys(kubeflowNamespaceLabels)), "istio-system") {
		_, err := f.c.Kube.CoreV1().Namespaces().Get(context.Background(), name, metav1.GetOptions{})
		if err == nil {
			out["Namespace/"+name] = true
		} else if !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	return out
}

// labelProblems says where the Namespaces of Kubeflow's stand-in lack the
// labels of o's namespace-labels directory or their own.
func (f *flux) labelProblems(t *testing.T, o build.Overlay) []string {
	t.Helper()
	own := kubeflowNamespaceObjects()
	var extra []*unstructured.Unstructured
	var err error
	if d := o.LabelsDir(); d != "" {
		if extra, err = f.tree.BuildObjects(d); err != nil {
			t.Fatal(err)
		}
	}
	var problems []string
	for _, ns := range own {
		want := ns.GetLabels()
		for _, e := range extra {
			if e.GetName() == ns.GetName() {
				for k, v := range e.GetLabels() {
					want[k] = v
				}
			}
		}
		live, err := f.c.Kube.CoreV1().Namespaces().Get(context.Background(), ns.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range want {
			if live.Labels[k] != v {
				problems = append(problems, fmt.Sprintf("Namespace/%s: label %s=%q, want %q", ns.GetName(), k, live.Labels[k], v))
			}
		}
	}
	return problems
}

// fluxEvents records the events the controller sends, as
// notification-controller would receive them.
type fluxEvents struct {
	mu     sync.Mutex
	events []fluxEvent
}

type fluxEvent struct {
	Object   struct{ Name string } `json:"involvedObject"`
	Severity string                `json:"severity"`
	Reason   string                `json:"reason"`
	Message  string                `json:"message"`
}

func (e *fluxEvents) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var ev fluxEvent
	if err := json.NewDecoder(r.Body).Decode(&ev); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	e.mu.Lock()
	e.events = append(e.events, ev)
	e.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

func (e *fluxEvents) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.events)
}

func (e *fluxEvents) since(i int) []fluxEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.events[i:])
}

// applyObject applies o server-side as the test's field manager.
func applyObject(t *testing.T, c *kube.Client, o *unstructured.Unstructured) {
	t.Helper()
	res, err := c.Resource(o)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(o.Object)
	if _, err := res.Patch(context.Background(), o.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: fieldManager, Force: ptr(true)}); err != nil {
		t.Fatalf("apply %s: %v", object.Key(o), err)
	}
}

// deleteIstioCRDs deletes the CRDs of the tree and waits until they are
// gone.
func deleteIstioCRDs(t *testing.T) {
	t.Helper()
	c, _ := connect(t)
	objs := objects(t, nil, build.Installation{Overlay: build.DefaultOverlay})
	res := c.Dynamic.Resource(crdGVR)
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" {
			waitGone(t, res, o.GetName(), true)
		}
	}
}

// waitGone waits until the object name of res is gone, deleting it first
// when del is set.
func waitGone(t *testing.T, res dynamic.ResourceInterface, name string, del bool) {
	t.Helper()
	ctx := context.Background()
	if del {
		if err := res.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete %s: %v", name, err)
			return
		}
	}
	eventually(t, name+" gone", 2*time.Minute, func() error {
		_, err := res.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err == nil {
			return fmt.Errorf("still there")
		}
		return err
	})
}

// condition returns the status and message of condition typ of o.
func condition(o *unstructured.Unstructured, typ string) (string, string) {
	conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == typ {
			s, _ := m["status"].(string)
			msg, _ := m["message"].(string)
			return s, msg
		}
	}
	return "", ""
}

// eventually polls check until it returns nil, and fails t with its last
// error after wait.
func eventually(t *testing.T, what string, wait time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %v", what, wait, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func fileSize(t *testing.T, name string) int64 {
	t.Helper()
	st, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// linesSince returns the lines of file name from offset on.
func linesSince(t *testing.T, name string, offset int64) []string {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	var out []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 16<<20)
	for s.Scan() {
		out = append(out, s.Text())
	}
	return out
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

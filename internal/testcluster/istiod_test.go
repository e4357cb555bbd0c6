package testcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// previousRelease is the Istio release of Kubeflow's previous Istio tree,
// whose istiod and render hack/build-istiod.sh builds into
// _output/bin/istio-1.26.1.
const previousRelease = "1.26.1"

// Two istiods of different releases run side by side, each with the binary of
// its release: the default istiod of Istio 1.26.1, rendered by that release's
// render, and the revision 1-29-1 of the pinned release, with a revision tag.
// Each is reached through its own Services, writes the CA bundles of its own
// webhooks and validates the config of its revision; neither logs an error.
// The test has a cluster of its own, which goes with everything in it when
// the test ends.
func TestIstiodsOfTwoReleases(t *testing.T) {
	bin, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	previous := renderPrevious(t, bin)
	current := renderCurrent(t, root)

	c, ctx := start(t)
	if err := c.AddNodes(ctx, Node{Name: "node-a"}); err != nil {
		t.Fatal(err)
	}
	if err := c.RunIstiod(); err != nil {
		t.Fatal(err)
	}
	kc, err := kube.Connect(ctx, kube.Options{Kubeconfig: c.Kubeconfig})
	if err != nil {
		t.Fatal(err)
	}
	mark := c.IstiodLogMark()
	// istio-system without a Pod Security label admits istiod's pods as the
	// renders make them.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: IstiodNamespace}}
	if _, err := kc.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// As kfistio installs: the CRDs first, then each control plane, its
	// webhooks once its istiod is ready, config validation failing closed
	// from the start (manifests/istio-install/base/patches/
	// validating-webhook.yaml; with upstream's Ignore, istiod's first check of
	// its validator fails and it logs "webhook is not ready, retry" as an
	// error).
	crds, current := split(current, "CustomResourceDefinition")
	apply(ctx, t, kc, crds)
	for _, crd := range crds {
		waitFor(ctx, t, "CustomResourceDefinition/"+crd.GetName()+" established", func() error { return established(ctx, kc, crd.GetName()) })
	}
	kc.ResetDiscovery()
	for _, cp := range []struct {
		deployment string
		objs       []*unstructured.Unstructured
	}{{IstiodName, previous}, {"istiod-1-29-1", current}} {
		webhooks, rest := split(cp.objs, "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
		apply(ctx, t, kc, rest)
		if err := c.WaitIstiodOf(ctx, cp.deployment); err != nil {
			t.Fatal(err)
		}
		for _, w := range webhooks {
			failClosed(t, w)
		}
		apply(ctx, t, kc, webhooks)
	}

	for svc, release := range map[string]string{
		IstiodName:                   previousRelease,
		"istiod-1-29-1":              upstream.Release,
		"istiod-revision-tag-canary": upstream.Release,
	} {
		if v := version(ctx, t, c, svc); !strings.HasPrefix(v, release+"-") {
			t.Errorf("Service %s reaches istiod %q, want %s", svc, v, release)
		}
	}
	for _, w := range []struct{ resource, name string }{
		{"mutatingwebhookconfigurations", "istio-sidecar-injector"},
		{"mutatingwebhookconfigurations", "istio-sidecar-injector-1-29-1"},
		{"mutatingwebhookconfigurations", "istio-revision-tag-canary"},
		{"validatingwebhookconfigurations", "istio-validator-istio-system"},
		{"validatingwebhookconfigurations", "istio-validator-1-29-1-istio-system"},
	} {
		waitFor(ctx, t, "CA bundle of "+w.resource+"/"+w.name, func() error { return caBundles(ctx, kc, w.resource, w.name) })
	}
	// Each validating webhook selects the config of its revision alone.
	for _, rev := range []string{"default", "1-29-1"} {
		waitFor(ctx, t, "the validator of revision "+rev+" refusing an invalid VirtualService", func() error { return refused(ctx, kc, rev) })
	}

	// Without its pod, an istiod stops and its Services go; the other one
	// runs on.
	addr, err := c.ServiceAddress(ctx, IstiodNamespace, "istiod-1-29-1", "http-monitoring")
	if err != nil {
		t.Fatal(err)
	}
	if err := kc.Kube.AppsV1().Deployments(IstiodNamespace).Delete(ctx, "istiod-1-29-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "Service istiod-1-29-1 gone with its pod", func() error {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return nil
		}
		_ = conn.Close()
		return errors.New("it still answers")
	})
	if v := version(ctx, t, c, IstiodName); !strings.HasPrefix(v, previousRelease+"-") {
		t.Errorf("Service %s reaches istiod %q, want %s", IstiodName, v, previousRelease)
	}

	for _, l := range c.IstiodErrors(mark) {
		t.Errorf("istiod logged an error: %s", l)
	}
	if t.Failed() {
		t.Log(c.IstiodLogSince(mark))
	}
}

// split splits objs into those of the kinds given and the others.
func split(objs []*unstructured.Unstructured, kinds ...string) (of, others []*unstructured.Unstructured) {
	for _, o := range objs {
		if slices.Contains(kinds, o.GetKind()) {
			of = append(of, o)
		} else {
			others = append(others, o)
		}
	}
	return of, others
}

// failClosed sets failurePolicy Fail on the webhooks of a
// ValidatingWebhookConfiguration.
func failClosed(t *testing.T, o *unstructured.Unstructured) {
	t.Helper()
	if o.GetKind() != "ValidatingWebhookConfiguration" {
		return
	}
	hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
	for _, h := range hooks {
		h.(map[string]any)["failurePolicy"] = "Fail"
	}
	if err := unstructured.SetNestedSlice(o.Object, hooks, "webhooks"); err != nil {
		t.Fatal(err)
	}
}

// renderPrevious renders the default istiod of previousRelease with that
// release's render, CRDs aside.
func renderPrevious(t *testing.T, bin string) []*unstructured.Unstructured {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "istio-"+previousRelease, "render"),
		"-f", filepath.Join("testdata", "istio-"+previousRelease+".yaml"),
		"--set", "tag="+previousRelease, "--set", "components.cni.enabled=false", "--set", "values.defaultRevision=")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v (run hack/build-istiod.sh)", cmd, err)
	}
	objs, err := object.Parse("render "+previousRelease, out)
	if err != nil {
		t.Fatal(err)
	}
	_, objs = split(objs, "CustomResourceDefinition")
	object.Sort(objs)
	return objs
}

// renderCurrent renders the revision 1-29-1 of the pinned release from the
// tree's inputs, with the revision tag canary: the CRDs and istiod's objects.
// The gateways are left out by their component label; istiod's objects
// cannot be picked by theirs, which the renderer leaves off some of them (its
// ClusterRoles, for one).
func renderCurrent(t *testing.T, root string) []*unstructured.Unstructured {
	t.Helper()
	r, err := upstream.NewRenderer()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	out, err := r.Render(upstream.Inputs{
		Files: []string{filepath.Join(root, "upstream", "profile.yaml"), filepath.Join(root, "upstream", "overlay.yaml")},
		Set:   []string{"revision=1-29-1", "components.cni.enabled=false", "values.defaultRevision=", "values.revisionTags[0]=canary"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var keep []*unstructured.Unstructured
	for _, o := range out.Objects {
		if o.GetLabels()["operator.istio.io/component"] != "IngressGateways" {
			keep = append(keep, o)
		}
	}
	return keep
}

// apply applies objs in order, server-side.
func apply(ctx context.Context, t *testing.T, kc *kube.Client, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		ri, err := kc.Resource(o)
		if err == nil {
			_, err = ri.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: "testcluster", Force: true})
		}
		if err != nil {
			t.Fatalf("apply %s: %v", object.Key(o), err)
		}
	}
}

// waitFor polls check until it returns nil.
func waitFor(ctx context.Context, t *testing.T, what string, check func() error) {
	t.Helper()
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v (%v)", what, err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// established checks that a CRD is established.
func established(ctx context.Context, kc *kube.Client, name string) error {
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	crd, err := kc.Dynamic.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		if c, ok := c.(map[string]any); ok && c["type"] == "Established" && c["status"] == "True" {
			return nil
		}
	}
	return fmt.Errorf("not established: %v", conds)
}

// version returns what the istiod behind Service svc says its version is.
func version(ctx context.Context, t *testing.T, c *Cluster, svc string) string {
	t.Helper()
	addr, err := c.ServiceAddress(ctx, IstiodNamespace, svc, "http-monitoring")
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/version", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("Service %s: %v", svc, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("Service %s: %v", svc, err)
	}
	return string(b)
}

// caBundles checks that every webhook of a webhook configuration (resource
// mutatingwebhookconfigurations or validatingwebhookconfigurations) has a CA
// bundle.
func caBundles(ctx context.Context, kc *kube.Client, resource, name string) error {
	gvr := schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: resource}
	o, err := kc.Dynamic.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
	if len(hooks) == 0 {
		return fmt.Errorf("no webhooks")
	}
	for _, h := range hooks {
		if ca, _, _ := unstructured.NestedString(h.(map[string]any), "clientConfig", "caBundle"); ca == "" {
			return fmt.Errorf("webhook %s has no CA bundle", h.(map[string]any)["name"])
		}
	}
	return nil
}

// refused checks that a dry-run create of a VirtualService of revision rev
// (label istio.io/rev) whose HTTP route has no destination is denied by a
// validating webhook: the one of that revision, whose object selector alone
// selects it.
func refused(ctx context.Context, kc *kube.Client, rev string) error {
	vs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1",
		"kind":       "VirtualService",
		"metadata":   map[string]any{"name": "invalid", "namespace": "default", "labels": map[string]any{"istio.io/rev": rev}},
		"spec": map[string]any{
			"hosts": []any{"example.default.svc.cluster.local"},
			"http":  []any{map[string]any{"match": []any{map[string]any{"uri": map[string]any{"prefix": "/"}}}}},
		},
	}}
	gvr := schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}
	_, err := kc.Dynamic.Resource(gvr).Namespace("default").Create(ctx, vs, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	switch {
	case err == nil:
		return fmt.Errorf("accepted")
	case !strings.Contains(err.Error(), `admission webhook "rev.validation.istio.io" denied the request`):
		return err
	}
	return nil
}

// The binary of an istiod is the pilot-discovery of its image's release:
// the pinned one's in bin, another's in bin/istio-RELEASE, none for a release
// that is not built.
func TestIstiodBinary(t *testing.T) {
	bin := t.TempDir()
	for _, dir := range []string{bin, filepath.Join(bin, "istio-1.26.1")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, istiodBinaryName), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct{ image, release, dir, err string }{
		{image: "gcr.io/istio-release/pilot:" + upstream.Release, release: upstream.Release, dir: bin},
		{image: "gcr.io/istio-release/pilot:1.26.1", release: "1.26.1", dir: filepath.Join(bin, "istio-1.26.1")},
		{image: "localhost:5000/pilot:1.26.1-distroless@sha256:0123", release: "1.26.1", dir: filepath.Join(bin, "istio-1.26.1")},
		{image: "gcr.io/istio-release/pilot:1.27.0", err: "no pilot-discovery of Istio 1.27.0"},
		{image: "gcr.io/istio-release/pilot", err: "has no tag"},
	} {
		release, dir, err := istiodBinary(bin, c.image)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want %q", c.image, err, c.err)
			}
			continue
		}
		if err != nil || release != c.release || dir != c.dir {
			t.Errorf("%s: %s, %s, %v; want %s, %s", c.image, release, dir, err, c.release, c.dir)
		}
	}
}

// An istiod's errors count but for those it logs while the harness stops it
// (its pod is gone), until it starts again.
func TestErrorLines(t *testing.T) {
	log := strings.Join([]string{
		"2026-12-07T00:50:00Z\tharness\t" + startingNote + "pilot-discovery of Istio 1.26.1",
		"2026-12-07T00:50:01Z\terror\tads\tpush failed",
		"2026-12-07T00:50:02Z\tinfo\tads\tpushed",
		"2026-12-07T00:51:09Z\tharness\t" + stoppingNote + "pilot-discovery of Pod/istio-system/istiod-1-26-1-a, whose pod is gone",
		"2026-12-07T00:51:09Z\terror\tklog\tFailed to update lock: client rate limiter Wait returned an error: context canceled",
		"2026-12-07T00:52:00Z\tharness\t" + startingNote + "pilot-discovery of Istio 1.26.1",
		"2026-12-07T00:52:01Z\tfatal\tcould not start",
	}, "\n")
	want := []string{"2026-12-07T00:50:01Z\terror\tads\tpush failed", "2026-12-07T00:52:01Z\tfatal\tcould not start"}
	if got := errorLines(log); !slices.Equal(got, want) {
		t.Errorf("errorLines = %q, want %q", got, want)
	}
}

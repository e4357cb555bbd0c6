package upgrade

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/doctor"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/testcluster"
	"github.com/kubeflow/kfistio/internal/testutil"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// cluster is the real control plane the tests of this package share, with
// the real istiod of each release running whenever a Deployment of it is
// installed. The tests run one after another, each leaving the cluster as it
// found it.
var cluster *testcluster.Cluster

func TestMain(m *testing.M) {
	os.Exit(testcluster.Main(m, []testcluster.Node{{Name: "node-a"}, {Name: "node-b"}}, func(c *testcluster.Cluster) error {
		cluster = c
		return c.RunIstiod()
	}))
}

// upgrader connects to the test cluster, counting requests.
func upgrader(t *testing.T) (*Upgrader, *kube.RequestCounter) {
	t.Helper()
	counter := &kube.RequestCounter{}
	c, err := kube.Connect(context.Background(), kube.Options{Kubeconfig: cluster.Kubeconfig, WrapTransport: counter.Wrap})
	if err != nil {
		t.Fatal(err)
	}
	return &Upgrader{In: &install.Installer{Client: c}}, counter
}

// options upgrades to the oauth2-proxy overlay as the tree's revision.
func options(t *testing.T) Options {
	t.Helper()
	tree, err := build.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	in := build.DefaultInstallation(build.DefaultOverlay)
	in.Revision = upstream.Revision
	objs, labels, err := tree.InstallationParts(in)
	if err != nil {
		t.Fatal(err)
	}
	return Options{Installation: in, Objects: objs, NamespaceLabels: labels, Timeout: 3 * time.Minute, Version: "test"}
}

const (
	previous = testcluster.PreviousRelease
	profile  = "kubeflow-user-example-com"
	canary   = "canary"
)

func kubectl(t *testing.T, args ...string) {
	t.Helper()
	if _, err := cluster.Kubectl(args...); err != nil {
		t.Fatal(err)
	}
}

// applyKubeflow applies Kubeflow's Istio tree of the previous release as its
// users do (server-side, CRDs first), with the control plane as revision rev
// ("" for the default one), and waits until its istiod serves. The cleanup
// removes whatever the test left of it and of the upgrade.
func applyKubeflow(t *testing.T, rev string) {
	t.Helper()
	crds, rest, err := testcluster.PreviousKubeflow(rev)
	if err != nil {
		t.Fatal(err)
	}
	crdFile, restFile := testutil.WriteYAML(t, "objects.yaml", crds), testutil.WriteYAML(t, "objects.yaml", rest)
	t.Cleanup(func() { wipe(t, restFile) })
	kubectl(t, "apply", "--server-side", "-f", crdFile)
	kubectl(t, "wait", "--for", "condition=established", "--timeout", "60s", "-f", crdFile)
	kubectl(t, "apply", "--server-side", "-f", restFile)
	names := revision.NamesOf(rev)
	waitIstiod(t, names.Istiod)
	// Settled once istiod has let its validator fail closed.
	kubectl(t, "wait", "--for=jsonpath={.webhooks[0].failurePolicy}=Fail", "--timeout=2m", "validatingwebhookconfiguration/"+names.Validator)
}

// waitIstiod waits until the istiod of Deployment name serves and has
// written the CA bundles of its webhooks.
func waitIstiod(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := cluster.WaitIstiodOf(ctx, name); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// wipe removes what a test made: kfistio's installation with its CRDs, the
// objects of the previous release's tree and of the new revision, the test
// namespaces; and waits until they are gone.
func wipe(t *testing.T, files ...string) {
	t.Helper()
	u, _ := upgrader(t)
	ctx := context.Background()
	if _, err := u.In.Uninstall(ctx, install.UninstallOptions{Purge: true, Confirm: true, Timeout: 2 * time.Minute}); err != nil && !errors.Is(err, install.ErrNotInstalled) {
		t.Errorf("uninstall: %v", err)
	}
	rev := testutil.WriteYAML(t, "objects.yaml", options(t).Objects)
	for _, f := range append(files, rev) {
		// Objects whose CRDs are gone are gone too.
		if out, err := cluster.Kubectl("delete", "--ignore-not-found", "--wait=false", "-f", f); err != nil &&
			!onlyUnmapped(out) {
			t.Errorf("cleanup: %v", err)
		}
	}
	kc := u.In.Client.Kube
	for _, ns := range []string{profile, canary, revision.Namespace, "kubeflow"} {
		if err := kc.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("cleanup: %v", err)
		}
	}
	crds := u.In.Client.Dynamic.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	list, err := crds.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list.Items {
		if strings.HasSuffix(c.GetName(), "istio.io") {
			_ = crds.Delete(ctx, c.GetName(), metav1.DeleteOptions{})
		}
	}
	deadline := time.Now().Add(3 * time.Minute)
	for _, ns := range []string{profile, canary, revision.Namespace, "kubeflow"} {
		for time.Now().Before(deadline) {
			if _, err := kc.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for _, name := range []string{"istio-cni-node"} {
		for time.Now().Before(deadline) {
			if _, err := kc.AppsV1().DaemonSets("kube-system").Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// onlyUnmapped reports whether every complaint of a kubectl delete is about
// a kind the cluster no longer serves.
func onlyUnmapped(out string) bool {
	for _, l := range strings.Split(out, "\n") {
		if l != "" && !strings.HasSuffix(l, " deleted") && !strings.HasPrefix(l, "resource mapping not found") && l != "ensure CRDs are installed first" {
			return false
		}
	}
	return true
}

// namespace creates a namespace with labels (Pod Security privileged: the
// previous release injects no seccomp profile).
func namespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	u, _ := upgrader(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := u.In.Client.Kube.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// workload creates a Deployment of one pod in ns and returns its pod once it
// runs.
func workload(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	create(t, fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      containers:
      - {name: app, image: registry.example/app:1}
`, name, ns))
	return runningPod(t, ns, "app="+name)
}

// create creates the object of the YAML document doc.
func create(t *testing.T, doc string) {
	t.Helper()
	u, _ := upgrader(t)
	o := parse(t, doc)
	res, err := u.In.Client.Resource(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := res.Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// runningPod waits until the newest pod that selector selects in ns runs.
func runningPod(t *testing.T, ns, selector string) *corev1.Pod {
	t.Helper()
	u, _ := upgrader(t)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pods, err := u.In.Client.Kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			t.Fatal(err)
		}
		var running []corev1.Pod
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
				running = append(running, p)
			}
		}
		if len(running) == 1 {
			return &running[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no single running pod %s in %s: %d pods, %d running", selector, ns, len(pods.Items), len(running))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// proxyOf returns the release of the proxy of p and the revision that made
// it; "" when it has none.
func proxyOf(p *corev1.Pod) (release, rev string) {
	for _, c := range append(slices.Clone(p.Spec.InitContainers), p.Spec.Containers...) {
		if c.Name == "istio-proxy" {
			_, tag := object.SplitImage(c.Image)
			return tag, doctor.PodRevision(p)
		}
	}
	return "", ""
}

// expectProxy fails unless p runs the proxy of release, injected for rev.
func expectProxy(t *testing.T, p *corev1.Pod, release, rev string) {
	t.Helper()
	if gotRelease, gotRev := proxyOf(p); gotRelease != release || gotRev != rev {
		t.Errorf("Pod/%s/%s runs proxy %q of revision %q, want %s of %s", p.Namespace, p.Name, gotRelease, gotRev, release, rev)
	}
}

// newPod creates a pod in ns, as a ReplicaSet would, and returns it as the
// API server stored it (after the injection webhooks).
func newPod(ctx context.Context, c *kube.Client, ns string) (*corev1.Pod, error) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-", Namespace: ns, Labels: map[string]string{"app": "probe"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}},
	}
	return c.Kube.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
}

var virtualServices = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}

// invalidVirtualService is refused by istiod's validation: a route without
// a destination.
func invalidVirtualService(labels map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
		"metadata": map[string]any{"generateName": "invalid-", "namespace": "kubeflow", "labels": labels},
		"spec":     map[string]any{"hosts": []any{"x.example.com"}, "http": []any{map[string]any{"route": []any{}}}},
	}}
}

// validationLabels are the label sets of Istio config a validator must see:
// none, the default revision, the new one.
var validationLabels = []map[string]any{nil, {revision.Label: revision.Default}, {revision.Label: upstream.Revision}}

// refused reports whether istiod refuses an invalid VirtualService with
// labels (a dry run).
func refused(ctx context.Context, c *kube.Client, labels map[string]any) (bool, error) {
	_, err := c.Dynamic.Resource(virtualServices).Namespace("kubeflow").Create(ctx, invalidVirtualService(labels), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	switch {
	case err == nil:
		return false, nil
	case strings.Contains(err.Error(), "denied the request"):
		return true, nil
	}
	return false, err
}

// expectValidated fails unless invalid Istio config is refused with every
// label set.
func expectValidated(t *testing.T, when string) {
	t.Helper()
	u, _ := upgrader(t)
	for _, l := range validationLabels {
		if ok, err := refused(context.Background(), u.In.Client, l); !ok {
			t.Errorf("%s: an invalid VirtualService labelled %v is not refused: %v", when, l, err)
		}
	}
}

// watch creates pods in ns and dry runs of invalid Istio config with each
// of labels, one after the other, until stop is called: every pod must come
// out injected, every invalid config refused, whatever the step under way. stop returns what
// went wrong, and how many of each it tried.
func watch(t *testing.T, ns string, labels ...map[string]any) (stop func() (problems []string, pods, configs int)) {
	t.Helper()
	u, _ := upgrader(t)
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var problems []string
	var npods, nconfigs atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			p, err := newPod(ctx, u.In.Client, ns)
			if ctx.Err() != nil {
				return
			}
			npods.Add(1)
			mu.Lock()
			if err != nil {
				problems = append(problems, "pod refused: "+err.Error())
			} else if r, _ := proxyOf(p); r == "" {
				problems = append(problems, "pod not injected")
			}
			mu.Unlock()
			time.Sleep(50 * time.Millisecond)
		}
	}()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			l := labels[rand.IntN(len(labels))]
			ok, err := refused(ctx, u.In.Client, l)
			if ctx.Err() != nil {
				return
			}
			nconfigs.Add(1)
			if !ok {
				mu.Lock()
				problems = append(problems, fmt.Sprintf("invalid config labelled %v accepted: %v", l, err))
				mu.Unlock()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return func() ([]string, int, int) {
		cancel()
		wg.Wait()
		return problems, int(npods.Load()), int(nconfigs.Load())
	}
}

func ref(apiVersion, kind, ns, name string) *unstructured.Unstructured {
	return install.Ref{APIVersion: apiVersion, Kind: kind, Namespace: ns, Name: name}.Stub()
}

// upstreamErrors are error lines that istiod logs, through client-go's
// leader election, when its leader electors hand over or stop: two istiods of
// different revisions compete for the same locks, the default revision
// takes them over (Istio's prioritized leader election), and each istiod
// restarts its electors when the default revision changes or stops them when
// its pod goes. They are not the upgrade's doing, and each names its issue.
var upstreamErrors = []upstreamError{
	// The elector's context is cancelled while it renews: the renewal fails,
	// and the release that follows has no lock to release.
	{regexp.MustCompile(`\tklog\terror retrieving resource lock istio-system/istio-[a-z-]+: .*(context canceled|would exceed context deadline)$`), "kubernetes/client-go#966"},
	{regexp.MustCompile(`\tklog\tFailed to release lock: resource name may not be empty$`), "kubernetes/client-go#966"},
	// The other revision's istiod took the lock over before this one
	// released it.
	{regexp.MustCompile(`\tklog\tFailed to release lock: Operation cannot be fulfilled on (configmaps|leases.coordination.k8s.io) "istio-[a-z-]+": the object has been modified`), "istio/istio#47792"},
}

type upstreamError struct {
	re    *regexp.Regexp
	issue string
}

// istiodErrors fails on the error lines istiod logged since mark, but for
// upstreamErrors, which it logs.
func istiodErrors(t *testing.T, mark testcluster.LogMark, when string) {
	t.Helper()
	var errs []string
	for _, l := range cluster.IstiodErrors(mark) {
		if i := slices.IndexFunc(upstreamErrors, func(u upstreamError) bool { return u.re.MatchString(l) }); i >= 0 {
			t.Logf("%s: istiod logged, as it does upstream (%s): %s", when, upstreamErrors[i].issue, l)
			continue
		}
		errs = append(errs, l)
	}
	if len(errs) > 0 {
		t.Errorf("%s: istiod logged errors:\n%s", when, strings.Join(errs, "\n"))
	}
}

// deployment returns a Deployment of istio-system, nil when absent.
func deployment(t *testing.T, name string) *unstructured.Unstructured {
	t.Helper()
	u, _ := upgrader(t)
	d, err := u.In.Client.Dynamic.Resource(schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}).Namespace(revision.Namespace).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// imageOf is the image of container c of the pod template of o.
func imageOf(t *testing.T, o *unstructured.Unstructured, c string) string {
	t.Helper()
	tpl, err := object.PodTemplate(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, ctr := range tpl.Spec.Containers {
		if ctr.Name == c {
			return ctr.Image
		}
	}
	return ""
}

// text is the change set as kfistio prints it, for messages.
func text(cs install.ChangeSet) string {
	var b bytes.Buffer
	for _, c := range cs {
		fmt.Fprintf(&b, "%s %s %s\n", c.Object, c.Action, c.Note)
	}
	return b.String()
}

// expectRevisions compares the control planes of the cluster with want: by
// revision, "RELEASE[ default] N pods".
func expectRevisions(t *testing.T, when string, want map[string]string) {
	t.Helper()
	u, _ := upgrader(t)
	revs, err := Revisions(context.Background(), u.In)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range revs {
		s := r.Release
		if r.Default {
			s += " default"
		}
		got[r.Revision] = fmt.Sprintf("%s %d pods", s, r.Pods)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: revisions %v, want %v", when, got, want)
	}
}

// interrupted returns a context that is cancelled as soon as o exists, as
// when a step is stopped (Ctrl-C, a lost connection) after it began to
// write.
func interrupted(t *testing.T, o *unstructured.Unstructured) context.Context {
	t.Helper()
	u, _ := upgrader(t)
	res, err := u.In.Client.Resource(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		defer cancel()
		for ctx.Err() == nil {
			if _, err := res.Get(ctx, o.GetName(), metav1.GetOptions{}); err == nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return ctx
}

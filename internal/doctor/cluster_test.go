package doctor

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/testcluster"
)

// The control plane of the cluster tests starts when a test first needs
// it, so that the workload tests and the fuzz targets run without it.
var (
	clusterOnce sync.Once
	cluster     *testcluster.Cluster
	client      *kube.Client
	clusterErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if cluster != nil {
		if code != 0 {
			fmt.Fprintln(os.Stderr, cluster.Logs())
		}
		_ = cluster.Stop()
		_ = os.RemoveAll(cluster.Dir)
	}
	os.Exit(code)
}

// liveCluster starts, once, a control plane with two fake nodes that runs
// the real istiod once it is installed.
func liveCluster(t *testing.T) {
	t.Helper()
	clusterOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kfistio-doctor-")
		if err != nil {
			clusterErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if cluster, clusterErr = testcluster.Start(ctx, dir); clusterErr != nil {
			return
		}
		if clusterErr = cluster.AddNodes(ctx, testcluster.Node{Name: "node-a"}, testcluster.Node{Name: "node-b"}); clusterErr != nil {
			return
		}
		if client, clusterErr = kube.Connect(ctx, kube.Options{Kubeconfig: cluster.Kubeconfig}); clusterErr != nil {
			return
		}
		clusterErr = cluster.RunIstiod()
	})
	if clusterErr != nil {
		t.Fatalf("cluster tests cannot run: %v", clusterErr)
	}
}

// installed installs the default overlay until the test ends.
func installed(t *testing.T) {
	t.Helper()
	installOverlay(t, "oauth2-proxy")
	t.Cleanup(func() {
		if _, err := (&install.Installer{Client: client}).Uninstall(context.Background(), install.UninstallOptions{Timeout: 2 * time.Minute}); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
}

// installOverlay installs overlay; istiod, which the cluster runs, writes
// its webhooks' CA bundles (install waits for them).
func installOverlay(t *testing.T, overlay string) {
	t.Helper()
	ctx := context.Background()
	tree, err := build.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	inst := build.DefaultInstallation(overlay)
	objs, err := tree.InstallationObjects(inst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&install.Installer{Client: client}).Install(ctx, install.Options{Installation: inst, Objects: objs, Timeout: 2 * time.Minute}); err != nil {
		t.Fatal(err)
	}
}

func check(t *testing.T) *Report {
	t.Helper()
	r, err := CheckCluster(context.Background(), client, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ids(r *Report) []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, f.ID+" "+f.Object)
	}
	return out
}

func hasFinding(r *Report, id, object, reason string) bool {
	return slices.ContainsFunc(r.Findings, func(f Finding) bool {
		return f.ID == id && f.Object == object && strings.Contains(f.Reason, reason)
	})
}

func applyDocs(t *testing.T, doc string) {
	t.Helper()
	files, err := ReadFiles([]string{"-"}, strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range files[0].Docs {
		res, err := client.Resource(d.Object)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := d.Object.MarshalJSON()
		if _, err := res.Patch(context.Background(), d.Object.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: "test", Force: ptr(true)}); err != nil {
			t.Fatal(err)
		}
	}
}

// deleteNamespace deletes namespace name and waits until it is gone, so
// that a later test can create it again.
func deleteNamespace(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	if err := client.Kube.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete namespace %s: %v", name, err)
		return
	}
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := client.Kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Errorf("namespace %s is not gone: %v", name, err)
	}
}

// A clean install has no warnings or errors; each broken state that follows shows as
// its finding.
func TestCluster(t *testing.T) {
	liveCluster(t)
	ctx := context.Background()
	if r := check(t); !slices.Equal(ids(r), []string{"KF100 Deployment/istio-system/istiod"}) {
		t.Errorf("before install: %v", ids(r))
	}
	installed(t)
	// Istio's analyzers note, as information, the namespaces without
	// injection (IST0102); nothing else.
	if r := check(t); len(r.Worst(Warning)) > 0 {
		t.Fatalf("clean install: %v", ids(r))
	}

	t.Run("CNI agent not ready on a node", func(t *testing.T) {
		// A node no kubelet serves: the agent's pod there never runs. The
		// taint keeps other pods away; the agent tolerates it.
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "node-lost", Labels: map[string]string{"kubernetes.io/os": "linux"}},
			Spec:       corev1.NodeSpec{Taints: []corev1.Taint{{Key: "lost", Effect: corev1.TaintEffectNoSchedule}}},
		}
		if _, err := client.Kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = client.Kube.CoreV1().Nodes().Delete(ctx, "node-lost", metav1.DeleteOptions{}) }()
		deadline := time.Now().Add(30 * time.Second)
		for {
			r := check(t)
			if hasFinding(r, CNINotReady, "DaemonSet/kube-system/istio-cni-node", "node node-lost") {
				for _, f := range r.Findings {
					if f.ID == CNINotReady && !strings.Contains(f.Reason, "node-lost") {
						t.Errorf("finding for a healthy node: %s", f.Reason)
					}
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("findings %v", ids(r))
			}
			time.Sleep(500 * time.Millisecond)
		}
	})

	t.Run("pods from before an upgrade, pods stuck in istio-validation", func(t *testing.T) {
		applyDocs(t, `apiVersion: v1
kind: Namespace
metadata:
  name: apps
---
apiVersion: v1
kind: Pod
metadata:
  name: old-proxy
  namespace: apps
spec:
  containers:
  - name: app
    image: registry.example.com/app:1
  - name: istio-proxy
    image: gcr.io/istio-release/proxyv2:1.28.3
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: old-deployment
  namespace: apps
spec:
  replicas: 2
  selector:
    matchLabels: {app: old}
  template:
    metadata:
      labels: {app: old}
    spec:
      containers:
      - name: app
        image: registry.example.com/app:1
      - name: istio-proxy
        image: gcr.io/istio-release/proxyv2:1.28.3
`)
		defer func() {
			// No kubelet serves node-gone: the stuck pod goes only when forced.
			_ = client.Kube.CoreV1().Pods("apps").Delete(ctx, "stuck", metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
			deleteNamespace(t, "apps")
		}()
		// A pod whose istio-validation keeps failing, as when the CNI agent
		// did not configure it; bound to a node kwok does not serve, so that
		// its status stays as written.
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "stuck", Namespace: "apps"},
			Spec: corev1.PodSpec{
				NodeName:       "node-gone",
				InitContainers: []corev1.Container{{Name: "istio-validation", Image: "gcr.io/istio-release/proxyv2:1.29.1"}},
				Containers:     []corev1.Container{{Name: "app", Image: "registry.example.com/app:1"}},
			},
		}
		created, err := client.Kube.CoreV1().Pods("apps").Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status.Phase = corev1.PodPending
		created.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "istio-validation", RestartCount: 4,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}}}
		if _, err := client.Kube.CoreV1().Pods("apps").UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		r := check(t)
		if !hasFinding(r, OutdatedProxy, "Pod/apps/old-proxy", "proxy runs 1.28.3 but istiod runs 1.29.1") {
			t.Errorf("no outdated proxy: %v", ids(r))
		}
		// What install prints after an upgrade: the same pods, with what
		// to run; the pod without a proxy is not among them.
		// The Deployment's pods, found through its ReplicaSet, are one
		// workload with one command.
		var stale []StaleWorkload
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
			stale, err = StaleProxies(ctx, client, "1.29.1")
			if err != nil {
				t.Fatal(err)
			}
			if len(stale) == 2 && len(stale[0].Pods) == 2 || time.Now().After(deadline) {
				break
			}
		}
		if len(stale) != 2 || stale[0].Workload != "Deployment/apps/old-deployment" || len(stale[0].Pods) != 2 ||
			stale[0].Restart != "kubectl rollout restart -n apps deployment/old-deployment" ||
			stale[1].Workload != "Pod/apps/old-proxy" || stale[1].Proxy != "1.28.3" ||
			stale[1].Restart != "kubectl get pod -n apps old-proxy -o yaml | kubectl replace --force -f -" {
			t.Errorf("stale proxies %+v", stale)
		}
		if !hasFinding(r, StuckInit, "Pod/apps/stuck", "stuck in istio-validation: it keeps failing") {
			t.Errorf("no stuck pod: %v", ids(r))
		}
	})

	// Istio's ServiceAssociationAnalyzer runs one namespace at a time
	// (combinedAnalyzers): it still sees the Services of the Deployment's
	// namespace, and those of another namespace still do not count.
	// The analyzers read the slim copies of the pods doctor lists (slimPod):
	// still enough to see which pods run the proxy and as which user.
	t.Run("the analyzers read the pods' proxies and users", func(t *testing.T) {
		defer deleteNamespace(t, "team-pods")
		pod := func(name string) string {
			return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: team-pods}
spec: {containers: [{name: app, image: registry.example.com/app:1, securityContext: {runAsUser: 1337}}]}
`, name)
		}
		// Created before the namespace is labelled for injection, the first
		// pod runs without a proxy; the second is injected.
		applyDocs(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-pods}\n---\n"+pod("before"))
		applyDocs(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-pods, labels: {istio-injection: enabled}}\n---\n"+pod("after"))
		r := check(t)
		if !hasFinding(r, "IST0103", "Pod/team-pods/before", "missing the Istio proxy") {
			t.Errorf("no IST0103 for the pod without a proxy: %v", ids(r))
		}
		if hasFinding(r, "IST0103", "Pod/team-pods/after", "") {
			t.Errorf("IST0103 for the injected pod: %v", ids(r))
		}
		for _, name := range []string{"before", "after"} {
			if !hasFinding(r, "IST0144", "Pod/team-pods/"+name, "1337") {
				t.Errorf("no IST0144 for pod %s, whose application runs as the proxy's user: %v", name, ids(r))
			}
		}
	})

	t.Run("a Deployment behind two Services of one port, TCP and UDP", func(t *testing.T) {
		defer deleteNamespace(t, "team-svc")
		defer deleteNamespace(t, "team-other")
		doc := func(ns, protocol string) string {
			return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: %[1]s, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web-%[3]s, namespace: %[1]s}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080, protocol: %[2]s}]}
`, ns, protocol, strings.ToLower(protocol))
		}
		applyDocs(t, doc("team-svc", "TCP")+"---\n"+doc("team-other", "UDP")+`---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: team-svc}
spec:
  replicas: 0
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: registry.example.com/web:1, ports: [{containerPort: 8080}]}]}
`)
		if r := check(t); slices.ContainsFunc(r.Findings, func(f Finding) bool { return f.ID == "IST0116" }) {
			t.Errorf("a UDP Service of another namespace counts: %v", ids(r))
		}
		applyDocs(t, doc("team-svc", "UDP"))
		if r := check(t); !hasFinding(r, "IST0116", "Deployment/team-svc/web", "web-udp") {
			t.Errorf("no IST0116 for the Deployment behind two Services: %v", ids(r))
		}
	})

	t.Run("GKE nodes with the default overlay", func(t *testing.T) {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "gke-pool-1",
			Labels: map[string]string{"cloud.google.com/gke-nodepool": "pool-1"}},
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: "lost", Effect: corev1.TaintEffectNoSchedule}}}}
		if _, err := client.Kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = client.Kube.CoreV1().Nodes().Delete(ctx, "gke-pool-1", metav1.DeleteOptions{}) }()
		if r := check(t); !hasFinding(r, GKEOverlay, "DaemonSet/kube-system/istio-cni-node", "the oauth2-proxy overlay writes the CNI plugin to /opt/cni/bin") {
			t.Errorf("findings %v", ids(r))
		}
	})

	t.Run("workloads of injected namespaces", func(t *testing.T) {
		applyDocs(t, `apiVersion: v1
kind: Namespace
metadata:
  name: team-b
  labels:
    istio-injection: enabled
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: docs
  namespace: team-b
spec:
  replicas: 0
  selector:
    matchLabels:
      app: docs
  template:
    metadata:
      labels:
        app: docs
    spec:
      initContainers:
      - name: clone
        image: registry.k8s.io/git-sync/git-sync:v4.2.1
        args: ["--repo=https://github.com/kubeflow/website", "--one-time"]
      containers:
      - name: web
        image: nginx
`)
		defer deleteNamespace(t, "team-b")
		severity := func(r *Report) Severity {
			for _, f := range r.Findings {
				if f.ID == InitEgress && f.Object == "Deployment/team-b/docs" && strings.Contains(f.Reason, "github.com") {
					return f.Severity
				}
			}
			return ""
		}
		// Under ALLOW_ANY the clone works: a tip. A namespace's Sidecar that
		// refuses unknown hosts makes it fail.
		if r := check(t); severity(r) != Info {
			t.Errorf("findings %v", ids(r))
		}
		applyDocs(t, `apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: team-b
spec:
  outboundTrafficPolicy:
    mode: REGISTRY_ONLY
`)
		if r := check(t); severity(r) != Error || !hasFinding(r, InitEgress, "Deployment/team-b/docs", "Sidecar/team-b/default sets outboundTrafficPolicy REGISTRY_ONLY") {
			t.Errorf("with a REGISTRY_ONLY Sidecar: %v", r.Findings)
		}
	})

	t.Run("insecure overlay and a restricted injected namespace", func(t *testing.T) {
		installOverlay(t, "insecure")
		applyDocs(t, `apiVersion: v1
kind: Namespace
metadata:
  name: team-c
  labels:
    istio-injection: enabled
    pod-security.kubernetes.io/enforce: restricted
`)
		defer deleteNamespace(t, "team-c")
		r := check(t)
		if !hasFinding(r, NamespacePodSecurity, "Namespace/team-c", "enforces the restricted level") {
			t.Errorf("findings %v", ids(r))
		}
		if slices.ContainsFunc(r.Findings, func(f Finding) bool { return f.ID == CNINotReady }) {
			t.Errorf("CNI findings without CNI: %v", ids(r))
		}
	})
}

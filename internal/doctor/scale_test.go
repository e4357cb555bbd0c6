package doctor

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/testcluster"
)

// profiles creates injected namespaces PREFIX-FROM..PREFIX-TO-1, each with
// a Deployment (no replicas), until the test ends.
func profiles(t *testing.T, prefix string, from, to int) {
	t.Helper()
	ctx := context.Background()
	var names []string
	t.Cleanup(func() {
		for _, ns := range names {
			_ = client.Kube.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
		}
		for _, ns := range names {
			deleteNamespace(t, ns)
		}
	})
	for i := from; i < to; i++ {
		ns := fmt.Sprintf("%s-%d", prefix, i)
		if _, err := client.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{injectionLabel: "enabled"}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		names = append(names, ns)
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "notebook", Namespace: ns},
			Spec: appsv1.DeploymentSpec{
				Replicas: new(int32),
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "notebook"}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "notebook"}},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example.com/notebook:v1"}}},
				},
			},
		}
		if _, err := client.Kube.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// testNamespace creates a namespace with labels until the test ends, and
// waits for it to be gone.
func testNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	nss := client.Kube.CoreV1().Namespaces()
	if _, err := nss.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNamespace(t, name) })
}

// checkAs runs doctor on the cluster through kubeconfig, counting requests.
func checkAs(t *testing.T, kubeconfig string) (*Report, map[string]int) {
	t.Helper()
	ctx := context.Background()
	counter := &kube.RequestCounter{}
	c, err := kube.Connect(ctx, kube.Options{Kubeconfig: kubeconfig, WrapTransport: counter.Wrap})
	if err != nil {
		t.Fatal(err)
	}
	r, err := CheckCluster(ctx, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r, counter.Counts()
}

// doctor reads the cluster in as many LISTs and GETs with 3 profile
// namespaces as with 13: one LIST of each kind in every namespace, none per
// namespace, and one of the pods for its checks and Istio's analyzers; and
// it checks each profile's workloads.
func TestClusterRequestsConstant(t *testing.T) {
	liveCluster(t)
	installed(t)
	profiles(t, "requests", 0, 3)
	few, fewCounts := checkAs(t, cluster.Kubeconfig)
	profiles(t, "requests", 3, 13)
	// A LIST's first page, or a watch that streams the pods there are.
	var podLists atomic.Int32
	p, err := cluster.FaultProxy(func(r *http.Request) testcluster.Fault {
		if q := r.URL.Query(); r.Method == http.MethodGet && r.URL.Path == "/api/v1/pods" && q.Get("continue") == "" &&
			(q.Get("watch") == "" || q.Get("sendInitialEvents") == "true") {
			podLists.Add(1)
		}
		return testcluster.Pass
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	many, manyCounts := checkAs(t, p.Kubeconfig)
	if n := podLists.Load(); n != 1 {
		t.Errorf("the pods of every namespace were listed %d times, want once", n)
	}
	for _, r := range []*Report{few, many} {
		if n := strings.Join(r.Notes, "\n"); strings.Contains(n, "Istio's analyzers did not run") {
			t.Errorf("the analyzers did not run: %s", n)
		}
	}
	for _, verb := range []string{"list", "get"} {
		if fewCounts[verb] != manyCounts[verb] {
			t.Errorf("%s requests: %d with 3 profiles, %d with 13 (%v, %v)", verb, fewCounts[verb], manyCounts[verb], fewCounts, manyCounts)
		}
	}
	if many.Checked-few.Checked != 10 {
		t.Errorf("checked %d with 3 profiles and %d with 13, want 10 more workloads", few.Checked, many.Checked)
	}
	t.Logf("requests with 3 and 13 profiles: %v, %v", fewCounts, manyCounts)
}

// A LIST cut into pages whose continue token expires is listed again in
// full: the same report as in one page.
func TestClusterListResumes(t *testing.T) {
	liveCluster(t)
	installed(t)
	profiles(t, "resumes", 0, 5)
	want, _ := checkAs(t, cluster.Kubeconfig)
	expired := 0
	p, err := cluster.FaultProxy(func(r *http.Request) testcluster.Fault {
		if r.URL.Query().Get("continue") != "" && expired < 3 {
			expired++
			return testcluster.Expired
		}
		return testcluster.Pass
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	size := kube.PageSize
	kube.PageSize = 2
	t.Cleanup(func() { kube.PageSize = size })
	got, counts := checkAs(t, p.Kubeconfig)
	if expired == 0 {
		t.Fatalf("no LIST went on with a continue token (%v)", counts)
	}
	if !slices.Equal(ids(got), ids(want)) || got.Checked != want.Checked {
		t.Errorf("with %d expired continue tokens: %v (%d checked), want %v (%d checked)", expired, ids(got), got.Checked, ids(want), want.Checked)
	}
}

// A user who may not list Pods in every namespace, and in some namespaces
// not at all: doctor checks what it can read and names the namespaces it
// could not; Istio's analyzers, which need every Pod, say they did not run,
// and why.
func TestClusterForbiddenNamespaces(t *testing.T) {
	liveCluster(t)
	installed(t)
	ctx := context.Background()
	// Namespaces of this test alone: a deleted namespace lingers while its
	// objects go.
	for _, ns := range []string{"audited-a", "audited-b"} {
		testNamespace(t, ns, map[string]string{injectionLabel: "enabled"})
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "old-proxy", Namespace: ns, Labels: map[string]string{"sidecar.istio.io/inject": "false"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "app", Image: "registry.example.com/app:v1"},
				{Name: "istio-proxy", Image: "gcr.io/istio-release/proxyv2:1.28.3"},
			}},
		}
		if _, err := client.Kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig := userKubeconfig(t, "auditor", append(readAllBut("pods"),
		rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: readVerbs}))
	rbac := client.Kube.RbacV1()
	user := []rbacv1.Subject{{Kind: "User", Name: "auditor", APIGroup: rbacv1.GroupName}}
	// Pods of audited-a only.
	podReader := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pods", Namespace: "audited-a"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: readVerbs}}}
	if _, err := rbac.Roles("audited-a").Create(ctx, podReader, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "pods", Namespace: "audited-a"}, Subjects: user,
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pods"}}
	if _, err := rbac.RoleBindings("audited-a").Create(ctx, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sync := analyzerSync
	analyzerSync = 5 * time.Second
	t.Cleanup(func() { analyzerSync = sync })

	r, _ := checkAs(t, kubeconfig)
	found := ids(r)
	if !slices.Contains(found, OutdatedProxy+" Pod/audited-a/old-proxy") || slices.Contains(found, OutdatedProxy+" Pod/audited-b/old-proxy") {
		t.Errorf("findings %v, want KF106 for audited-a's pod only", found)
	}
	note := func(prefix string) string {
		for _, n := range r.Notes {
			if strings.HasPrefix(n, prefix) {
				return n
			}
		}
		return ""
	}
	if n := note("Pods: "); !strings.Contains(n, "audited-b") || strings.Contains(n, "audited-a") {
		t.Errorf("the note on Pods does not name audited-b alone of the two: %q", n)
	}
	if note("Istio's analyzers did not run: they read the pods of ") == "" {
		t.Errorf("no note that Istio's analyzers did not run for want of pods:\n%s", strings.Join(r.Notes, "\n"))
	}
}

// readVerbs are the verbs of reading.
var readVerbs = []string{"get", "list", "watch"}

// readAllBut are rules that let a user read what doctor and Istio's
// analyzers read, but the core kinds named (and ConfigMaps, which callers
// grant as they need).
func readAllBut(core ...string) []rbacv1.PolicyRule {
	var kinds []string
	for _, k := range []string{"namespaces", "nodes", "pods", "services", "endpoints", "serviceaccounts", "secrets"} {
		if !slices.Contains(core, k) {
			kinds = append(kinds, k)
		}
	}
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: kinds, Verbs: readVerbs},
		{APIGroups: []string{"apps", "batch", "admissionregistration.k8s.io", "apiextensions.k8s.io", "networking.istio.io", "security.istio.io",
			"telemetry.istio.io", "extensions.istio.io", "serving.kserve.io", "kubeflow.org", "discovery.k8s.io", "coordination.k8s.io"}, Resources: []string{"*"}, Verbs: readVerbs},
	}
}

// userKubeconfig binds a ClusterRole of rules to user until the test ends,
// and returns the user's kubeconfig.
func userKubeconfig(t *testing.T, user string, rules []rbacv1.PolicyRule) string {
	t.Helper()
	ctx := context.Background()
	rbac := client.Kube.RbacV1()
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "kfistio-test-" + user}, Rules: rules}
	if _, err := rbac.ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rbac.ClusterRoles().Delete(context.Background(), role.Name, metav1.DeleteOptions{}) })
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: user, APIGroup: rbacv1.GroupName}},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name}}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = rbac.ClusterRoleBindings().Delete(context.Background(), binding.Name, metav1.DeleteOptions{})
	})
	kubeconfig, err := cluster.UserKubeconfig(user)
	if err != nil {
		t.Fatal(err)
	}
	return kubeconfig
}

// Before istiod is installed, a user who may read little more than
// istiod's Deployments and webhooks hears that it is not installed (KF100),
// not how the other reads failed. Once it is, a user who may get
// istio-system's ConfigMaps by name but not list them gets the cluster
// findings an administrator gets.
func TestClusterNarrowUsers(t *testing.T) {
	liveCluster(t)
	planesOnly := userKubeconfig(t, "planes-only", []rbacv1.PolicyRule{
		{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: readVerbs},
		{APIGroups: []string{"admissionregistration.k8s.io"}, Resources: []string{"mutatingwebhookconfigurations"}, Verbs: readVerbs},
	})
	if r, _ := checkAs(t, planesOnly); !slices.Equal(ids(r), []string{NoControlPlane + " Deployment/istio-system/istiod"}) {
		t.Errorf("before install, as a user who may read only the control planes: %v, want KF100 alone", ids(r))
	}
	installed(t)
	sync := analyzerSync
	analyzerSync = 5 * time.Second
	t.Cleanup(func() { analyzerSync = sync })
	getOnly := userKubeconfig(t, "configmaps-by-name", append(readAllBut(),
		rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get"}}))
	want := clusterIDs(check(t))
	if got, _ := checkAs(t, getOnly); !slices.Equal(clusterIDs(got), want) {
		t.Errorf("as a user who may only get ConfigMaps: %v, want %v", clusterIDs(got), want)
	}
}

// clusterIDs are the ids of r's findings of doctor's own checks (KF), not
// Istio's analyzers'.
func clusterIDs(r *Report) []string {
	return slices.DeleteFunc(ids(r), func(id string) bool { return !strings.HasPrefix(id, "KF") })
}

// What doctor keeps of a workload of an injected namespace has no
// managedFields, no copy of itself from kubectl apply and no status; the
// workloads of other namespaces are not kept.
func TestWorkloadKeep(t *testing.T) {
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "team-a",
			Annotations:   map[string]string{install.LastAppliedAnnotation: `{"kind":"Deployment"}`, "owner": "team-a"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Status: appsv1.DeploymentStatus{Replicas: 1},
	}
	injected := func() map[string]bool { return map[string]bool{"team-a": true} }
	keep := workloadKinds[0].keep(injected)
	u, ok, err := keep(d.DeepCopy())
	if err != nil || !ok {
		t.Fatalf("keep: %v, %v", ok, err)
	}
	if _, status := u.Object["status"]; status || len(u.GetManagedFields()) > 0 || !maps.Equal(u.GetAnnotations(), map[string]string{"owner": "team-a"}) || u.GetKind() != "Deployment" {
		t.Errorf("kept %v", u.Object)
	}
	d.Namespace = "team-b"
	if _, ok, _ := keep(d); ok {
		t.Error("kept a Deployment of a namespace without injection")
	}
	// A custom resource is listed as unstructured.
	nb := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "kubeflow.org/v1", "kind": "Notebook",
		"metadata": map[string]any{"name": "nb", "namespace": "team-a", "annotations": map[string]any{install.LastAppliedAnnotation: "{}"}}}}
	k := slices.IndexFunc(workloadKinds, func(k workloadKind) bool { return k.gvk.Kind == "Notebook" })
	if u, ok, err := workloadKinds[k].keep(injected)(nb); err != nil || !ok || len(u.GetAnnotations()) > 0 {
		t.Errorf("kept %v (%v, %v)", u, ok, err)
	}
}

// typed converts through JSON to the same object as apimachinery's
// converter from structs: integers stay int64, quantities and times strings.
func TestTyped(t *testing.T) {
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "team-a", Generation: 3, CreationTimestamp: metav1.Now()},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				TerminationGracePeriodSeconds: ptr(int64(30)),
				Containers: []corev1.Container{{Name: "web", Image: "web:1", Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
					Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")}}}},
			}},
		},
	}
	want, err := runtime.DefaultUnstructuredConverter.ToUnstructured(d)
	if err != nil {
		t.Fatal(err)
	}
	want["apiVersion"], want["kind"] = "apps/v1", "Deployment"
	got, err := typed(d, "apps/v1", "Deployment")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Object, want) {
		t.Errorf("typed:\n%v\nwant:\n%v", got.Object, want)
	}
}

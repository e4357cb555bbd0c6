package doctor

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"istio.io/istio/pkg/config/schema/kubeclient"
	istiokube "istio.io/istio/pkg/kube"
	istioinject "istio.io/istio/pkg/kube/inject"
	"istio.io/istio/pkg/kube/kubetypes"
	"istio.io/istio/pkg/util/sets"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"
)

// slimPod keeps, in order, every container's name, image, user and
// restart policy; the pod's labels, annotations, owners, node, user and host
// network; and its phase, conditions and container states. It drops the
// rest of its spec and status.
func TestSlimPod(t *testing.T) {
	// What is kept of the metadata, and of the spec.
	const meta = `
metadata:
  name: web
  namespace: team-a
  resourceVersion: "7"
  labels: {app: web}
  annotations: {sidecar.istio.io/status: '{"revision":"default"}', proxy.istio.io/config: "holdApplicationUntilProxyStarts: true"}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d4f, uid: "1"}]
`
	const spec = `
spec:
  nodeName: node-a
  hostNetwork: true
  securityContext: {runAsUser: 1000}
`
	const status = `
status:
  phase: Running
  conditions: [{type: Ready, status: "True"}]
  containerStatuses: [{name: app, ready: true, restartCount: 0, image: app:1, imageID: "", state: {running: {}}}]
`
	var full corev1.Pod
	if err := yaml.Unmarshal([]byte(meta+`  managedFields: [{manager: kube-controller-manager}]`+spec+`  volumes: [{name: istio-envoy, emptyDir: {}}]
  initContainers:
  - {name: istio-validation, image: proxyv2:1.29.1, args: [istio-iptables]}
  - {name: istio-proxy, image: proxyv2:1.29.1, restartPolicy: Always, env: [{name: ISTIO_META_CLUSTER_ID, value: Kubernetes}],
     securityContext: {runAsUser: 1337}, readinessProbe: {httpGet: {path: /healthz/ready, port: 15021}}}
  containers:
  - {name: app, image: app:1, ports: [{containerPort: 8080}], securityContext: {runAsUser: 1337}, volumeMounts: [{name: data, mountPath: /data}]}
`+status+`  podIP: 127.0.0.5
`), &full); err != nil {
		t.Fatal(err)
	}
	var want corev1.Pod
	if err := yaml.Unmarshal([]byte(meta+spec+`  initContainers:
  - {name: istio-validation, image: proxyv2:1.29.1}
  - {name: istio-proxy, image: proxyv2:1.29.1, restartPolicy: Always, securityContext: {runAsUser: 1337}}
  containers:
  - {name: app, image: app:1, securityContext: {runAsUser: 1337}}
`+status), &want); err != nil {
		t.Fatal(err)
	}
	got, ok, err := slimPod(&full)
	if err != nil || !ok {
		t.Fatalf("slimPod: %v, %v", ok, err)
	}
	if !equality.Semantic.DeepEqual(got, &want) {
		b, _ := yaml.Marshal(got)
		t.Errorf("slimPod kept:\n%s", b)
	}
}

// A pod feed's informer syncs once doctor's pods are set, and holds those
// its options select. Where pods it selects could not be listed, in some
// namespaces or at all, its LIST fails as the API server's would and the
// feed is refused; pods denied only where it does not select are no matter.
func TestPodFeed(t *testing.T) {
	pod := func(ns, name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}}}
	}
	// As Istio's analyzers ask: without the namespaces Istio ignores.
	istios, ok := newPodSelector(kubetypes.InformerOptions{FieldSelector: "metadata.namespace!=kube-system,metadata.namespace!=kube-public"})
	if !ok {
		t.Fatal("the feed cannot select pods without kube-system's")
	}
	f := newPodFeed()
	inf := f.informer(istios)
	stop := make(chan struct{})
	defer close(stop)
	go inf.Run(stop)
	early, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	if cache.WaitForCacheSync(early.Done(), inf.HasSynced) {
		t.Errorf("the informer synced before the pods were read")
	}
	cancel()
	// Denied in kube-system only, which the informer does not select.
	pods := []*corev1.Pod{pod("team-a", "web"), pod("kube-system", "coredns"), pod("team-b", "db")}
	f.set(pods, []string{"kube-system"}, nil)
	synced, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if !cache.WaitForCacheSync(synced.Done(), inf.HasSynced) {
		t.Fatal("the informer did not sync")
	}
	if keys := inf.GetStore().ListKeys(); !slices.Equal(slices.Sorted(slices.Values(keys)), []string{"team-a/web", "team-b/db"}) {
		t.Errorf("the informer holds %v, want team-a/web and team-b/db", keys)
	}
	select {
	case <-f.refused:
		t.Errorf("the feed was refused for pods denied in %v, which its informer does not select", f.unread)
	default:
	}
	everywhere := newPodFeed()
	everywhere.set(pods, nil, nil)
	for _, o := range []kubetypes.InformerOptions{{Namespace: "team-b"}, {LabelSelector: "app=db"}, {FieldSelector: "metadata.name=db"}, {FieldSelector: "metadata.namespace=team-b"}} {
		sel, ok := newPodSelector(o)
		if !ok {
			t.Fatalf("the feed cannot select pods by %+v", o)
		}
		l, err := everywhere.list(context.Background(), sel)
		if err != nil {
			t.Fatal(err)
		}
		if items := l.(*corev1.PodList).Items; len(items) != 1 || items[0].Name != "db" {
			t.Errorf("the pods selected by %+v: %v", o, items)
		}
	}
	for _, o := range []kubetypes.InformerOptions{{FieldSelector: "spec.nodeName=node-a"}, {LabelSelector: "app in (web"}} {
		if _, ok := newPodSelector(o); ok {
			t.Errorf("the feed claims to select pods by %+v", o)
		}
	}

	all, _ := newPodSelector(kubetypes.InformerOptions{})
	denied := newPodFeed()
	denied.set([]*corev1.Pod{pod("team-a", "web")}, []string{"kube-system", "team-b", "team-c"}, nil)
	if _, err := denied.list(context.Background(), istios); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "namespaces team-b, team-c") {
		t.Errorf("with pods denied in two namespaces it selects, the feed's LIST: %v", err)
	}
	select {
	case <-denied.refused:
		if !slices.Equal(denied.unread, []string{"team-b", "team-c"}) {
			t.Errorf("the feed was refused for the pods of %v, want team-b and team-c", denied.unread)
		}
	default:
		t.Error("the feed was not refused")
	}
	failed := newPodFeed()
	cut := errors.New("list Pods: connection reset")
	failed.set(nil, nil, cut)
	if _, err := failed.list(context.Background(), all); !errors.Is(err, cut) {
		t.Errorf("after doctor's LIST failed, the feed's LIST: %v", err)
	}
	ctx, cancelled := context.WithCancel(context.Background())
	cancelled()
	if _, err := newPodFeed().list(ctx, all); !errors.Is(err, context.Canceled) {
		t.Errorf("the feed's LIST, cancelled before the pods were read: %v", err)
	}
}

// analyzerDeployment drops a Deployment's status and managedFields and
// keeps its metadata and spec; what is not a Deployment (a deletion's last
// known state) passes unchanged.
func TestAnalyzerDeployment(t *testing.T) {
	const kept = `
metadata:
  name: web
  namespace: team-a
  labels: {app: web}
  annotations: {sidecar.istio.io/inject: "true"}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: app:1, securityContext: {runAsUser: 1337}}]
`
	var full, want appsv1.Deployment
	if err := yaml.Unmarshal([]byte(kept+`status: {replicas: 1, conditions: [{type: Available, status: "True", message: has minimum availability}]}
`), &full); err != nil {
		t.Fatal(err)
	}
	full.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager"}}
	if err := yaml.Unmarshal([]byte(kept), &want); err != nil {
		t.Fatal(err)
	}
	var tomb any = cache.DeletedFinalStateUnknown{Key: "team-a/web", Obj: &full}
	got, err := analyzerDeployment(&full)
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(got, &want) {
		b, _ := yaml.Marshal(got)
		t.Errorf("analyzerDeployment kept:\n%s", b)
	}
	if out, _ := analyzerDeployment(tomb); out != tomb {
		t.Errorf("analyzerDeployment(%T) = %v", tomb, out)
	}
}

// Through the informers Istio's stores make (kubeclient), the analyzers'
// client lists the ConfigMaps of its Istio namespace only, though Istio asks
// for every namespace's, its Deployments are stored without status, and its
// Pods, asked for as Istio's analyzers ask, are those of the feed.
func TestAnalysisInformers(t *testing.T) {
	liveCluster(t)
	ctx := context.Background()
	const istioNS, otherNS = "analysis-istio", "analysis-other"
	for _, ns := range []string{istioNS, otherNS} {
		testNamespace(t, ns, nil)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector", Namespace: ns}}
		if _, err := client.Kube.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var d appsv1.Deployment
	if err := yaml.Unmarshal([]byte(`
metadata: {name: web, namespace: analysis-other}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: app, image: app:1}]}
`), &d); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Kube.AppsV1().Deployments(otherNS).Create(ctx, &d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The Deployment controller writes its status.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		got, err := client.Kube.AppsV1().Deployments(otherNS).Get(ctx, d.Name, metav1.GetOptions{})
		return err == nil && got.Status.ObservedGeneration > 0, err
	}); err != nil {
		t.Fatalf("Deployment %s/%s has no status: %v", otherNS, d.Name, err)
	}

	ic, err := istiokube.NewCLIClient(istiokube.NewClientConfigForRestConfig(client.Config))
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Shutdown()
	feed := newPodFeed()
	feed.set([]*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "fed", Name: "web"}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "coredns"}},
	}, nil, nil)
	ac := analysisClient{Client: ic, istioNamespace: istioNS, pods: feed}
	stop := make(chan struct{})
	defer close(stop)
	stored := func(r schema.GroupVersionResource, o kubetypes.InformerOptions) []any {
		inf := kubeclient.GetInformerFilteredFromGVR(ac, o, r)
		inf.Start(stop)
		if !cache.WaitForCacheSync(stop, inf.Informer.HasSynced) {
			t.Fatalf("the informer of %s did not sync", r)
		}
		return inf.Informer.GetStore().List()
	}
	var cms []string
	for _, o := range stored(configMapsResource, kubetypes.InformerOptions{}) {
		if cm := o.(*corev1.ConfigMap); cm.Name == "istio-sidecar-injector" {
			cms = append(cms, cm.Namespace)
		}
	}
	if !slices.Equal(cms, []string{istioNS}) {
		t.Errorf("the analyzers' ConfigMaps istio-sidecar-injector are those of %v, want %s's only", cms, istioNS)
	}
	found := false
	for _, o := range stored(deploymentsResource, kubetypes.InformerOptions{}) {
		if got := o.(*appsv1.Deployment); got.Namespace == otherNS && got.Name == d.Name {
			found = true
			if got.Status.ObservedGeneration != 0 || got.ManagedFields != nil {
				t.Errorf("the analyzers' Deployment %s/%s keeps its status or managedFields: %+v", otherNS, d.Name, got.Status)
			}
		}
	}
	if !found {
		t.Errorf("the analyzers' Deployments miss %s/%s", otherNS, d.Name)
	}
	// Istio's analyzers ask for the pods outside the namespaces Istio
	// ignores.
	var ignored []fields.Selector
	for _, ns := range sets.SortedList(istioinject.IgnoredNamespaces) {
		ignored = append(ignored, fields.OneTermNotEqualSelector("metadata.namespace", ns))
	}
	var pods []string
	for _, o := range stored(podsResource, kubetypes.InformerOptions{FieldSelector: fields.AndSelectors(ignored...).String(), Cluster: "Kubernetes"}) {
		pods = append(pods, o.(*corev1.Pod).Namespace+"/"+o.(*corev1.Pod).Name)
	}
	if !slices.Equal(pods, []string{"fed/web"}) {
		t.Errorf("the analyzers' Pods are %v, want the feed's fed/web", pods)
	}
}

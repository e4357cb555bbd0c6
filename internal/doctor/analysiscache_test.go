package doctor

import (
	"context"
	"slices"
	"testing"
	"time"

	"istio.io/istio/pkg/config/schema/kubeclient"
	istiokube "istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/kube/kubetypes"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"
)

// analyzerPod keeps, in order, every container's name, image and user, and
// the pod's labels, annotations, node, user and host network; it drops its
// status and the rest of its spec.
func TestAnalyzerPod(t *testing.T) {
	// What is kept of the metadata, and of the spec.
	const meta = `
metadata:
  name: web
  namespace: team-a
  resourceVersion: "7"
  labels: {app: web}
  annotations: {sidecar.istio.io/status: '{"revision":"default"}', proxy.istio.io/config: "holdApplicationUntilProxyStarts: true"}
`
	const spec = `
spec:
  nodeName: node-a
  hostNetwork: true
  securityContext: {runAsUser: 1000}
`
	var full corev1.Pod
	if err := yaml.Unmarshal([]byte(meta+`  managedFields: [{manager: kube-controller-manager}]`+spec+`  volumes: [{name: istio-envoy, emptyDir: {}}]
  initContainers:
  - {name: istio-validation, image: proxyv2:1.29.1, args: [istio-iptables]}
  - {name: istio-proxy, image: proxyv2:1.29.1, restartPolicy: Always, env: [{name: ISTIO_META_CLUSTER_ID, value: Kubernetes}],
     securityContext: {runAsUser: 1337}, readinessProbe: {httpGet: {path: /healthz/ready, port: 15021}}}
  containers:
  - {name: app, image: app:1, ports: [{containerPort: 8080}], securityContext: {runAsUser: 1337}, volumeMounts: [{name: data, mountPath: /data}]}
status:
  phase: Running
  podIP: 127.0.0.5
`), &full); err != nil {
		t.Fatal(err)
	}
	var want corev1.Pod
	if err := yaml.Unmarshal([]byte(meta+spec+`  initContainers:
  - {name: istio-validation, image: proxyv2:1.29.1}
  - {name: istio-proxy, image: proxyv2:1.29.1, restartPolicy: Always, securityContext: {runAsUser: 1337}}
  containers:
  - {name: app, image: app:1, securityContext: {runAsUser: 1337}}
`), &want); err != nil {
		t.Fatal(err)
	}
	checkTransform(t, "analyzerPod", analyzerPod, &full, &want)
}

// checkTransform checks that transform makes want of full, and that what is
// not of its kind (a deletion's last known state) passes unchanged.
func checkTransform(t *testing.T, name string, transform cache.TransformFunc, full, want any) {
	t.Helper()
	var tomb any = cache.DeletedFinalStateUnknown{Key: "team-a/web", Obj: full}
	got, err := transform(full)
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(got, want) {
		b, _ := yaml.Marshal(got)
		t.Errorf("%s kept:\n%s", name, b)
	}
	if out, _ := transform(tomb); out != tomb {
		t.Errorf("%s(%T) = %v", name, tomb, out)
	}
}

// analyzerDeployment drops a Deployment's status and managedFields and
// keeps its metadata and spec.
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
	checkTransform(t, "analyzerDeployment", analyzerDeployment, &full, &want)
}

// Through the informers Istio's stores make (kubeclient), the analyzers'
// client lists the ConfigMaps of its Istio namespace only, though Istio asks
// for every namespace's, and its Deployments are stored without status.
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
	ac := analysisClient{Client: ic, istioNamespace: istioNS}
	stop := make(chan struct{})
	defer close(stop)
	stored := func(r schema.GroupVersionResource) []any {
		inf := kubeclient.GetInformerFilteredFromGVR(ac, kubetypes.InformerOptions{}, r)
		inf.Start(stop)
		if !cache.WaitForCacheSync(stop, inf.Informer.HasSynced) {
			t.Fatalf("the informer of %s did not sync", r)
		}
		return inf.Informer.GetStore().List()
	}
	var cms []string
	for _, o := range stored(configMapsResource) {
		if cm := o.(*corev1.ConfigMap); cm.Name == "istio-sidecar-injector" {
			cms = append(cms, cm.Namespace)
		}
	}
	if !slices.Equal(cms, []string{istioNS}) {
		t.Errorf("the analyzers' ConfigMaps istio-sidecar-injector are those of %v, want %s's only", cms, istioNS)
	}
	found := false
	for _, o := range stored(deploymentsResource) {
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
}

package doctor

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
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
	got, err := analyzerPod(&full)
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(got, &want) {
		b, _ := yaml.Marshal(got)
		t.Errorf("analyzerPod kept:\n%s", b)
	}
	// What is not a pod (a deletion's last known state) passes unchanged.
	var tomb any = cache.DeletedFinalStateUnknown{Key: "team-a/web", Obj: &full}
	if out, _ := analyzerPod(tomb); out != tomb {
		t.Errorf("analyzerPod(%T) = %v", tomb, out)
	}
}

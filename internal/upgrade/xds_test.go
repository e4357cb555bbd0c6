package upgrade

import (
	"context"
	"fmt"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pilot/pkg/model"
	v3 "istio.io/istio/pilot/pkg/xds/v3"
	"istio.io/istio/pkg/adsc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kubeflow/kfistio/internal/revision"
)

// sidecar is an xDS connection to an istiod as the proxy of a pod of some
// release would make it.
type sidecar struct {
	pod *corev1.Pod
	ads *adsc.ADSC
	n   int
}

// connectSidecar connects to the plaintext xDS of the istiod of Service
// istiod as the sidecar of pod, of Istio release, and waits for its first
// clusters and listeners.
func connectSidecar(t *testing.T, pod *corev1.Pod, istiod, release string) *sidecar {
	t.Helper()
	addr, err := cluster.ServiceAddress(context.Background(), revision.Namespace, istiod, "grpc-xds")
	if err != nil {
		t.Fatal(err)
	}
	meta, err := structpb.NewStruct(map[string]any{
		"NAME": pod.Name, "NAMESPACE": pod.Namespace, "SERVICE_ACCOUNT": pod.Spec.ServiceAccountName,
		"ISTIO_VERSION": release, "LABELS": map[string]any{"app": pod.Labels["app"]},
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := adsc.New(addr, &adsc.ADSConfig{
		Config: adsc.Config{Namespace: pod.Namespace, Workload: pod.Name, NodeType: model.SidecarProxy, IP: pod.Status.PodIP, Meta: meta},
		InitialDiscoveryRequests: []*discovery.DiscoveryRequest{
			{TypeUrl: v3.ClusterType}, {TypeUrl: v3.ListenerType},
		},
	})
	if err != nil {
		t.Fatalf("connect to the xDS of %s at %s: %v", istiod, addr, err)
	}
	t.Cleanup(a.Close)
	if err := a.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Wait(time.Minute, v3.ClusterType, v3.ListenerType); err != nil {
		t.Fatalf("xDS of %s from %s: %v", pod.Name, istiod, err)
	}
	return &sidecar{pod: pod, ads: a}
}

var serviceEntries = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "serviceentries"}

// expectPush adds a ServiceEntry of a new host to the pod's namespace and
// waits until the istiod the sidecar is connected to has pushed a cluster
// for it. The ServiceEntry has its own address, so that no istiod allocates
// one.
func (s *sidecar) expectPush(t *testing.T, when string) {
	t.Helper()
	s.n++
	host := fmt.Sprintf("push-%d.probe.example.com", s.n)
	se := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
		"metadata": map[string]any{"name": fmt.Sprintf("push-%d", s.n), "namespace": s.pod.Namespace},
		"spec": map[string]any{"hosts": []any{host}, "addresses": []any{fmt.Sprintf("240.240.99.%d", s.n)}, "location": "MESH_EXTERNAL", "resolution": "DNS",
			"ports": []any{map[string]any{"number": int64(80), "name": "http", "protocol": "HTTP"}}},
	}}
	u, _ := upgrader(t)
	if _, err := u.In.Client.Dynamic.Resource(serviceEntries).Namespace(s.pod.Namespace).Create(context.Background(), se, metav1.CreateOptions{}); err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	name := "outbound|80||" + host
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, ok := s.ads.GetClusters()[name]; ok {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: the sidecar of %s got no cluster %s within 30s", when, s.pod.Name, name)
			return
		}
		_, _ = s.ads.Wait(time.Until(deadline), v3.ClusterType)
	}
}

package doctor

import (
	istiokube "istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/kube/informerfactory"
	"istio.io/istio/pkg/kube/kubetypes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
)

// slimPodsClient is an Istio client whose informers keep of each Pod only
// what Istio's analyzers read (analyzerPod): on a large cluster the pods,
// with their injected sidecars, are most of what the analyzers hold.
type slimPodsClient struct {
	istiokube.Client
}

func (c slimPodsClient) Informers() informerfactory.InformerFactory {
	return slimPodsFactory{c.Client.Informers()}
}

type slimPodsFactory struct {
	informerfactory.InformerFactory
}

var podsResource = corev1.SchemeGroupVersion.WithResource("pods")

// InformerFor replaces, on the informer of Pods, the transform Istio's
// clients set (which drops managedFields) with analyzerPod; transforms are
// set before an informer starts.
func (f slimPodsFactory) InformerFor(r schema.GroupVersionResource, o kubetypes.InformerOptions, newInformer informerfactory.NewInformerFunc) informerfactory.StartableInformer {
	if r != podsResource || o.ObjectTransform != nil {
		return f.InformerFactory.InformerFor(r, o, newInformer)
	}
	return f.InformerFactory.InformerFor(r, o, func() cache.SharedIndexInformer {
		inf := newInformer()
		_ = inf.SetTransform(analyzerPod)
		return inf
	})
}

// analyzerPod keeps of a Pod what Istio's analyzers read: its name,
// namespace, labels and annotations (selectors, injection, suppressions);
// the names, images and security contexts of its containers, in order
// (the proxy, its image, the application's user); its node (locality) and
// whether it uses the host's network. Its status and the rest of its spec
// (environment, volumes, probes, resources) are dropped: the analyzers do
// not read them, and they are most of an injected pod.
func analyzerPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	containers := func(cs []corev1.Container) []corev1.Container {
		out := make([]corev1.Container, len(cs))
		for i, c := range cs {
			out[i] = corev1.Container{Name: c.Name, Image: c.Image, SecurityContext: c.SecurityContext, RestartPolicy: c.RestartPolicy}
		}
		return out
	}
	return &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Generation: p.Generation, CreationTimestamp: p.CreationTimestamp, Labels: p.Labels, Annotations: p.Annotations},
		Spec: corev1.PodSpec{
			InitContainers: containers(p.Spec.InitContainers), Containers: containers(p.Spec.Containers),
			SecurityContext: p.Spec.SecurityContext, NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork,
		},
	}, nil
}

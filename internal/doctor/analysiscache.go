package doctor

import (
	"istio.io/istio/pkg/config/schema/kubeclient"
	istiokube "istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/kube/informerfactory"
	"istio.io/istio/pkg/kube/kubetypes"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
)

// analysisClient is an Istio client whose informers hold less than Istio's
// own on a large cluster: of each Pod and Deployment what the analyzers
// read (analyzerPod, analyzerDeployment), and only the ConfigMaps of the
// analyzers' Istio namespace.
type analysisClient struct {
	istiokube.Client
	// istioNamespace is the analyzers' Istio namespace.
	istioNamespace string
}

func (c analysisClient) Informers() informerfactory.InformerFactory {
	return analysisInformers{InformerFactory: c.Client.Informers(), client: c.Client, istioNamespace: c.istioNamespace}
}

type analysisInformers struct {
	informerfactory.InformerFactory
	client         istiokube.Client
	istioNamespace string
}

var (
	podsResource        = corev1.SchemeGroupVersion.WithResource("pods")
	deploymentsResource = appsv1.SchemeGroupVersion.WithResource("deployments")
	configMapsResource  = corev1.SchemeGroupVersion.WithResource("configmaps")
)

// analyzerTransforms replace, on the informers of these resources, the
// transform Istio's clients set (which drops managedFields).
var analyzerTransforms = map[schema.GroupVersionResource]cache.TransformFunc{
	podsResource:        analyzerPod,
	deploymentsResource: analyzerDeployment,
}

// InformerFor sets analyzerTransforms, where Istio asks for no transform of
// its own, before an informer starts (transforms are set then). The
// narrowing of ConfigMaps keeps whatever transform Istio asks for. The
// analyzers read the ConfigMaps of their Istio namespace
// (the injectors' configuration) and declare that namespace in their
// filter, but their store watches every namespace's ConfigMaps and filters
// by name only, which keeps each namespace's istio-ca-root-cert: this
// informer lists that namespace alone.
func (f analysisInformers) InformerFor(r schema.GroupVersionResource, o kubetypes.InformerOptions, newInformer informerfactory.NewInformerFunc) informerfactory.StartableInformer {
	if r == configMapsResource && o.Namespace == metav1.NamespaceAll {
		o.Namespace = f.istioNamespace
		return kubeclient.GetInformerFilteredFromGVR(f.client, o, r)
	}
	transform, ok := analyzerTransforms[r]
	if !ok || o.ObjectTransform != nil {
		return f.InformerFactory.InformerFor(r, o, newInformer)
	}
	return f.InformerFactory.InformerFor(r, o, func() cache.SharedIndexInformer {
		inf := newInformer()
		_ = inf.SetTransform(transform)
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

// analyzerDeployment drops a Deployment's status and managedFields: the
// analyzers read its metadata and spec.
func analyzerDeployment(obj any) (any, error) {
	d, ok := obj.(*appsv1.Deployment)
	if !ok {
		return obj, nil
	}
	d.ManagedFields = nil
	d.Status = appsv1.DeploymentStatus{}
	return d, nil
}

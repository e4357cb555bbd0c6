package inject

import (
	"encoding/json"
	"fmt"
	"sync"

	meshconfig "istio.io/api/mesh/v1alpha1"
	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pkg/config/mesh"
	istioinject "istio.io/istio/pkg/kube/inject"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
)

// Objects that configure injection, as istiod reads them.
const (
	Namespace           = revision.Namespace
	DiscoveryContainer  = revision.IstiodContainer
	NativeSidecarsEnv   = "ENABLE_NATIVE_SIDECARS"
	ProxyContainer      = "istio-proxy"
	ValidationContainer = "istio-validation"
	InitContainer       = "istio-init"
)

// Injector injects sidecars the way the istiod of a built tree would.
type Injector struct {
	templates istioinject.Templates
	values    istioinject.ValuesConfig
	mesh      *meshconfig.MeshConfig
	native    features.NativeSidecarMode
	// NativeSidecars is istiod's ENABLE_NATIVE_SIDECARS value ("" when unset).
	NativeSidecars string
	// webhooks are the selectors of the injection webhooks, when known.
	webhooks []selectors
}

type selectors struct{ namespace, object labels.Selector }

// IsIstioContainer reports whether a container of that name is one the
// injector adds.
func IsIstioContainer(name string) bool {
	return name == ProxyContainer || name == ValidationContainer || name == InitContainer
}

// New reads the injector ConfigMap, the mesh ConfigMap and istiod's
// ENABLE_NATIVE_SIDECARS from objs, the objects of a build, for the control
// plane revision they hold.
func New(objs []*unstructured.Unstructured) (*Injector, error) {
	idx := object.Index(objs)
	names := revision.Find(objs)
	injCM := idx[object.KeyOf("ConfigMap", Namespace, names.Injector)]
	if injCM == nil {
		return nil, fmt.Errorf("no %s in the build", object.KeyOf("ConfigMap", Namespace, names.Injector))
	}
	meshCM := idx[object.KeyOf("ConfigMap", Namespace, names.Mesh)]
	if meshCM == nil {
		return nil, fmt.Errorf("no %s in the build", object.KeyOf("ConfigMap", Namespace, names.Mesh))
	}
	data, _, _ := unstructured.NestedStringMap(injCM.Object, "data")
	cfg, err := istioinject.UnmarshalConfig([]byte(data["config"]))
	if err != nil {
		return nil, fmt.Errorf("%s key config: %w", object.Key(injCM), err)
	}
	values, err := istioinject.NewValuesConfig(data["values"])
	if err != nil {
		return nil, fmt.Errorf("%s key values: %w", object.Key(injCM), err)
	}
	meshData, _, _ := unstructured.NestedString(meshCM.Object, "data", "mesh")
	mc, err := mesh.ApplyMeshConfigDefaults(meshData)
	if err != nil {
		return nil, fmt.Errorf("%s key mesh: %w", object.Key(meshCM), err)
	}
	in := &Injector{templates: cfg.Templates, values: values, mesh: mc}
	if d := idx[object.KeyOf("Deployment", Namespace, names.Istiod)]; d != nil {
		in.NativeSidecars, _ = object.ContainerEnv(d, DiscoveryContainer, NativeSidecarsEnv)
	}
	in.native = nativeMode(in.NativeSidecars)
	for _, o := range objs {
		if o.GetKind() != "MutatingWebhookConfiguration" {
			continue
		}
		w := &admissionv1.MutatingWebhookConfiguration{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, w); err != nil {
			return nil, fmt.Errorf("%s: %w", object.Key(o), err)
		}
		for _, h := range w.Webhooks {
			ns, err := object.WebhookSelector(h.NamespaceSelector)
			if err != nil {
				return nil, fmt.Errorf("%s webhook %s: %w", object.Key(o), h.Name, err)
			}
			ob, err := object.WebhookSelector(h.ObjectSelector)
			if err != nil {
				return nil, fmt.Errorf("%s webhook %s: %w", object.Key(o), h.Name, err)
			}
			in.webhooks = append(in.webhooks, selectors{namespace: ns, object: ob})
		}
	}
	return in, nil
}

// Selects reports whether the API server would send a pod with podLabels in
// a namespace with nsLabels to an injection webhook of the build. Without
// webhook configurations in the build, every pod is sent.
func (in *Injector) Selects(nsLabels, podLabels map[string]string) bool {
	if len(in.webhooks) == 0 {
		return true
	}
	for _, w := range in.webhooks {
		if w.namespace.Matches(labels.Set(nsLabels)) && w.object.Matches(labels.Set(podLabels)) {
			return true
		}
	}
	return false
}

// nativeMode reads ENABLE_NATIVE_SIDECARS as istiod does (pilot/pkg/features):
// unset means auto, anything unknown means disabled.
func nativeMode(v string) features.NativeSidecarMode {
	switch v {
	case "true":
		return features.NativeSidecarModeEnabled
	case "", "auto":
		return features.NativeSidecarModeAuto
	default:
		return features.NativeSidecarModeDisabled
	}
}

// The injector reads native-sidecar mode from a package variable of Istio's.
var featureMu sync.Mutex

// Inject returns workload (a Pod or an object with a pod template) with the
// sidecar injected, as the API server would store it. Workloads that Istio
// would not inject come back unchanged.
func (in *Injector) Inject(workload *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	workload = workload.DeepCopy()
	if err := object.EditPodSpec(workload, defaultPorts); err != nil {
		return nil, fmt.Errorf("inject %s: %w", object.Key(workload), err)
	}
	raw, err := json.Marshal(workload.Object)
	if err != nil {
		return nil, err
	}
	typed, err := istioinject.FromRawToObject(raw)
	if err != nil {
		return nil, fmt.Errorf("inject %s: %w", object.Key(workload), err)
	}
	featureMu.Lock()
	saved := features.EnableNativeSidecars
	features.EnableNativeSidecars = in.native
	out, err := istioinject.IntoObject(nil, in.templates, in.values, "", in.mesh, typed, func(string) {})
	features.EnableNativeSidecars = saved
	featureMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("inject %s: %w", object.Key(workload), err)
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(out)
	if err != nil {
		return nil, fmt.Errorf("inject %s: %w", object.Key(workload), err)
	}
	u := &unstructured.Unstructured{Object: m}
	if err := object.EditPodSpec(u, defaultVolumes); err != nil {
		return nil, fmt.Errorf("inject %s: %w", object.Key(workload), err)
	}
	return u, nil
}

// defaultPorts does what the API server's defaulting does to container
// ports before it sends a pod to the injection webhook
// (SetDefaults_ContainerPort in k8s.io/kubernetes/pkg/apis/core/v1): a port
// without a protocol is TCP. The injector copies the ports into the proxy's
// ISTIO_META_POD_PORTS, so the simulation has to see them as istiod does.
func defaultPorts(spec *corev1.PodSpec) {
	for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for i := range cs {
			for j := range cs[i].Ports {
				if cs[i].Ports[j].Protocol == "" {
					cs[i].Ports[j].Protocol = corev1.ProtocolTCP
				}
			}
		}
	}
}

// defaultVolumes does what the API server's defaulting does to a volume
// without a source (SetDefaults_Volume in k8s.io/kubernetes/pkg/apis/core/v1):
// it becomes an emptyDir. The injector's templates declare workload-socket,
// credential-socket and workload-certs as `emptyDir: {}`, which the JSON
// round trip inside the injector reduces to no source at all.
func defaultVolumes(spec *corev1.PodSpec) {
	for i := range spec.Volumes {
		if (spec.Volumes[i].VolumeSource == corev1.VolumeSource{}) {
			spec.Volumes[i].EmptyDir = &corev1.EmptyDirVolumeSource{}
		}
	}
}

// IstiodRelease returns the image of istiod's discovery container in spec
// and its tag, the Istio release ("" for both without that container).
func IstiodRelease(spec *corev1.PodSpec) (image, release string) {
	if c := object.Container(spec, DiscoveryContainer); c != nil {
		_, release = object.SplitImage(c.Image)
		return c.Image, release
	}
	return "", ""
}

package doctor

import (
	"encoding/base64"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kubeflow/kfistio/internal/inject"
)

// What KServe's controller and pod webhook put into the pods of an
// InferenceService (github.com/kserve/kserve, pkg/constants and
// pkg/webhook/admission/pod).
const (
	storageInitializer  = "storage-initializer"
	kserveContainer     = "kserve-container"
	storageURIEnv       = "STORAGE_URI"
	modelDir            = "/mnt/models"
	storageUIDAnno      = "serving.kserve.io/storage-initializer-uid"
	s3EndpointAnno      = "serving.kserve.io/s3-endpoint"
	storageSpecSecret   = "storage-config"
	kserveConfigMap     = "inferenceservice-config"
	interceptionAnno    = "sidecar.istio.io/interceptionMode"
	sidecarStatusAnno   = "sidecar.istio.io/status"
	isvcComponentsLabel = "component"
)

// isvcComponents are the parts of an InferenceService that run pods of their
// own.
var isvcComponents = []string{"predictor", "transformer", "explainer"}

// Where a component's model server is described, for each component.
var implementations = map[string][]string{
	"predictor": {"model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml", "lightgbm", "paddle"},
	"explainer": {"art", "alibi"},
}

// Storage URI schemes KServe serves without downloading through the pod's
// network: a PersistentVolumeClaim, a local path, and model images that the
// kubelet pulls (modelcar sidecar, image volume). Every other scheme (gs, s3,
// hdfs, webhdfs, hf, modelscope, http(s), oci+fetch, and schemes of custom
// ClusterStorageContainers) runs the storage initializer.
var noDownload = []string{"pvc://", "file://", "oci://", "oci+native://"}

// isvcPods returns the pods KServe runs for InferenceService o: one per
// component, each with its model server, its custom containers, and the
// storage initializer KServe's webhook adds for a model it downloads.
func isvcPods(o *unstructured.Unstructured, related *relatedObjects) ([]*podRun, string) {
	var out []*podRun
	for _, comp := range isvcComponents {
		spec, ok, _ := unstructured.NestedMap(o.Object, "spec", comp)
		if !ok {
			continue
		}
		pr, err := isvcPod(o, comp, spec, related)
		if err != "" {
			return nil, err
		}
		out = append(out, pr)
	}
	if len(out) == 0 {
		return nil, "no spec.predictor"
	}
	return out, ""
}

func isvcPod(o *unstructured.Unstructured, comp string, spec map[string]any, related *relatedObjects) (*podRun, string) {
	ps := corev1.PodSpec{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(spec, &ps); err != nil {
		return nil, "spec." + comp + ": " + shorten(err.Error())
	}
	var uris []string
	endpoint := ""
	for _, impl := range implementations[comp] {
		m, ok := spec[impl].(map[string]any)
		if !ok {
			continue
		}
		c := corev1.Container{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, &c); err != nil {
			return nil, "spec." + comp + "." + impl + ": " + shorten(err.Error())
		}
		c.Name = kserveContainer
		ps.Containers = append([]corev1.Container{c}, ps.Containers...)
		if s, ok := m["storageUri"].(string); ok && s != "" {
			uris = append(uris, s)
		}
		if u, ep := related.storageSpecURI(o.GetNamespace(), m); u != "" {
			uris, endpoint = append(uris, u), ep
		}
		break
	}
	if list, ok := spec["storageUris"].([]any); ok {
		for _, item := range list {
			if m, ok := item.(map[string]any); ok {
				if s, ok := m["uri"].(string); ok && s != "" {
					uris = append(uris, s)
				}
			}
		}
	}
	for _, c := range ps.Containers {
		for _, e := range c.Env {
			if e.Name == storageURIEnv && e.Value != "" {
				uris = append(uris, e.Value)
			}
		}
	}
	var download []string
	for _, u := range uris {
		if !slices.ContainsFunc(noDownload, func(p string) bool { return strings.HasPrefix(u, p) }) && !slices.Contains(download, u) {
			download = append(download, u)
		}
	}
	if len(download) > 0 {
		args := append([]string{}, download...)
		ps.InitContainers = append(ps.InitContainers, corev1.Container{
			Name: storageInitializer, Image: "kserve/storage-initializer",
			Args: append(args, modelDir), Env: related.s3Env(o.GetNamespace(), ps.ServiceAccountName, endpoint),
		})
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&ps)
	if err != nil {
		return nil, "spec." + comp + ": " + shorten(err.Error())
	}
	pod := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Pod", "spec": m}}
	pod.SetName(o.GetName() + "-" + comp)
	pod.SetNamespace(o.GetNamespace())
	// KServe copies the InferenceService's annotations and labels to the
	// component's pods, then the component's own over them.
	annotations := maps.Clone(o.GetAnnotations())
	compAnnotations, _, _ := unstructured.NestedStringMap(spec, "annotations")
	annotations = union(annotations, compAnnotations)
	lbls := union(maps.Clone(o.GetLabels()), map[string]string{"serving.kserve.io/inferenceservice": o.GetName(), isvcComponentsLabel: comp})
	compLabels, _, _ := unstructured.NestedStringMap(spec, "labels")
	pod.SetAnnotations(annotations)
	pod.SetLabels(union(lbls, compLabels))
	pr := &podRun{role: comp, pod: pod, kserve: true, annotationsPath: []string{"metadata", "annotations"}}
	if _, ok := compAnnotations[excludeOutboundAnnotation]; ok {
		pr.annotationsPath = []string{"spec", comp, "annotations"}
	}
	return pr, ""
}

func union(a, b map[string]string) map[string]string {
	if a == nil {
		a = map[string]string{}
	}
	maps.Copy(a, b)
	return a
}

// afterKServe does what KServe's pod webhook does once Istio injected a
// component's pod (SetIstioCniSecurityContext): the storage initializer runs
// as the UID of the serving.kserve.io/storage-initializer-uid annotation, or,
// under Istio CNI with istio-proxy as a regular container, as the proxy's UID
// so that its traffic bypasses a proxy that has not started.
func afterKServe(tpl *corev1.PodTemplateSpec) {
	var si *corev1.Container
	for i := range tpl.Spec.InitContainers {
		if tpl.Spec.InitContainers[i].Name == storageInitializer {
			si = &tpl.Spec.InitContainers[i]
		}
	}
	if si == nil {
		return
	}
	setUID := func(uid int64) {
		if si.SecurityContext == nil {
			si.SecurityContext = &corev1.SecurityContext{}
		}
		si.SecurityContext.RunAsUser = &uid
	}
	if v, ok := tpl.Annotations[storageUIDAnno]; ok {
		if uid, err := strconv.ParseInt(v, 10, 64); err == nil {
			setUID(uid)
		}
		return
	}
	if slices.ContainsFunc(tpl.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == inject.InitContainer }) ||
		tpl.Annotations[interceptionAnno] != "REDIRECT" || tpl.Annotations[sidecarStatusAnno] == "" {
		return
	}
	for _, c := range tpl.Spec.Containers {
		if c.Name == inject.ProxyContainer {
			uid := int64(proxyUID)
			if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
				uid = *c.SecurityContext.RunAsUser
			}
			setUID(uid)
		}
	}
}

// relatedObjects are the objects of the input that tell where KServe
// downloads from: ServiceAccounts, Secrets, KServe's ConfigMap.
type relatedObjects struct {
	objs map[string]*unstructured.Unstructured
	// s3Endpoint is the cluster-wide endpoint of inferenceservice-config.
	s3Endpoint string
}

func newRelatedObjects(objs []*unstructured.Unstructured) *relatedObjects {
	r := &relatedObjects{objs: map[string]*unstructured.Unstructured{}}
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceAccount", "Secret":
			r.objs[o.GetKind()+"/"+o.GetNamespace()+"/"+o.GetName()] = o
		case "ConfigMap":
			if o.GetName() != kserveConfigMap {
				continue
			}
			creds, _, _ := unstructured.NestedString(o.Object, "data", "credentials")
			var c struct {
				S3 struct {
					S3Endpoint string `json:"s3Endpoint"`
				} `json:"s3"`
			}
			if json.Unmarshal([]byte(creds), &c) == nil && c.S3.S3Endpoint != "" {
				r.s3Endpoint = c.S3.S3Endpoint
			}
		}
	}
	return r
}

func (r *relatedObjects) get(kind, ns, name string) *unstructured.Unstructured {
	return r.objs[kind+"/"+ns+"/"+name]
}

// s3Env is the endpoint KServe's credential builder gives the storage
// initializer: the one of the storage spec, else the annotation of a Secret
// of the component's ServiceAccount, else inferenceservice-config's.
func (r *relatedObjects) s3Env(ns, serviceAccount, specEndpoint string) []corev1.EnvVar {
	endpoint := specEndpoint
	if endpoint == "" {
		endpoint = r.accountEndpoint(ns, serviceAccount)
	}
	if endpoint == "" {
		endpoint = r.s3Endpoint
	}
	if endpoint == "" {
		return nil
	}
	return []corev1.EnvVar{{Name: "S3_ENDPOINT", Value: endpoint}}
}

func (r *relatedObjects) accountEndpoint(ns, serviceAccount string) string {
	if serviceAccount == "" {
		serviceAccount = "default"
	}
	sa := r.get("ServiceAccount", ns, serviceAccount)
	if sa == nil {
		return ""
	}
	secrets, _, _ := unstructured.NestedSlice(sa.Object, "secrets")
	for _, s := range secrets {
		m, _ := s.(map[string]any)
		name, _ := m["name"].(string)
		if sec := r.get("Secret", ns, name); sec != nil && sec.GetAnnotations()[s3EndpointAnno] != "" {
			return sec.GetAnnotations()[s3EndpointAnno]
		}
	}
	return ""
}

// storageSpecURI is the location of a model given as `storage` (a key of the
// storage-config Secret and a path), and the endpoint of that key. Without
// the Secret in the input, the location is only named.
func (r *relatedObjects) storageSpecURI(ns string, impl map[string]any) (uri, endpoint string) {
	key, _, _ := unstructured.NestedString(impl, "storage", "key")
	p, _, _ := unstructured.NestedString(impl, "storage", "path")
	if key == "" {
		return "", ""
	}
	unknown := storageSpecSecret + ":" + key + "/" + p
	sec := r.get("Secret", ns, storageSpecSecret)
	if sec == nil {
		return unknown, ""
	}
	raw, _, _ := unstructured.NestedString(sec.Object, "stringData", key)
	if raw == "" {
		b, _, _ := unstructured.NestedString(sec.Object, "data", key)
		dec, _ := base64.StdEncoding.DecodeString(b)
		raw = string(dec)
	}
	var cfg struct {
		Type        string `json:"type"`
		Bucket      string `json:"bucket"`
		EndpointURL string `json:"endpoint_url"`
	}
	if json.Unmarshal([]byte(raw), &cfg) != nil || cfg.Type == "" {
		return unknown, ""
	}
	bucket, _, _ := unstructured.NestedString(impl, "storage", "parameters", "bucket")
	if bucket == "" {
		bucket = cfg.Bucket
	}
	return cfg.Type + "://" + bucket + "/" + p, cfg.EndpointURL
}

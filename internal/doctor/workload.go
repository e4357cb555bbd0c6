package doctor

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/pod-security-admission/api"

	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/podsecurity"
)

// Finding ids of workload checks.
const (
	InitBeforeProxy  = "KF001" // an init container runs with its traffic captured and no proxy yet
	InitEgress       = "KF002" // an init container needs egress outside the mesh through the sidecar
	StorageEgress    = "KF003" // a KServe storage initializer needs egress outside the mesh
	ProxyUID         = "KF004" // a container runs as the proxy's UID
	PodSecurityLevel = "KF005" // the injected pod needs a level its namespace does not allow
)

// Annotations and values the checks read and the fixes write.
const (
	excludeOutboundAnnotation = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
	excludeAll                = "0.0.0.0/0"
	proxyUID                  = 1337
	injectAnnotation          = "sidecar.istio.io/inject"
)

// WorkloadOptions say how the workloads would be injected and admitted.
type WorkloadOptions struct {
	Injector *inject.Injector
	// Levels are the Pod Security levels namespaces enforce, where known.
	Levels map[string]api.Level
	// EgressRestricted, when not empty, says why the mesh blocks egress to
	// hosts it does not know (REGISTRY_ONLY, a mesh-wide Sidecar).
	EgressRestricted string
}

// CheckWorkloads checks every workload in files. Namespace objects in files
// add to the known levels.
func CheckWorkloads(files []*File, o WorkloadOptions) *Report {
	var docs []*unstructured.Unstructured
	for _, f := range files {
		for _, d := range f.Docs {
			docs = append(docs, d.Object)
		}
	}
	levels := podsecurity.NamespaceLevels(docs)
	for k, v := range o.Levels {
		if _, inFiles := levels[k]; !inFiles {
			levels[k] = v
		}
	}
	r := &Report{}
	o.Levels = levels
	for _, f := range files {
		for _, d := range f.Docs {
			if d.Object.GetKind() == "Namespace" {
				continue
			}
			w, note := workloadOf(d)
			if w == nil {
				r.Skipped = append(r.Skipped, note)
				continue
			}
			r.Checked++
			r.Findings = append(r.Findings, w.check(o)...)
		}
	}
	r.sort()
	return r
}

// workload is a document that runs pods, with the pod it runs.
type workload struct {
	doc *Document
	key string
	// pod is the object handed to the injector: the document itself, or the
	// pod KServe or the notebook controller would create from it.
	pod *unstructured.Unstructured
	// specPath is where the pod spec is in the document, for fixes; nil when
	// the pod is made by a controller.
	specPath []string
	// storageURI is the model an InferenceService downloads.
	storageURI string
}

func workloadOf(d *Document) (*workload, string) {
	o := d.Object
	w := &workload{doc: d, key: object.Key(o)}
	switch {
	case object.HasPodTemplate(o):
		w.pod = o
		w.specPath = append(append([]string{}, object.PodTemplatePath(o)...), "spec")
	case o.GetKind() == "InferenceService" && strings.HasPrefix(o.GetAPIVersion(), "serving.kserve.io/"):
		w.pod, w.storageURI = predictorPod(o)
	case o.GetKind() == "Notebook" && strings.HasPrefix(o.GetAPIVersion(), "kubeflow.org/"):
		w.pod = notebookPod(o)
		w.specPath = []string{"spec", "template", "spec"}
	default:
		return nil, fmt.Sprintf("%s (%s): not a workload", w.key, d.Source)
	}
	return w, ""
}

// predictorPod is the pod KServe runs for an InferenceService: its
// annotations and labels, and, for a model it downloads, the storage
// initializer before the model server.
func predictorPod(isvc *unstructured.Unstructured) (*unstructured.Unstructured, string) {
	predictor, _, _ := unstructured.NestedMap(isvc.Object, "spec", "predictor")
	uri := ""
	for _, v := range predictor {
		if m, ok := v.(map[string]any); ok {
			if s, ok := m["storageUri"].(string); ok {
				uri = s
			}
		}
	}
	spec := map[string]any{"containers": []any{map[string]any{"name": "kserve-container", "image": "kserve/model-server"}}}
	if uri != "" && !strings.HasPrefix(uri, "pvc://") {
		spec["initContainers"] = []any{map[string]any{
			"name": "storage-initializer", "image": "kserve/storage-initializer",
			"args": []any{uri, "/mnt/models"},
		}}
	}
	for _, k := range []string{"serviceAccountName", "securityContext"} {
		if v, ok := predictor[k]; ok {
			spec[k] = v
		}
	}
	pod := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": isvc.GetName() + "-predictor", "namespace": isvc.GetNamespace()},
		"spec":     spec,
	}}
	pod.SetAnnotations(isvc.GetAnnotations())
	pod.SetLabels(isvc.GetLabels())
	return pod, uri
}

// notebookPod is the pod of a Kubeflow Notebook's template.
func notebookPod(nb *unstructured.Unstructured) *unstructured.Unstructured {
	tpl, _, _ := unstructured.NestedMap(nb.Object, "spec", "template")
	pod := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Pod"}}
	if m, ok := tpl["metadata"].(map[string]any); ok {
		pod.Object["metadata"] = m
	}
	pod.Object["spec"] = tpl["spec"]
	pod.SetName(nb.GetName())
	pod.SetNamespace(nb.GetNamespace())
	return pod
}

func (w *workload) finding(id string, sev Severity, container, reason, fix string) Finding {
	return Finding{ID: id, Severity: sev, Object: w.key, Container: container, Source: w.doc.Source, Reason: reason, Fix: fix}
}

// check injects the workload's pod and reports what it can prove.
func (w *workload) check(o WorkloadOptions) []Finding {
	tpl, err := object.PodTemplate(w.pod)
	if err != nil || tpl == nil {
		return []Finding{w.finding("KF000", Error, "", fmt.Sprintf("cannot read the pod template: %v", err), "fix the manifest")}
	}
	if tpl.Annotations[injectAnnotation] == "false" || tpl.Labels[injectAnnotation] == "false" || tpl.Spec.HostNetwork {
		return nil
	}
	injected, err := o.Injector.Inject(w.pod)
	if err != nil {
		return []Finding{w.finding("KF000", Error, "", err.Error(), "fix the manifest so that Istio's injector accepts it")}
	}
	after, err := object.PodTemplate(injected)
	if err != nil {
		return []Finding{w.finding("KF000", Error, "", err.Error(), "fix the manifest")}
	}
	var out []Finding
	out = append(out, w.checkInitContainers(tpl, after, o)...)
	out = append(out, w.checkProxyUID(tpl)...)
	if f := w.checkPodSecurity(tpl, after, o); f != nil {
		out = append(out, *f)
	}
	return out
}

// bypassed reports whether the pod's outbound traffic skips the sidecar
// entirely.
func bypassed(tpl *corev1.PodTemplateSpec) bool {
	for _, r := range strings.Split(tpl.Annotations[excludeOutboundAnnotation], ",") {
		if strings.TrimSpace(r) == excludeAll {
			return true
		}
	}
	return false
}

// effectiveUID is the UID container c runs as, if set.
func effectiveUID(spec *corev1.PodSpec, c *corev1.Container) (int64, bool) {
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		return *c.SecurityContext.RunAsUser, true
	}
	if spec.SecurityContext != nil && spec.SecurityContext.RunAsUser != nil {
		return *spec.SecurityContext.RunAsUser, true
	}
	return 0, false
}

func (w *workload) checkInitContainers(before, after *corev1.PodTemplateSpec, o WorkloadOptions) []Finding {
	if bypassed(before) {
		return nil
	}
	proxyAt := -1
	for i, c := range after.Spec.InitContainers {
		if c.Name == inject.ProxyContainer {
			proxyAt = i
		}
	}
	var out []Finding
	for i := range before.Spec.InitContainers {
		c := &before.Spec.InitContainers[i]
		if uid, ok := effectiveUID(&before.Spec, c); ok && uid == proxyUID {
			continue
		}
		at := slices.IndexFunc(after.Spec.InitContainers, func(x corev1.Container) bool { return x.Name == c.Name })
		ev := network(c)
		fix := fmt.Sprintf("set securityContext.runAsUser: %d on init container %s, so that its traffic bypasses the sidecar", proxyUID, c.Name)
		storage := w.storageURI != "" && c.Name == "storage-initializer"
		switch {
		case proxyAt < 0 || at < proxyAt:
			sev := Warning
			why := "it may need the network"
			if ev.any() {
				sev, why = Error, "it "+ev.String()
			}
			mode := "istio-proxy runs as a regular container, which starts after every init container"
			if proxyAt >= 0 {
				mode = "it runs before the istio-proxy native sidecar"
			}
			f := w.finding(InitBeforeProxy, sev, c.Name,
				fmt.Sprintf("its traffic is redirected to the sidecar, but %s: every connection fails; %s", mode, why), fix)
			f.edit = w.uidEdit(i)
			out = append(out, f)
		case storage && ev.leavesMesh():
			sev := Warning
			why := "it fails when the mesh blocks egress to unknown hosts or the proxy is not ready yet"
			if o.EgressRestricted != "" {
				sev, why = Error, "the mesh blocks it: "+o.EgressRestricted
			}
			f := w.finding(StorageEgress, sev, c.Name,
				fmt.Sprintf("the storage initializer downloads %s from outside the mesh through the sidecar; %s", w.storageURI, why),
				fmt.Sprintf("annotate the InferenceService with %s: %q", excludeOutboundAnnotation, excludeAll))
			f.edit = &edit{path: []string{"metadata", "annotations", excludeOutboundAnnotation}, value: excludeAll, quoted: true}
			out = append(out, f)
		case ev.leavesMesh():
			sev := Warning
			why := "it fails when the mesh blocks egress to unknown hosts"
			if o.EgressRestricted != "" {
				sev, why = Error, "the mesh blocks it: "+o.EgressRestricted
			}
			f := w.finding(InitEgress, sev, c.Name, fmt.Sprintf("it %s through the sidecar; %s", ev, why), fix)
			f.edit = w.uidEdit(i)
			out = append(out, f)
		}
	}
	return out
}

// uidEdit sets runAsUser 1337 on init container i, where the document holds
// the pod spec.
func (w *workload) uidEdit(i int) *edit {
	if w.specPath == nil {
		return nil
	}
	p := append(append([]string{}, w.specPath...), "initContainers", fmt.Sprintf("#%d", i), "securityContext", "runAsUser")
	return &edit{path: p, value: fmt.Sprint(proxyUID)}
}

func (w *workload) checkProxyUID(tpl *corev1.PodTemplateSpec) []Finding {
	var out []Finding
	for i := range tpl.Spec.Containers {
		c := &tpl.Spec.Containers[i]
		if uid, ok := effectiveUID(&tpl.Spec, c); ok && uid == proxyUID && !inject.IsIstioContainer(c.Name) {
			out = append(out, w.finding(ProxyUID, Warning, c.Name,
				fmt.Sprintf("it runs as UID %d, the sidecar's own: its outbound traffic bypasses the sidecar, so it gets no mTLS, authorization or telemetry", proxyUID),
				"run the container as another UID"))
		}
	}
	for i := range tpl.Spec.InitContainers {
		c := &tpl.Spec.InitContainers[i]
		ev := network(c)
		if uid, ok := effectiveUID(&tpl.Spec, c); ok && uid == proxyUID && len(ev.inside) > 0 {
			out = append(out, w.finding(ProxyUID, Info, c.Name,
				fmt.Sprintf("it runs as UID %d, so its connections to %s bypass the sidecar without mTLS; services that require mTLS or check principals refuse them",
					proxyUID, strings.Join(ev.inside, ", ")),
				"keep UID 1337 only for init containers that reach outside the mesh"))
		}
	}
	return out
}

func (w *workload) checkPodSecurity(before, after *corev1.PodTemplateSpec, o WorkloadOptions) *Finding {
	ns := w.pod.GetNamespace()
	level, known := o.Levels[ns]
	if !known || level == api.LevelPrivileged {
		return nil
	}
	if ok, _, _ := podsecurity.Evaluate(level, before); !ok {
		return nil // the workload itself does not fit; not the mesh's doing
	}
	ok, reason, err := podsecurity.Evaluate(level, after)
	if err != nil || ok {
		return nil
	}
	f := w.finding(PodSecurityLevel, Error, "",
		fmt.Sprintf("namespace %s enforces the %s Pod Security level, which the injected pod violates (%s): the API server rejects its pods", ns, level, reason),
		fmt.Sprintf("use an overlay with Istio CNI, or label namespace %s %s=privileged", ns, podsecurity.EnforceLabel))
	return &f
}

// evidence is what a container's command, arguments, environment and image
// say about the network it needs.
type evidence struct {
	// outside and inside are the destinations outside and inside the cluster.
	outside, inside []string
	tool            string
}

func (e evidence) any() bool        { return len(e.outside) > 0 || len(e.inside) > 0 || e.tool != "" }
func (e evidence) leavesMesh() bool { return len(e.outside) > 0 }

func (e evidence) String() string {
	var parts []string
	if len(e.outside) > 0 {
		parts = append(parts, "reaches "+strings.Join(e.outside, ", "))
	}
	if len(e.inside) > 0 {
		parts = append(parts, "reaches "+strings.Join(e.inside, ", "))
	}
	if e.tool != "" && len(parts) == 0 {
		parts = append(parts, "runs "+e.tool+", a network tool")
	}
	return strings.Join(parts, " and ")
}

// urlPattern finds the hosts of URLs: http(s), object stores, git, registries.
var urlPattern = regexp.MustCompile(`\b(?:https?|s3|gs|hf|oci|git)://([A-Za-z0-9._-]+)|\bgit@([A-Za-z0-9._-]+):`)

// networkTools are images whose only job is to move data over the network.
var networkTools = []string{"storage-initializer", "git-sync", "curl", "wget", "aws-cli", "cloud-sdk", "rclone", "gsutil"}

// endpointEnv are the variables object-store clients read their endpoint
// from.
var endpointEnv = []string{"S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT"}

// network reads the evidence of container c. Hosts that end in .svc or
// .cluster.local, or have no dot, are in the cluster; the rest are outside.
// Object-store URLs (s3://, gs://, hf://) are outside, unless an S3 endpoint
// variable points into the cluster.
func network(c *corev1.Container) evidence {
	var e evidence
	texts := append(append([]string{}, c.Command...), c.Args...)
	endpoint := ""
	for _, env := range c.Env {
		texts = append(texts, env.Value)
		if slices.Contains(endpointEnv, env.Name) {
			endpoint = strings.TrimPrefix(strings.TrimPrefix(env.Value, "http://"), "https://")
		}
	}
	for _, t := range texts {
		for _, m := range urlPattern.FindAllStringSubmatch(t, -1) {
			scheme, host := strings.SplitN(m[0], ":", 2)[0], m[1]+m[2]
			switch {
			case scheme == "s3" && endpoint != "" && inCluster(strings.SplitN(endpoint, ":", 2)[0]):
				e.inside = appendOnce(e.inside, endpoint)
			case scheme == "s3" || scheme == "gs" || scheme == "hf":
				e.outside = appendOnce(e.outside, m[0])
			case inCluster(host):
				e.inside = appendOnce(e.inside, host)
			default:
				e.outside = appendOnce(e.outside, host)
			}
		}
	}
	repo := strings.SplitN(path.Base(c.Image), ":", 2)[0]
	for _, t := range networkTools {
		if strings.Contains(repo, t) {
			e.tool = repo
		}
	}
	return e
}

// inCluster tells cluster hosts (name, name.namespace, name.namespace.svc,
// ....cluster.local) from public ones (with a public top-level domain).
func inCluster(host string) bool {
	if strings.HasSuffix(host, ".svc") || strings.HasSuffix(host, ".cluster.local") {
		return true
	}
	labels := strings.Split(host, ".")
	return len(labels) <= 2 && !slices.Contains(publicTLDs, labels[len(labels)-1])
}

// publicTLDs are top-level domains common in the URLs of data and code that
// workloads download; "name.namespace" hosts end in a namespace instead.
var publicTLDs = []string{"com", "org", "net", "io", "dev", "ai", "co", "cloud", "app", "edu", "gov", "info",
	"us", "uk", "eu", "de", "fr", "cn", "jp", "in", "ch", "nl", "ca", "au", "be", "se", "it", "es", "kr", "ru", "br"}

func appendOnce(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

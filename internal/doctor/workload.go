package doctor

import (
	"encoding/json"
	"fmt"
	"maps"
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
	Unreadable       = "KF000" // the workload cannot be read or injected
	InitBeforeProxy  = "KF001" // an init container runs with its traffic captured and no proxy yet
	InitEgress       = "KF002" // an init container's traffic through the sidecar
	StorageEgress    = "KF003" // a KServe storage initializer's download through the sidecar
	ProxyUID         = "KF004" // a container runs as the proxy's UID
	PodSecurityLevel = "KF005" // the injected pod needs a level its namespace does not allow
)

// Annotations, labels and values the checks read and the fixes write.
const (
	excludeOutboundAnnotation = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
	includeOutboundAnnotation = "traffic.sidecar.istio.io/includeOutboundIPRanges"
	nativeSidecarAnnotation   = "sidecar.istio.io/nativeSidecar"
	excludeAll                = "0.0.0.0/0"
	proxyUID                  = 1337
	injectionLabel            = "istio-injection"
	revisionLabel             = "istio.io/rev"
	dataplaneModeLabel        = "istio.io/dataplane-mode"
)

// WorkloadOptions say how the workloads would be injected and admitted, and
// where their traffic may go.
type WorkloadOptions struct {
	Injector *inject.Injector
	// Namespaces are the labels of namespaces known apart from the files
	// (from the installation or the cluster). Namespace objects in the files
	// replace them. Pods of namespaces known nowhere are judged as if their
	// namespace were labelled istio-injection=enabled, as Kubeflow labels
	// profile namespaces.
	Namespaces map[string]map[string]string
	// Mesh are the objects that decide where the sidecars send traffic: the
	// mesh ConfigMap, Sidecars, ServiceEntries and PeerAuthentications.
	// Those in the files are added to them.
	Mesh []*unstructured.Unstructured
	// Routing are the installation's Gateways, VirtualServices and gateway
	// Deployments, with which those of the files are routed.
	Routing []*unstructured.Unstructured
	// Analysis, when not nil, runs Istio's analyzers over the files and
	// the installation.
	Analysis *Analysis
}

// assumedNamespace are the labels of a namespace that is known nowhere.
var assumedNamespace = map[string]string{injectionLabel: "enabled"}

// CheckWorkloads checks every workload in files.
func CheckWorkloads(files []*File, o WorkloadOptions) *Report {
	c := &checker{opts: o, namespaces: maps.Clone(o.Namespaces), assumed: map[string]bool{}, injected: map[string]*corev1.PodTemplateSpec{}}
	if c.namespaces == nil {
		c.namespaces = map[string]map[string]string{}
	}
	var objs []*unstructured.Unstructured
	for _, f := range files {
		for _, d := range f.Docs {
			objs = append(objs, d.Object)
			if d.Object.GetKind() == "Namespace" {
				c.namespaces[d.Object.GetName()] = d.Object.GetLabels()
			}
		}
	}
	c.traffic = newTraffic(append(slices.Clone(o.Mesh), objs...))
	c.related = newRelatedObjects(objs)
	r := &Report{}
	for _, f := range files {
		r.Notes = append(r.Notes, f.Notes...)
		for _, d := range f.Docs {
			w, note := workloadOf(d, c.related)
			switch {
			case note != "":
				r.Notes = append(r.Notes, fmt.Sprintf("%s (%s): %s, skipped", object.Key(d.Object), d.Source, note))
			case w == nil:
				r.other(d.Object.GetKind())
			default:
				r.Checked++
				for _, pr := range w.pods {
					r.Findings = append(r.Findings, c.checkPod(w, pr)...)
				}
			}
		}
	}
	r.Findings = append(r.Findings, routingFindings(append(slices.Clone(o.Routing), objs...), sources(files))...)
	r.Notes = append(r.Notes, missingGateways(files, o.Routing)...)
	if o.Analysis != nil {
		findings, notes := o.Analysis.Files(files)
		r.Findings = append(r.Findings, findings...)
		r.Notes = append(r.Notes, notes...)
	}
	for _, ns := range slices.Sorted(maps.Keys(c.assumed)) {
		name := "namespace " + ns
		if ns == "" {
			name = "objects without a namespace"
		}
		r.Notes = append(r.Notes, fmt.Sprintf("%s: no Namespace in the input; judged as labelled %s=enabled, like a Kubeflow profile namespace", name, injectionLabel))
	}
	r.sort()
	return r
}

// sources says where an object of files was read, and "installation" for
// the others.
func sources(files []*File) func(*unstructured.Unstructured) string {
	m := map[*unstructured.Unstructured]string{}
	for _, f := range files {
		for _, d := range f.Docs {
			m[d.Object] = d.Source
		}
	}
	return func(o *unstructured.Unstructured) string {
		if s, ok := m[o]; ok {
			return s
		}
		return installationSource
	}
}

type checker struct {
	opts       WorkloadOptions
	namespaces map[string]map[string]string
	// assumed are the namespaces judged with assumedNamespace.
	assumed map[string]bool
	// injected holds the pod templates Istio's injector made, by injectionKey.
	injected map[string]*corev1.PodTemplateSpec
	traffic  *traffic
	related  *relatedObjects
}

// namespaceLabels are the labels of namespace ns, known or assumed.
func (c *checker) namespaceLabels(ns string) map[string]string {
	if l, ok := c.namespaces[ns]; ok {
		return l
	}
	c.assumed[ns] = true
	return assumedNamespace
}

// workload is a document that runs pods, with the pods it runs.
type workload struct {
	doc  *Document
	key  string
	pods []*podRun
}

// podRun is one kind of pod a workload runs.
type podRun struct {
	// role names the pod among the workload's: an InferenceService
	// component, a replica type; "" for the only one.
	role string
	// pod is the pod as the API server receives it, before Istio injects it.
	pod *unstructured.Unstructured
	// specPath is where the pod spec is in the document, for fixes; nil when
	// a controller builds the pod from other fields.
	specPath []string
	// annotationsPath is where annotations of the pod go in the document,
	// for the annotation fix of InferenceServices.
	annotationsPath []string
	// kserve is true for the pods of an InferenceService, which KServe's
	// webhook changes.
	kserve bool
}

// workloadOf returns the pods that d runs; nil for an object that runs none,
// with a note when d should run pods but cannot be read.
func workloadOf(d *Document, related *relatedObjects) (*workload, string) {
	o := d.Object
	w := &workload{doc: d, key: object.Key(o)}
	group, _, _ := strings.Cut(o.GetAPIVersion(), "/")
	builtin := group == "apps" || group == "batch" || !strings.Contains(o.GetAPIVersion(), "/")
	switch {
	case o.GetKind() == "Pod" && builtin:
		w.pods = []*podRun{{pod: o.DeepCopy(), specPath: []string{"spec"}}}
	case object.HasPodTemplate(o) && builtin:
		pr, note := templatePod(o, "", object.PodTemplatePath(o))
		if note != "" {
			return nil, note
		}
		w.pods = []*podRun{pr}
	case o.GetKind() == "InferenceService" && group == "serving.kserve.io":
		pods, note := isvcPods(o, related)
		if note != "" {
			return nil, note
		}
		w.pods = pods
	case o.GetKind() == "Notebook" && group == "kubeflow.org",
		o.GetKind() == "Service" && group == "serving.knative.dev":
		pr, note := templatePod(o, "", []string{"spec", "template"})
		if note != "" {
			return nil, note
		}
		w.pods = []*podRun{pr}
	case group == "kubeflow.org":
		w.pods = replicaPods(o)
	}
	if len(w.pods) == 0 {
		return nil, ""
	}
	return w, ""
}

// templatePod is the pod of the template at tplPath in o.
func templatePod(o *unstructured.Unstructured, role string, tplPath []string) (*podRun, string) {
	tpl, ok, err := unstructured.NestedMap(o.Object, tplPath...)
	if err != nil {
		return nil, strings.Join(tplPath, ".") + " is not a pod template"
	}
	if !ok {
		return nil, "no " + strings.Join(tplPath, ".")
	}
	pod := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Pod"}}
	if m, ok := tpl["metadata"].(map[string]any); ok {
		pod.Object["metadata"] = m
	}
	if s, ok := tpl["spec"]; ok {
		pod.Object["spec"] = s
	}
	name := o.GetName()
	if role != "" {
		name += "-" + strings.ToLower(role)
	}
	pod.SetName(name)
	pod.SetNamespace(o.GetNamespace())
	return &podRun{role: role, pod: pod, specPath: append(slices.Clone(tplPath), "spec")}, ""
}

// replicaPods are the pods of Kubeflow's training jobs (TFJob, PyTorchJob,
// MPIJob, XGBoostJob, PaddleJob, JAXJob): one per replica type of
// spec.<framework>ReplicaSpecs.
func replicaPods(o *unstructured.Unstructured) []*podRun {
	spec, _, _ := unstructured.NestedMap(o.Object, "spec")
	var out []*podRun
	for _, field := range slices.Sorted(maps.Keys(spec)) {
		roles, ok := spec[field].(map[string]any)
		if !ok || !strings.HasSuffix(field, "ReplicaSpecs") {
			continue
		}
		for _, role := range slices.Sorted(maps.Keys(roles)) {
			if pr, note := templatePod(o, role, []string{"spec", field, role, "template"}); note == "" {
				out = append(out, pr)
			}
		}
	}
	return out
}

func (w *workload) finding(pr *podRun, id string, sev Severity, container, reason, fix string) Finding {
	subject := container
	if pr.role != "" && container != "" {
		subject = pr.role + "/" + container
	}
	return Finding{ID: id, Severity: sev, Object: w.key, Container: subject, Source: w.doc.Source, Reason: reason, Fix: fix}
}

// podCheck is one pod of a workload, before and after Istio's injection.
type podCheck struct {
	*checker
	w  *workload
	pr *podRun
	ns string
	// original is the pod as the document has it; before is the same without
	// Istio's containers, after the pod as it runs.
	original, before, after *corev1.PodTemplateSpec
}

// checkPod injects one pod of w (unless it already is) and reports what it
// can prove.
func (c *checker) checkPod(w *workload, pr *podRun) []Finding {
	tpl, err := object.PodTemplate(pr.pod)
	if err != nil {
		return []Finding{w.finding(pr, Unreadable, Error, "", "cannot read the pod template: "+shorten(err.Error()), "fix the manifest")}
	}
	p := &podCheck{checker: c, w: w, pr: pr, ns: pr.pod.GetNamespace(), original: tpl}
	if injected(tpl) {
		// Output of kubectl get or istioctl kube-inject: judged as it is.
		p.before, p.after = withoutIstio(tpl), tpl
	} else {
		if tpl.Spec.HostNetwork || !c.opts.Injector.Selects(c.namespaceLabels(p.ns), tpl.Labels) {
			return nil // no sidecar: Istio's webhooks do not select it
		}
		if p.after, err = c.inject(pr.pod); err != nil {
			return []Finding{w.finding(pr, Unreadable, Error, "", shorten(err.Error()), "fix the manifest so that Istio's injector accepts it")}
		}
		p.before = tpl
	}
	if !hasContainer(p.after, inject.ProxyContainer) {
		return nil // injection disabled by the pod's annotation or label
	}
	if pr.kserve {
		afterKServe(p.after)
	}
	out := p.initContainers()
	out = append(out, p.proxyUID()...)
	if f := p.podSecurity(); f != nil {
		out = append(out, *f)
	}
	return out
}

// inject returns the pod template of pod after Istio's injector, as a copy
// of its own. Pods that differ only by name and namespace share one
// injection: Kubeflow makes the same Deployments in every profile, and
// what the injector writes of a pod's name and namespace (the workload
// name and owner in the proxy's environment) is nothing the checks read.
func (c *checker) inject(pod *unstructured.Unstructured) (*corev1.PodTemplateSpec, error) {
	key, err := injectionKey(pod)
	if err != nil {
		return nil, err
	}
	if tpl, ok := c.injected[key]; ok {
		return tpl.DeepCopy(), nil
	}
	out, err := c.opts.Injector.Inject(pod)
	if err != nil {
		return nil, fmt.Errorf("Istio's injector refuses it: %w", err)
	}
	tpl, err := object.PodTemplate(out)
	if err != nil {
		return nil, err
	}
	c.injected[key] = tpl
	return tpl.DeepCopy(), nil
}

// injectionKey is pod without its name and namespace; the pod is not
// copied, only the maps on the way to what is left out.
func injectionKey(pod *unstructured.Unstructured) (string, error) {
	anon := maps.Clone(pod.Object)
	if md, ok := anon["metadata"].(map[string]any); ok {
		md = maps.Clone(md)
		delete(md, "name")
		delete(md, "generateName")
		delete(md, "namespace")
		anon["metadata"] = md
	}
	b, err := json.Marshal(anon)
	return string(b), err
}

// injected reports whether tpl already went through Istio's injection, which
// records what it added in the sidecar.istio.io/status annotation. Containers
// named like Istio's without it are overrides that injection merges.
func injected(tpl *corev1.PodTemplateSpec) bool {
	return tpl.Annotations[sidecarStatusAnno] != ""
}

func hasContainer(tpl *corev1.PodTemplateSpec, name string) bool {
	has := func(c corev1.Container) bool { return c.Name == name }
	return slices.ContainsFunc(tpl.Spec.InitContainers, has) || slices.ContainsFunc(tpl.Spec.Containers, has)
}

// withoutIstio is tpl without the containers Istio's injector adds.
func withoutIstio(tpl *corev1.PodTemplateSpec) *corev1.PodTemplateSpec {
	out := tpl.DeepCopy()
	user := func(c corev1.Container) bool { return inject.IsIstioContainer(c.Name) }
	out.Spec.InitContainers = slices.DeleteFunc(out.Spec.InitContainers, user)
	out.Spec.Containers = slices.DeleteFunc(out.Spec.Containers, user)
	return out
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

// needsRoot says why container c cannot run as UID 1337, or "".
func needsRoot(spec *corev1.PodSpec, c *corev1.Container) string {
	sc := c.SecurityContext
	switch {
	case sc != nil && sc.Privileged != nil && *sc.Privileged:
		return "it is privileged"
	case sc != nil && sc.Capabilities != nil && len(sc.Capabilities.Add) > 0:
		caps := make([]string, len(sc.Capabilities.Add))
		for i, x := range sc.Capabilities.Add {
			caps[i] = string(x)
		}
		return "it adds the capabilities " + strings.Join(caps, ", ")
	}
	if uid, ok := effectiveUID(spec, c); ok && uid == 0 {
		return "it runs as root (runAsUser: 0)"
	}
	return ""
}

// redirects reports whether the pod sends container c's connection to d
// (nil: any connection) to the sidecar.
func (p *podCheck) redirects(c *corev1.Container, d *destination) bool {
	if uid, ok := effectiveUID(&p.after.Spec, c); ok && uid == proxyUID {
		return false
	}
	a := p.after.Annotations
	if a[interceptionAnno] == "NONE" {
		return false
	}
	for _, r := range strings.Split(a[excludeOutboundAnnotation], ",") {
		if r = strings.TrimSpace(r); r == excludeAll || r == "*" {
			return false
		}
	}
	include, set := a[includeOutboundAnnotation]
	switch {
	case !set, include == "*", strings.Contains(include, excludeAll):
		return true
	case include == "":
		return false
	}
	// Only the listed ranges, the cluster's in practice.
	return d == nil || d.inCluster
}

// proxyIndex is the position of istio-proxy among the init containers when
// it is a native sidecar, or -1.
func proxyIndex(tpl *corev1.PodTemplateSpec) int {
	return slices.IndexFunc(tpl.Spec.InitContainers, func(c corev1.Container) bool {
		return c.Name == inject.ProxyContainer && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
	})
}

func (p *podCheck) initContainers() []Finding {
	proxyAt := proxyIndex(p.after)
	var out []Finding
	for _, bc := range p.before.Spec.InitContainers {
		if inject.IsIstioContainer(bc.Name) {
			continue // an override of Istio's own container, merged by injection
		}
		named := func(x corev1.Container) bool { return x.Name == bc.Name }
		at := slices.IndexFunc(p.after.Spec.InitContainers, named)
		i := slices.IndexFunc(p.original.Spec.InitContainers, named) // in the document
		if at < 0 || i < 0 {
			continue
		}
		c := &p.after.Spec.InitContainers[at] // as it runs, after every webhook
		if !p.redirects(c, nil) {
			continue
		}
		ev := network(c)
		var f *Finding
		if proxyAt < 0 || at < proxyAt {
			f = p.beforeProxy(i, c, ev, proxyAt >= 0)
		} else {
			f = p.egress(i, c, ev)
		}
		if f != nil {
			out = append(out, *f)
		}
	}
	return out
}

// beforeProxy reports an init container whose traffic goes to a proxy that
// is not running yet.
func (p *podCheck) beforeProxy(i int, c *corev1.Container, ev evidence, native bool) *Finding {
	var dests []destination
	for _, d := range ev.dests {
		if p.redirects(c, &d) {
			dests = append(dests, d)
		}
	}
	sev, why := Warning, "it may need the network"
	switch {
	case len(ev.dests) > 0 && len(dests) == 0:
		return nil // every destination bypasses the sidecar
	case len(dests) > 0:
		sev, why = Error, "it reaches "+shown(dests)
	case ev.tool != "":
		sev, why = Error, "it runs "+ev.tool+", a network tool"
	}
	var reason string
	if native {
		reason = "it runs before the istio-proxy native sidecar has started, but its traffic is already redirected to it: every connection fails; " + why
	} else {
		reason = p.regularProxy() + ", which starts after every init container, but this container's traffic is already redirected to it: every connection fails; " + why
	}
	fix, e := p.remedy(i, c)
	if p.after.Annotations[nativeSidecarAnnotation] == "false" {
		fix += fmt.Sprintf(", or remove the annotation %s: \"false\" so that istio-proxy starts first", nativeSidecarAnnotation)
	}
	f := p.w.finding(p.pr, InitBeforeProxy, sev, c.Name, reason, fix)
	f.edit = e
	return &f
}

// regularProxy says why istio-proxy is not a native sidecar in this pod.
func (p *podCheck) regularProxy() string {
	switch v := p.opts.Injector.NativeSidecars; {
	case p.after.Annotations[nativeSidecarAnnotation] == "false":
		return fmt.Sprintf("istio-proxy runs as a regular container (annotation %s: \"false\")", nativeSidecarAnnotation)
	case v != "true" && !injected(p.before):
		return fmt.Sprintf("istio-proxy runs as a regular container (istiod %s=%q)", inject.NativeSidecarsEnv, v)
	}
	return "istio-proxy runs as a regular container"
}

// egress reports the connections of an init container that starts once the
// native sidecar is ready: those the proxy refuses, and those that leave it
// without mTLS.
func (p *podCheck) egress(i int, c *corev1.Container, ev evidence) *Finding {
	sev := Severity("")
	var parts, remedies []string
	for _, d := range ev.dests {
		if !p.redirects(c, &d) {
			continue
		}
		s, part, remedy := p.connection(d)
		if s == "" {
			continue
		}
		parts, remedies = append(parts, part), appendOnce(remedies, remedy)
		if sev == "" || s.AtLeast(sev) {
			sev = s
		}
	}
	if sev == "" {
		return nil
	}
	id, subject := InitEgress, "its traffic goes through istio-proxy, a native sidecar that is ready before it starts: "
	if p.pr.kserve && c.Name == storageInitializer {
		id, subject = StorageEgress, "the storage initializer downloads the model through istio-proxy, a native sidecar that is ready before it starts: "
	}
	fix, e := p.remedy(i, c)
	fix = strings.Join(append([]string{fix}, remedies...), "; or ")
	if sev == Info {
		fix = "where egress is restricted, " + fix
	}
	f := p.w.finding(p.pr, id, sev, c.Name, subject+strings.Join(parts, "; "), fix)
	f.edit = e
	return &f
}

// connection judges one connection through a ready sidecar: its severity ("":
// nothing to report), what happens to it, and a remedy besides bypassing the
// sidecar.
func (p *podCheck) connection(d destination) (Severity, string, string) {
	v := p.traffic.judge(p.ns, p.after.Labels, d)
	switch {
	case v.route == served:
		return "", "", ""
	case v.route == blocked && d.inCluster:
		return Error, fmt.Sprintf("the proxy refuses %s (%s)", d.shown, v.why),
			fmt.Sprintf("add namespace %s to the egress hosts of the Sidecar", d.namespaceOr(p.ns))
	case v.route == blocked:
		return Error, fmt.Sprintf("the proxy refuses %s (%s)", d.shown, v.why),
			fmt.Sprintf("add a ServiceEntry for %s", d.host)
	case d.inCluster:
		target := d.namespaceOr(p.ns)
		plain := fmt.Sprintf("it reaches %s through the passthrough cluster as plain text, without mTLS (%s)", d.shown, v.why)
		if pa := p.traffic.requiresMTLS(target); pa != "" {
			return Error, plain + ", which " + pa + " (mTLS STRICT) refuses",
				fmt.Sprintf("add namespace %s to the egress hosts of the Sidecar", target)
		}
		return Info, plain + ": destinations that require mTLS or check principals refuse it",
			fmt.Sprintf("add namespace %s to the egress hosts of the Sidecar", target)
	}
	return Info, fmt.Sprintf("%s leaves the mesh through the passthrough cluster, which works while the mesh allows any outbound traffic (ALLOW_ANY), and fails where egress is restricted (REGISTRY_ONLY)", d.shown),
		fmt.Sprintf("add a ServiceEntry for %s", d.host)
}

// remedy is the seed's fix for init container i (c as it runs): the
// annotation for an InferenceService, UID 1337 on the container where the
// manifest holds it and the container can run as that UID, else what to do by
// hand.
func (p *podCheck) remedy(i int, c *corev1.Container) (string, *edit) {
	if p.pr.kserve {
		fix := fmt.Sprintf("annotate the InferenceService with %s: %q (all outbound traffic of its pods bypasses the sidecar)", excludeOutboundAnnotation, excludeAll)
		if c.Name == storageInitializer {
			fix += fmt.Sprintf(" or %s: \"%d\" (only the download does)", storageUIDAnno, proxyUID)
		}
		return fix, &edit{path: append(slices.Clone(p.pr.annotationsPath), excludeOutboundAnnotation), value: excludeAll, quoted: true}
	}
	if why := needsRoot(&p.after.Spec, c); why != "" {
		return fmt.Sprintf("by hand: %s, so it cannot run as UID %d; move what it downloads into an init container of its own that runs as UID %d, or exclude the destinations' addresses from the sidecar with the pod annotation %s",
			why, proxyUID, proxyUID, excludeOutboundAnnotation), nil
	}
	fix := fmt.Sprintf("set securityContext.runAsUser: %d on init container %s, so that its traffic bypasses the sidecar", proxyUID, c.Name)
	if p.pr.specPath == nil || len(p.pr.pod.GetOwnerReferences()) > 0 {
		return fix + " (in the manifest of the workload that creates the pod)", nil
	}
	path := append(slices.Clone(p.pr.specPath), "initContainers", fmt.Sprintf("#%d", i), "securityContext", "runAsUser")
	return fix, &edit{path: path, value: fmt.Sprint(proxyUID)}
}

// proxyUID reports the user's containers that run as the proxy's UID: their
// outbound traffic bypasses the sidecar.
func (p *podCheck) proxyUID() []Finding {
	var out []Finding
	check := func(c *corev1.Container, init bool) {
		if inject.IsIstioContainer(c.Name) {
			return
		}
		if uid, ok := effectiveUID(&p.after.Spec, c); !ok || uid != proxyUID {
			return
		}
		inside := network(c).inside()
		if init && len(inside) == 0 {
			return // the seed's fix: it reaches outside the mesh without the sidecar
		}
		sev := Info
		reason := fmt.Sprintf("it runs as UID %d, the sidecar's own: its outbound traffic bypasses the sidecar, without mTLS, authorization or telemetry", proxyUID)
		fix := "run the container as another UID"
		if init {
			fix = fmt.Sprintf("keep UID %d only for init containers that reach outside the mesh", proxyUID)
		}
		if len(inside) > 0 {
			reason += "; it reaches " + shown(inside) + " as plain text"
			for _, d := range inside {
				if pa := p.traffic.requiresMTLS(d.namespaceOr(p.ns)); pa != "" {
					sev, reason = Error, reason+", which "+pa+" (mTLS STRICT) refuses"
					break
				}
			}
			if sev == Info {
				reason += ": destinations that require mTLS or check principals refuse it"
			}
		}
		out = append(out, p.w.finding(p.pr, ProxyUID, sev, c.Name, reason, fix))
	}
	for i := range p.after.Spec.InitContainers {
		check(&p.after.Spec.InitContainers[i], true)
	}
	for i := range p.after.Spec.Containers {
		check(&p.after.Spec.Containers[i], false)
	}
	return out
}

func (p *podCheck) podSecurity() *Finding {
	nsLabels, known := p.namespaces[p.ns]
	if !known {
		return nil // the namespace's level is not known
	}
	level, err := podsecurity.NamespaceLevel(nsLabels)
	if err != nil || level == api.LevelPrivileged {
		return nil
	}
	if ok, _, _ := podsecurity.Evaluate(level, p.before); !ok {
		return nil // the workload itself does not fit; not the mesh's doing
	}
	ok, reason, err := podsecurity.Evaluate(level, p.after)
	if err != nil || ok {
		return nil
	}
	f := p.w.finding(p.pr, PodSecurityLevel, Error, "",
		fmt.Sprintf("namespace %s enforces the %s Pod Security level, which the injected pod violates (%s): the API server rejects its pods", p.ns, level, reason),
		fmt.Sprintf("use an overlay with Istio CNI, or label namespace %s %s=privileged", p.ns, podsecurity.EnforceLabel))
	return &f
}

func appendOnce(list []string, s string) []string {
	if s == "" || slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// other counts an object that runs no pods.
func (r *Report) other(kind string) {
	if r.Other == nil {
		r.Other = map[string]int{}
	}
	r.Other[kind]++
}

// otherSummary is "N Kind, ..." for the objects that run no pods.
func (r *Report) otherSummary() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(r.Other)) {
		parts = append(parts, fmt.Sprintf("%d %s", r.Other[k], k))
	}
	return strings.Join(parts, ", ")
}

package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"golang.org/x/sync/errgroup"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/pod-security-admission/api"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/podsecurity"
	"github.com/kubeflow/kfistio/internal/revision"
)

// Finding ids of cluster checks.
const (
	NoControlPlane       = "KF100" // istiod is not there
	CNINotReady          = "KF101" // the CNI node agent is not ready on a node
	GKEOverlay           = "KF102" // GKE with a CNI binary directory GKE mounts read-only
	NativeSidecars       = "KF103" // the Kubernetes version and native sidecars
	WebhookCABundle      = "KF104" // a webhook of istiod without a CA bundle
	NamespacePodSecurity = "KF105" // a namespace's level does not fit the overlay
	OutdatedProxy        = "KF106" // a pod runs a proxy of another release than istiod
	StuckInit            = "KF107" // a pod is stuck in istio-validation or istio-init
)

const (
	istioNamespace = "istio-system"
	cniNamespace   = "kube-system"
	cniDaemonSet   = "istio-cni-node"
)

// CheckCluster checks a live cluster, then the workloads that run in its
// injected namespaces.
//
// Istio's analyzers run over the live resources, and suppress hides their
// findings as istioctl analyze --suppress does.
func CheckCluster(ctx context.Context, c *kube.Client, suppress []Suppression) (*Report, error) {
	r := &Report{}
	cps, err := (&install.Installer{Client: c}).ControlPlanes(ctx)
	if err != nil {
		return nil, err
	}
	cp := install.DefaultControlPlane(cps)
	if cp == nil {
		f := Finding{ID: NoControlPlane, Severity: Error, Object: object.KeyOf("Deployment", istioNamespace, revision.NamesOf(revision.Default).Istiod),
			Source: "cluster", Reason: "istiod is not installed, so nothing is injected or configured", Fix: "run kfistio install"}
		if len(cps) > 0 {
			f.Reason = fmt.Sprintf("%d istiod revisions run and none injects namespaces labelled istio-injection=enabled", len(cps))
			f.Fix = "point the default tag at a revision (kfistio upgrade switch, or kfistio upgrade rollback)"
		}
		r.Findings = append(r.Findings, f)
		r.Checked = 1
		return r, nil
	}
	// Istio's analyzers read the cluster through clients of their own: they
	// run while the other checks do, which on a remote cluster hides most of
	// their round trips, and their findings join the others at the end.
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	analyzed := make(chan analysisResult, 1)
	go func() {
		findings, notes, err := AnalyzeCluster(actx, c, suppress)
		analyzed <- analysisResult{findings, notes, err}
	}()
	cl := &clusterCheck{c: c, r: r}
	if err := cl.load(ctx, cp); err != nil {
		return nil, err
	}
	for _, check := range []func(context.Context) error{
		cl.cniReady, cl.gkeOverlay, cl.nativeSidecars, cl.webhookCABundles, cl.namespaceLevels, cl.pods, cl.workloads,
		cl.routing,
	} {
		if err := check(ctx); err != nil {
			return nil, err
		}
		r.Checked++
	}
	a := <-analyzed
	if a.err != nil {
		return nil, a.err
	}
	r.Findings = append(r.Findings, a.findings...)
	r.Notes = append(r.Notes, a.notes...)
	r.Checked++
	r.sort()
	return r, nil
}

// analysisResult is what AnalyzeCluster returns.
type analysisResult struct {
	findings []Finding
	notes    []string
	err      error
}

type clusterCheck struct {
	c *kube.Client
	r *Report
	// What is installed: the injector, whether it uses CNI, the release of
	// istiod, and the overlay kfistio recorded (empty when not kfistio's).
	injector *inject.Injector
	cni      bool
	release  string
	overlay  string
	// istiod is the name of its Deployment.
	istiod string
	// mesh are the objects that decide where sidecars send traffic.
	mesh []*unstructured.Unstructured
	// What several checks read, read once: the CNI DaemonSet (nil when
	// absent), the nodes, the labels of every namespace, and the namespaces
	// istiod injects.
	cniAgent   *appsv1.DaemonSet
	nodes      []corev1.Node
	namespaces map[string]map[string]string
	injected   []corev1.Namespace
}

func (cl *clusterCheck) add(id string, sev Severity, key, reason, fix string) {
	cl.r.Findings = append(cl.r.Findings, Finding{ID: id, Severity: sev, Object: key, Source: "cluster", Reason: reason, Fix: fix})
}

// load reads the installation of the default control plane cp: its
// injector's ConfigMaps, istiod, the kfistio inventory, and the Istio objects
// that decide where traffic goes.
func (cl *clusterCheck) load(ctx context.Context, cp *install.ControlPlane) error {
	var objs []*unstructured.Unstructured
	for _, name := range []string{cp.Names().Injector, cp.Names().Mesh} {
		cm, err := cl.c.Kube.CoreV1().ConfigMaps(istioNamespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get ConfigMap/%s/%s: %w", istioNamespace, name, err)
		}
		objs = append(objs, typed(cm, "v1", "ConfigMap"))
	}
	objs = append(objs, typed(cp.Deployment, "apps/v1", "Deployment"))
	in, err := inject.New(objs)
	if err != nil {
		return err
	}
	cl.injector = in
	cl.release, cl.istiod = cp.Release, cp.Deployment.Name
	cl.cni = injectorUsesCNI(objs[0])
	if inv, err := (&install.Installer{Client: cl.c}).ReadInventory(ctx); err == nil {
		cl.overlay = inv.Overlay
	} else if !errors.Is(err, install.ErrNotInstalled) {
		return err
	}
	cl.mesh = []*unstructured.Unstructured{objs[1]}
	for _, gvr := range trafficResources {
		items, err := cl.listCluster(ctx, gvr, "")
		if err != nil {
			return err
		}
		cl.mesh = append(cl.mesh, items...)
	}
	ds, err := cl.c.Kube.AppsV1().DaemonSets(cniNamespace).Get(ctx, cniDaemonSet, metav1.GetOptions{})
	switch {
	case err == nil:
		cl.cniAgent = ds
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("get DaemonSet/%s/%s: %w", cniNamespace, cniDaemonSet, err)
	}
	nodes, err := cl.c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	cl.nodes = nodes.Items
	namespaces, err := cl.c.Kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	cl.namespaces = map[string]map[string]string{}
	for _, n := range namespaces.Items {
		cl.namespaces[n.Name] = n.Labels
		if n.Labels[injectionLabel] == "enabled" || (n.Labels[revisionLabel] != "" && n.Labels[injectionLabel] != "disabled") {
			cl.injected = append(cl.injected, n)
		}
	}
	return nil
}

func typed(o runtime.Object, apiVersion, kind string) *unstructured.Unstructured {
	m, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	u := &unstructured.Unstructured{Object: m}
	u.SetAPIVersion(apiVersion)
	u.SetKind(kind)
	return u
}

// routing checks the HTTP routes of the gateways (KF010, KF011) from the
// Gateways, VirtualServices and gateway Deployments (labelled istio) of
// every namespace.
func (cl *clusterCheck) routing(ctx context.Context) error {
	var objs []*unstructured.Unstructured
	for _, q := range []struct {
		gvr      schema.GroupVersionResource
		selector string
	}{
		{schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "gateways"}, ""},
		{schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}, ""},
		{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, "istio"},
	} {
		items, err := cl.listCluster(ctx, q.gvr, q.selector)
		if err != nil {
			return err
		}
		objs = append(objs, items...)
	}
	cl.r.Findings = append(cl.r.Findings, routingFindings(objs, func(*unstructured.Unstructured) string { return "cluster" })...)
	return nil
}

// listFunc lists a resource in a namespace, or in every namespace for "".
type listFunc func(context.Context, metav1.ListOptions) (runtime.Object, error)

// dynamicList is the listFunc of resource gvr in namespace ns.
func (cl *clusterCheck) dynamicList(gvr schema.GroupVersionResource) func(ns string) listFunc {
	return func(ns string) listFunc {
		return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return cl.c.Dynamic.Resource(gvr).Namespace(ns).List(ctx, o)
		}
	}
}

// listCluster lists the objects of gvr that match selector in every
// namespace, in pages (kube.ListAll); none when the API server does not
// serve gvr (its CRD is not installed).
func (cl *clusterCheck) listCluster(ctx context.Context, gvr schema.GroupVersionResource, selector string) ([]*unstructured.Unstructured, error) {
	items, err := kube.ListAll[*unstructured.Unstructured](ctx, cl.dynamicList(gvr)(""), metav1.ListOptions{LabelSelector: selector})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("list %s: %w", kindName(gvr), err)
	}
	return items, nil
}

// listEverywhere lists a resource in every namespace, in pages
// (kube.ListAll). Where that is forbidden, it lists it namespace by
// namespace in namespaces, and returns a note of those it could not read
// either. A resource the API server does not serve has no objects.
func listEverywhere[T runtime.Object](ctx context.Context, what string, list func(ns string) listFunc, namespaces []string) ([]T, string, error) {
	items, err := kube.ListAll[T](ctx, list(""), metav1.ListOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, "", nil
	case !apierrors.IsForbidden(err):
		if err != nil {
			return nil, "", fmt.Errorf("list %s: %w", what, err)
		}
		return items, "", nil
	}
	var forbidden []string
	for _, ns := range namespaces {
		got, err := kube.ListAll[T](ctx, list(ns), metav1.ListOptions{})
		switch {
		case apierrors.IsForbidden(err):
			forbidden = append(forbidden, ns)
		case err != nil:
			return nil, "", fmt.Errorf("list %s in namespace %s: %w", what, ns, err)
		}
		items = append(items, got...)
	}
	if len(forbidden) == 0 {
		return items, "", nil
	}
	return items, fmt.Sprintf("%s: this user may not list them in every namespace, nor in namespaces %s, which are not checked for them",
		what, strings.Join(forbidden, ", ")), nil
}

// note adds note to the report, unless it is empty.
func (cl *clusterCheck) note(note string) {
	if note != "" {
		cl.r.Notes = append(cl.r.Notes, note)
	}
}

// kindName is "deployments.apps" for messages.
func kindName(gvr schema.GroupVersionResource) string {
	if gvr.Group == "" {
		return gvr.Resource
	}
	return gvr.Resource + "." + gvr.Group
}

// trafficResources are the Istio objects that decide where sidecars send
// traffic.
var trafficResources = []schema.GroupVersionResource{
	{Group: "networking.istio.io", Version: "v1", Resource: "sidecars"},
	{Group: "networking.istio.io", Version: "v1", Resource: "serviceentries"},
	{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"},
}

// injectorUsesCNI reads pilot.cni.enabled of the injector ConfigMap's values.
func injectorUsesCNI(cm *unstructured.Unstructured) bool {
	s, _, _ := unstructured.NestedString(cm.Object, "data", "values")
	var v struct {
		Pilot struct {
			CNI struct{ Enabled bool } `json:"cni"`
		} `json:"pilot"`
	}
	return json.Unmarshal([]byte(s), &v) == nil && v.Pilot.CNI.Enabled
}

// cniReady checks that the CNI node agent is ready on every node that can run
// pods: without it, pods on that node fail in istio-validation.
func (cl *clusterCheck) cniReady(ctx context.Context) error {
	if !cl.cni {
		return nil
	}
	dsKey := object.KeyOf("DaemonSet", cniNamespace, cniDaemonSet)
	ds := cl.cniAgent
	if ds == nil {
		cl.add(CNINotReady, Error, dsKey, "the injector expects Istio CNI, but the CNI node agent is not installed: injected pods fail in istio-validation",
			"install an overlay with CNI (kfistio install), or the insecure overlay on clusters without CNI support")
		return nil
	}
	sel := labels.SelectorFromSet(ds.Spec.Selector.MatchLabels)
	pods, err := cl.c.Kube.CoreV1().Pods(cniNamespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if apierrors.IsForbidden(err) {
		cl.r.Notes = append(cl.r.Notes, fmt.Sprintf("%s: this user may not list its pods in %s, so the CNI agent's readiness is not checked", dsKey, cniNamespace))
		return nil
	}
	if err != nil {
		return fmt.Errorf("list the pods of %s: %w", dsKey, err)
	}
	for _, n := range cl.nodes {
		if n.Spec.Unschedulable {
			continue
		}
		var pod *corev1.Pod
		for i := range pods.Items {
			if pods.Items[i].Spec.NodeName == n.Name {
				pod = &pods.Items[i]
			}
		}
		switch {
		case pod == nil:
			cl.add(CNINotReady, Error, dsKey, fmt.Sprintf("no istio-cni-node pod on node %s: injected pods there fail in istio-validation", n.Name),
				"check the DaemonSet's events and the node's taints (kubectl describe daemonset -n kube-system istio-cni-node)")
		case !podReady(pod):
			cl.add(CNINotReady, Error, dsKey, fmt.Sprintf("istio-cni-node is not ready on node %s (pod %s: %s): injected pods there fail in istio-validation",
				n.Name, pod.Name, podState(pod)), "fix the node or the pod (kubectl describe pod -n kube-system "+pod.Name+")")
		}
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podState(p *corev1.Pod) string {
	for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			return cs.Name + " " + w.Reason
		}
	}
	return string(p.Status.Phase)
}

// gkeOverlay checks that a GKE cluster runs the CNI agent with GKE's writable
// binary directory.
func (cl *clusterCheck) gkeOverlay(context.Context) error {
	if cl.cniAgent == nil {
		return nil
	}
	p := install.PlatformOf(cl.c.Version, cl.nodes)
	if !p.GKE {
		return nil
	}
	for _, v := range cl.cniAgent.Spec.Template.Spec.Volumes {
		if v.Name == "cni-bin-dir" && v.HostPath != nil && v.HostPath.Path != build.GKECNIBinDir {
			installed := "the installed overlay"
			if cl.overlay != "" {
				installed = "the " + cl.overlay + " overlay"
			}
			cl.add(GKEOverlay, Error, object.KeyOf("DaemonSet", cniNamespace, cniDaemonSet),
				fmt.Sprintf("this is GKE (%s), but %s writes the CNI plugin to %s, which GKE mounts read-only", p.Reason, installed, v.HostPath.Path),
				"kfistio install --overlay gke")
		}
	}
	return nil
}

// nativeSidecars checks that the Kubernetes version runs istio-proxy as a
// native sidecar: sidecar containers are beta and on by default from 1.29,
// alpha behind the SidecarContainers gate in 1.28, absent before.
func (cl *clusterCheck) nativeSidecars(context.Context) error {
	f := nativeSidecarFinding(cl.c.Version, cl.injector.NativeSidecars, cl.istiod)
	if f != nil {
		cl.r.Findings = append(cl.r.Findings, *f)
	}
	return nil
}

func nativeSidecarFinding(serverVersion, setting, istiod string) *Finding {
	if setting != "true" {
		return nil
	}
	v, err := version.ParseGeneric(serverVersion)
	if err != nil {
		return nil
	}
	key := object.KeyOf("Deployment", istioNamespace, istiod)
	switch {
	case v.LessThan(version.MajorMinor(1, 28)):
		return &Finding{ID: NativeSidecars, Severity: Error, Object: key, Source: "cluster",
			Reason: fmt.Sprintf("istiod injects native sidecars (ENABLE_NATIVE_SIDECARS=true) but Kubernetes %s has no sidecar containers: injected pods are rejected or never start", serverVersion),
			Fix:    "upgrade Kubernetes to 1.29 or later"}
	case v.LessThan(version.MajorMinor(1, 29)):
		return &Finding{ID: NativeSidecars, Severity: Warning, Object: key, Source: "cluster",
			Reason: fmt.Sprintf("Kubernetes %s has sidecar containers only with the SidecarContainers feature gate (alpha)", serverVersion),
			Fix:    "enable the SidecarContainers feature gate, or upgrade Kubernetes to 1.29 or later"}
	}
	return nil
}

// webhookCABundles checks that istiod filled the CA bundle of its webhooks;
// without it the API server cannot call them.
func (cl *clusterCheck) webhookCABundles(ctx context.Context) error {
	// The injector's configuration is labelled app=sidecar-injector, the
	// validator's app=istiod.
	sel := metav1.ListOptions{LabelSelector: "app in (istiod,sidecar-injector)"}
	mw, err := cl.c.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, sel)
	if err != nil {
		return fmt.Errorf("list MutatingWebhookConfigurations: %w", err)
	}
	vw, err := cl.c.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, sel)
	if err != nil {
		return fmt.Errorf("list ValidatingWebhookConfigurations: %w", err)
	}
	report := func(kind, name string, empty []string) {
		if len(empty) > 0 {
			cl.add(WebhookCABundle, Error, object.KeyOf(kind, "", name),
				fmt.Sprintf("webhooks %s have no caBundle: istiod writes it when it starts, so istiod is not running or cannot update the webhook", strings.Join(empty, ", ")),
				"check istiod's logs and readiness (kubectl logs -n istio-system deploy/istiod); once istiod may update the webhook again (its ClusterRole), restart it (kubectl rollout restart -n istio-system deploy/istiod): istiod does not retry an update that was refused")
		}
	}
	for _, w := range mw.Items {
		report("MutatingWebhookConfiguration", w.Name, withoutCABundle(w.Webhooks, func(h admissionv1.MutatingWebhook) (string, []byte) {
			return h.Name, h.ClientConfig.CABundle
		}))
	}
	for _, w := range vw.Items {
		report("ValidatingWebhookConfiguration", w.Name, withoutCABundle(w.Webhooks, func(h admissionv1.ValidatingWebhook) (string, []byte) {
			return h.Name, h.ClientConfig.CABundle
		}))
	}
	return nil
}

// withoutCABundle names the webhooks whose CA bundle is empty.
func withoutCABundle[W any](hooks []W, of func(W) (string, []byte)) []string {
	var out []string
	for _, h := range hooks {
		if name, ca := of(h); len(ca) == 0 {
			out = append(out, name)
		}
	}
	return out
}

// namespaceLevels checks that injected namespaces allow what injection adds:
// without CNI, istio-init needs NET_ADMIN and NET_RAW, which only the
// privileged level allows.
func (cl *clusterCheck) namespaceLevels(ctx context.Context) error {
	if cl.cni {
		return nil
	}
	for _, n := range cl.injected {
		level, err := podsecurity.NamespaceLevel(n.Labels)
		if err == nil && level != api.LevelPrivileged {
			cl.add(NamespacePodSecurity, Error, object.KeyOf("Namespace", "", n.Name),
				fmt.Sprintf("pods here are injected with istio-init (no Istio CNI), which needs NET_ADMIN and NET_RAW, but the namespace enforces the %s level: their pods are rejected", level),
				fmt.Sprintf("kubectl label namespace %s %s=privileged --overwrite, or install an overlay with Istio CNI", n.Name, podsecurity.EnforceLabel))
		}
	}
	return nil
}

// pods checks running pods: proxies of another release than istiod, and pods
// stuck in Istio's init containers.
func (cl *clusterCheck) pods(ctx context.Context) error {
	pods, note, err := listEverywhere[*corev1.Pod](ctx, "Pods", func(ns string) listFunc {
		return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return cl.c.Kube.CoreV1().Pods(ns).List(ctx, o)
		}
	}, slices.Sorted(maps.Keys(cl.namespaces)))
	if err != nil {
		return err
	}
	cl.note(note)
	stale, err := (&owners{c: cl.c}).stale(ctx, values(pods), cl.release)
	if err != nil {
		return err
	}
	for _, w := range stale {
		for _, key := range w.Pods {
			cl.add(OutdatedProxy, Warning, key,
				fmt.Sprintf("its proxy runs %s but istiod runs %s: it was injected before the last upgrade", w.Proxy, cl.release),
				fmt.Sprintf("restart %s so that it is injected with %s: %s", w.Workload, cl.release, w.Restart))
		}
	}
	for _, p := range pods {
		key := object.KeyOf("Pod", p.Namespace, p.Name)
		for _, cs := range p.Status.InitContainerStatuses {
			if cs.Name != inject.ValidationContainer && cs.Name != inject.InitContainer {
				continue
			}
			why := ""
			switch {
			case cs.State.Waiting != nil && cs.State.Waiting.Reason == "CrashLoopBackOff":
				why = "it keeps failing (CrashLoopBackOff)"
			case cs.State.Terminated != nil && cs.State.Terminated.ExitCode != 0:
				why = fmt.Sprintf("it exited %d (%s)", cs.State.Terminated.ExitCode, cs.State.Terminated.Reason)
			case cs.RestartCount > 0 && !cs.Ready:
				why = fmt.Sprintf("it restarted %d times", cs.RestartCount)
			}
			if why == "" {
				continue
			}
			fix := "check istio-cni-node on node " + p.Spec.NodeName + " (kubectl logs -n kube-system -l k8s-app=istio-cni-node)"
			if cs.Name == inject.InitContainer {
				fix = "check the pod can get NET_ADMIN and NET_RAW (Pod Security level of namespace " + p.Namespace + ")"
			}
			cl.add(StuckInit, Error, key, fmt.Sprintf("stuck in %s: %s", cs.Name, why), fix)
		}
	}
	return nil
}

// workloads runs the workload checks on what runs in injected namespaces,
// with the cluster's injector.
func (cl *clusterCheck) workloads(ctx context.Context) error {
	file := &File{Path: "cluster"}
	kinds := []schema.GroupVersionResource{
		{Group: "apps", Version: "v1", Resource: "deployments"},
		{Group: "apps", Version: "v1", Resource: "statefulsets"},
		{Group: "apps", Version: "v1", Resource: "daemonsets"},
		{Group: "batch", Version: "v1", Resource: "jobs"},
		{Group: "batch", Version: "v1", Resource: "cronjobs"},
		{Group: "serving.kserve.io", Version: "v1beta1", Resource: "inferenceservices"},
		{Group: "kubeflow.org", Version: "v1", Resource: "notebooks"},
	}
	injected := map[string]bool{}
	var names []string
	for _, n := range cl.injected {
		injected[n.Name] = true
		names = append(names, n.Name)
	}
	// One LIST of each kind in every namespace, all at once.
	lists := make([][]*unstructured.Unstructured, len(kinds))
	notes := make([]string, len(kinds))
	g, gctx := errgroup.WithContext(ctx)
	for i, gvr := range kinds {
		g.Go(func() error {
			var err error
			lists[i], notes[i], err = listEverywhere[*unstructured.Unstructured](gctx, kindName(gvr), cl.dynamicList(gvr), names)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, list := range lists {
		cl.note(notes[i])
		for _, o := range list {
			if !injected[o.GetNamespace()] || len(o.GetOwnerReferences()) > 0 && kinds[i].Resource == "jobs" {
				continue // not injected, or a CronJob's job: its CronJob is checked
			}
			file.Docs = append(file.Docs, &Document{Source: "cluster", Object: o})
		}
	}
	sub := CheckWorkloads([]*File{file}, WorkloadOptions{Injector: cl.injector, Namespaces: cl.namespaces, Mesh: cl.mesh})
	cl.r.Findings = append(cl.r.Findings, sub.Findings...)
	cl.r.Checked += sub.Checked
	return nil
}

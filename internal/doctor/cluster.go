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
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/client-go/kubernetes"
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
	// Istio's analyzers read the cluster through clients of their own: they
	// run while the other checks read and check, which on a remote cluster
	// hides most of their round trips, and their findings join the others
	// at the end. Their pods are the ones doctor lists.
	// Whatever doctor returns, they have stopped.
	actx, cancel := context.WithCancel(ctx)
	pods := newPodFeed()
	analyzed := make(chan analysisResult, 1)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		findings, notes, err := analyzeCluster(actx, c, suppress, pods)
		analyzed <- analysisResult{findings, notes, err}
	}()
	defer func() {
		cancel()
		<-stopped
	}()
	r := &Report{}
	cl := &clusterCheck{c: c, r: r, podFeed: pods}
	if err := cl.read(ctx); err != nil {
		return nil, err
	}
	cp := install.DefaultControlPlane(cl.controlPlanes)
	if cp == nil {
		f := Finding{ID: NoControlPlane, Severity: Error, Object: object.KeyOf("Deployment", istioNamespace, revision.NamesOf(revision.Default).Istiod),
			Source: "cluster", Reason: "istiod is not installed, so nothing is injected or configured", Fix: "run kfistio install"}
		if len(cl.controlPlanes) > 0 {
			f.Reason = fmt.Sprintf("%d istiod revisions run and none injects namespaces labelled istio-injection=enabled", len(cl.controlPlanes))
			f.Fix = "point the default tag at a revision (kfistio upgrade switch, or kfistio upgrade rollback)"
		}
		return &Report{Findings: []Finding{f}, Checked: 1}, nil
	}
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

// analysisResult is what analyzeCluster returns.
type analysisResult struct {
	findings []Finding
	notes    []string
	err      error
}

type clusterCheck struct {
	c *kube.Client
	r *Report
	// What is installed: the control planes, the injector of the default
	// one, whether it uses CNI, the release of istiod, and the overlay
	// kfistio recorded (empty when not kfistio's).
	controlPlanes []install.ControlPlane
	injector      *inject.Injector
	cni           bool
	release       string
	overlay       string
	// istiod is the name of its Deployment.
	istiod string
	// mesh are the objects that decide where sidecars send traffic.
	mesh []*unstructured.Unstructured
	// What the checks read, all at once (read): the ConfigMaps of
	// istio-system, the CNI DaemonSet (nil when absent), the nodes, the
	// labels of every namespace and the namespaces istiod injects, istiod's
	// webhooks, the pods (and the namespaces where this user may not list
	// them), the workloads of each kind, and what the gateways route.
	configMaps      map[string]*corev1.ConfigMap
	cniAgent        *appsv1.DaemonSet
	nodes           []corev1.Node
	namespaces      map[string]map[string]string
	injected        []corev1.Namespace
	mutating        []admissionv1.MutatingWebhookConfiguration
	validating      []admissionv1.ValidatingWebhookConfiguration
	allPods         []*corev1.Pod
	podsDenied      []string
	workloadsOf     [][]*unstructured.Unstructured
	workloadsDenied [][]string
	routes          []*unstructured.Unstructured
	// podFeed passes the pods, once read, to Istio's analyzers.
	podFeed *podFeed
}

func (cl *clusterCheck) add(id string, sev Severity, key, reason, fix string) {
	cl.r.Findings = append(cl.r.Findings, Finding{ID: id, Severity: sev, Object: key, Source: "cluster", Reason: reason, Fix: fix})
}

// workloadKind is a kind whose pod templates the workload checks read.
type workloadKind struct {
	gvk schema.GroupVersionKind
	// resource is its resource's name.
	resource string
	// typed lists it with the typed client, in protobuf (built-in kinds);
	// nil for custom resources, listed as unstructured JSON.
	typed func(c kubernetes.Interface, ns string) listFunc
}

func (k workloadKind) gvr() schema.GroupVersionResource {
	return k.gvk.GroupVersion().WithResource(k.resource)
}

// keep returns what the workload checks read of an object of kind k, and
// whether they read it: an object of an injected namespace (of
// injected()), as unstructured, but not a CronJob's Job (its CronJob is
// checked). What is kept loses its managedFields, the copy of itself that
// kubectl apply writes in an annotation, and (built-in kinds) its status:
// no check reads them.
func (k workloadKind) keep(injected func() map[string]bool) func(runtime.Object) (*unstructured.Unstructured, bool, error) {
	return func(o runtime.Object) (*unstructured.Unstructured, bool, error) {
		m, err := meta.Accessor(o)
		if err != nil {
			return nil, false, fmt.Errorf("read %s: %w", kindName(k.gvr()), err)
		}
		if !injected()[m.GetNamespace()] || len(m.GetOwnerReferences()) > 0 && k.gvk.Kind == "Job" {
			return nil, false, nil
		}
		m.SetManagedFields(nil)
		if a := m.GetAnnotations(); a[install.LastAppliedAnnotation] != "" {
			delete(a, install.LastAppliedAnnotation)
			m.SetAnnotations(a)
		}
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			if u, err = typed(o, k.gvk.GroupVersion().String(), k.gvk.Kind); err != nil {
				return nil, false, err
			}
			delete(u.Object, "status")
		}
		return u, true, nil
	}
}

// workloadKinds are the kinds whose pod templates the workload checks read.
var workloadKinds = []workloadKind{
	{appsv1.SchemeGroupVersion.WithKind("Deployment"), "deployments", func(c kubernetes.Interface, ns string) listFunc {
		return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.AppsV1().Deployments(ns).List(ctx, o)
		}
	}},
	{appsv1.SchemeGroupVersion.WithKind("StatefulSet"), "statefulsets", func(c kubernetes.Interface, ns string) listFunc {
		return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.AppsV1().StatefulSets(ns).List(ctx, o)
		}
	}},
	{appsv1.SchemeGroupVersion.WithKind("DaemonSet"), "daemonsets", func(c kubernetes.Interface, ns string) listFunc {
		return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.AppsV1().DaemonSets(ns).List(ctx, o)
		}
	}},
	{batchv1.SchemeGroupVersion.WithKind("Job"), "jobs", func(c kubernetes.Interface, ns string) listFunc {
		return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.BatchV1().Jobs(ns).List(ctx, o)
		}
	}},
	{batchv1.SchemeGroupVersion.WithKind("CronJob"), "cronjobs", func(c kubernetes.Interface, ns string) listFunc {
		return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.BatchV1().CronJobs(ns).List(ctx, o)
		}
	}},
	{schema.GroupVersionKind{Group: "serving.kserve.io", Version: "v1beta1", Kind: "InferenceService"}, "inferenceservices", nil},
	{schema.GroupVersionKind{Group: "kubeflow.org", Version: "v1", Kind: "Notebook"}, "notebooks", nil},
}

// routeQueries are what the routing check reads: the Gateways,
// VirtualServices and gateway Deployments (labelled istio) of every
// namespace.
var routeQueries = []struct {
	gvr      schema.GroupVersionResource
	selector string
}{
	{schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "gateways"}, ""},
	{schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}, ""},
	{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, "istio"},
}

// read reads everything the checks need, each kind in one LIST (paged) of
// every namespace, all at once: on a remote cluster doctor waits for about
// one round trip, however many namespaces there are. Where this user may
// not list a kind in every namespace, it is listed namespace by namespace
// once the namespaces are read.
func (cl *clusterCheck) read(ctx context.Context) error {
	// The control planes decide whether the rest matters: without a default
	// one, doctor reports that, stops the other reads and ignores how they
	// failed.
	rest, stop := context.WithCancel(ctx)
	defer stop()
	planes := make(chan error, 1)
	go func(ctx context.Context) {
		var err error
		cl.controlPlanes, err = (&install.Installer{Client: cl.c}).ControlPlanes(ctx)
		if err == nil && install.DefaultControlPlane(cl.controlPlanes) == nil {
			stop()
		}
		planes <- err
	}(ctx)
	g, ctx := errgroup.WithContext(rest)
	// Closed when the namespaces are read, or could not be; then these
	// return their names, and the injected ones by name.
	namespacesRead := make(chan struct{})
	injectedSet := map[string]bool{}
	allNamespaces := func() []string {
		<-namespacesRead
		return slices.Sorted(maps.Keys(cl.namespaces))
	}
	injectedNamespaces := func() map[string]bool {
		<-namespacesRead
		return injectedSet
	}
	g.Go(func() error {
		defer close(namespacesRead)
		namespaces, err := cl.c.Kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("list namespaces: %w", err)
		}
		cl.namespaces = map[string]map[string]string{}
		for _, n := range namespaces.Items {
			cl.namespaces[n.Name] = n.Labels
			if n.Labels[injectionLabel] == "enabled" || (n.Labels[revisionLabel] != "" && n.Labels[injectionLabel] != "disabled") {
				cl.injected = append(cl.injected, n)
				injectedSet[n.Name] = true
			}
		}
		return nil
	})
	g.Go(func() error {
		cms, err := cl.c.Kube.CoreV1().ConfigMaps(istioNamespace).List(ctx, metav1.ListOptions{})
		if apierrors.IsForbidden(err) {
			return nil // load gets the two it needs by name
		}
		if err != nil {
			return fmt.Errorf("list the ConfigMaps of %s: %w", istioNamespace, err)
		}
		cl.configMaps = map[string]*corev1.ConfigMap{}
		for i := range cms.Items {
			cl.configMaps[cms.Items[i].Name] = &cms.Items[i]
		}
		return nil
	})
	g.Go(func() error {
		inv, err := (&install.Installer{Client: cl.c}).ReadInventory(ctx)
		switch {
		case err == nil:
			cl.overlay = inv.Overlay
		case !errors.Is(err, install.ErrNotInstalled):
			return err
		}
		return nil
	})
	traffic := make([][]*unstructured.Unstructured, len(trafficResources))
	for i, gvr := range trafficResources {
		g.Go(func() (err error) {
			traffic[i], err = cl.listCluster(ctx, gvr, "")
			return err
		})
	}
	g.Go(func() error {
		ds, err := cl.c.Kube.AppsV1().DaemonSets(cniNamespace).Get(ctx, cniDaemonSet, metav1.GetOptions{})
		switch {
		case err == nil:
			cl.cniAgent = ds
		case !apierrors.IsNotFound(err):
			return fmt.Errorf("get DaemonSet/%s/%s: %w", cniNamespace, cniDaemonSet, err)
		}
		return nil
	})
	g.Go(func() error {
		nodes, err := cl.c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("list nodes: %w", err)
		}
		cl.nodes = nodes.Items
		return nil
	})
	// The injector's configuration is labelled app=sidecar-injector, the
	// validator's app=istiod.
	hooks := metav1.ListOptions{LabelSelector: "app in (istiod,sidecar-injector)"}
	g.Go(func() error {
		mw, err := cl.c.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, hooks)
		if err != nil {
			return fmt.Errorf("list MutatingWebhookConfigurations: %w", err)
		}
		cl.mutating = mw.Items
		return nil
	})
	g.Go(func() error {
		vw, err := cl.c.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, hooks)
		if err != nil {
			return fmt.Errorf("list ValidatingWebhookConfigurations: %w", err)
		}
		cl.validating = vw.Items
		return nil
	})
	g.Go(func() (err error) {
		defer func() { cl.podFeed.set(cl.allPods, cl.podsDenied, err) }()
		cl.allPods, cl.podsDenied, err = listEverywhere(ctx, "Pods", func(ns string) listFunc {
			return func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return cl.c.Kube.CoreV1().Pods(ns).List(ctx, o)
			}
		}, allNamespaces, slimPod)
		return err
	})
	cl.workloadsOf = make([][]*unstructured.Unstructured, len(workloadKinds))
	cl.workloadsDenied = make([][]string, len(workloadKinds))
	for i, k := range workloadKinds {
		list := cl.dynamicList(k.gvr())
		if k.typed != nil {
			list = func(ns string) listFunc { return k.typed(cl.c.Kube, ns) }
		}
		g.Go(func() (err error) {
			names := func() []string { return slices.Sorted(maps.Keys(injectedNamespaces())) }
			cl.workloadsOf[i], cl.workloadsDenied[i], err = listEverywhere(ctx, kindName(k.gvr()), list, names, k.keep(injectedNamespaces))
			return err
		})
	}
	routes := make([][]*unstructured.Unstructured, len(routeQueries))
	for i, q := range routeQueries {
		g.Go(func() (err error) {
			routes[i], err = cl.listCluster(ctx, q.gvr, q.selector)
			return err
		})
	}
	err := g.Wait()
	if err := <-planes; err != nil {
		return err
	}
	if install.DefaultControlPlane(cl.controlPlanes) == nil {
		return nil
	}
	if err != nil {
		return err
	}
	cl.mesh = slices.Concat(traffic...)
	cl.routes = slices.Concat(routes...)
	return nil
}

// slimPod copies of p what doctor's checks of pods and Istio's analyzers
// read. Of its metadata: its name, namespace, UID, resource version,
// generation and creation time (Istio's metadata of a resource), labels and
// annotations (selectors, injection, suppressions) and owners. Of its spec:
// its node, whether it uses the host's network, its security context, and
// the names, images, security contexts and restart policies of its
// containers, in order (the proxy, its release, the application's user,
// native sidecars). Of its status: its phase, conditions and container
// states. The rest of its spec (environment, volumes, probes, resources) is
// dropped, as most of an injected pod. The copy shares nothing with the
// page p was decoded in, so a large cluster's pods take little memory while
// the rest is read and checked.
func slimPod(p *corev1.Pod) (*corev1.Pod, bool, error) {
	containers := func(cs []corev1.Container) []corev1.Container {
		out := make([]corev1.Container, len(cs))
		for i, c := range cs {
			out[i] = corev1.Container{Name: c.Name, Image: c.Image, SecurityContext: c.SecurityContext, RestartPolicy: c.RestartPolicy}
		}
		return out
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Generation: p.Generation, CreationTimestamp: p.CreationTimestamp, Labels: p.Labels, Annotations: p.Annotations,
			OwnerReferences: p.OwnerReferences},
		Spec: corev1.PodSpec{
			InitContainers: containers(p.Spec.InitContainers), Containers: containers(p.Spec.Containers),
			SecurityContext: p.Spec.SecurityContext, NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{Phase: p.Status.Phase, Conditions: p.Status.Conditions,
			InitContainerStatuses: p.Status.InitContainerStatuses, ContainerStatuses: p.Status.ContainerStatuses},
	}, true, nil
}

// load sets up the checks of the default control plane cp: its injector,
// from its ConfigMaps and Deployment, and its mesh configuration.
func (cl *clusterCheck) load(ctx context.Context, cp *install.ControlPlane) error {
	var objs []*unstructured.Unstructured
	for _, name := range []string{cp.Names().Injector, cp.Names().Mesh} {
		cm := cl.configMaps[name]
		if cl.configMaps == nil {
			// This user may not list them: get them by name.
			var err error
			cm, err = cl.c.Kube.CoreV1().ConfigMaps(istioNamespace).Get(ctx, name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				cm = nil
			case err != nil:
				return fmt.Errorf("get ConfigMap/%s/%s: %w", istioNamespace, name, err)
			}
		}
		if cm == nil {
			return fmt.Errorf("ConfigMap/%s/%s of istiod %s is not there: reinstall (kfistio install) or restore it", istioNamespace, name, cp.Deployment.Name)
		}
		u, err := typed(cm, "v1", "ConfigMap")
		if err != nil {
			return err
		}
		objs = append(objs, u)
	}
	u, err := typed(cp.Deployment, "apps/v1", "Deployment")
	if err != nil {
		return err
	}
	in, err := inject.New(append(objs, u))
	if err != nil {
		return err
	}
	cl.injector = in
	cl.release, cl.istiod = cp.Release, cp.Deployment.Name
	cl.cni = injectorUsesCNI(objs[0])
	cl.mesh = append([]*unstructured.Unstructured{objs[1]}, cl.mesh...)
	return nil
}

// typed is o, a typed object of kind apiVersion/kind, as unstructured. It
// goes through JSON, as the API server would send it: the converter from
// structs makes each map as large as its struct has fields, which at a
// thousand profiles' workloads holds twice the memory.
func typed(o runtime.Object, apiVersion, kind string) (*unstructured.Unstructured, error) {
	m := map[string]any{}
	b, err := json.Marshal(o)
	if err == nil {
		err = utiljson.Unmarshal(b, &m)
	}
	if err != nil {
		name := kind
		if a, aerr := meta.Accessor(o); aerr == nil {
			name = object.KeyOf(kind, a.GetNamespace(), a.GetName())
		}
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetAPIVersion(apiVersion)
	u.SetKind(kind)
	return u, nil
}

// routing checks the HTTP routes of the gateways (KF010, KF011).
func (cl *clusterCheck) routing(context.Context) error {
	cl.r.Findings = append(cl.r.Findings, routingFindings(cl.routes, func(*unstructured.Unstructured) string { return "cluster" })...)
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

// listEverywhere lists a resource in every namespace, in pages, and
// returns what keep makes of the items it keeps (kube.ListEach). Where that
// is forbidden, it lists it namespace by namespace in namespaces(), and
// returns those it could not read either. A resource the API server does
// not serve has no objects.
func listEverywhere[T runtime.Object, U any](ctx context.Context, what string, list func(ns string) listFunc, namespaces func() []string, keep func(T) (U, bool, error)) ([]U, []string, error) {
	items, err := kube.ListEach(ctx, list(""), metav1.ListOptions{}, keep)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil, nil
	case !apierrors.IsForbidden(err):
		if err != nil {
			return nil, nil, fmt.Errorf("list %s: %w", what, err)
		}
		return items, nil, nil
	}
	var forbidden []string
	for _, ns := range namespaces() {
		got, err := kube.ListEach(ctx, list(ns), metav1.ListOptions{}, keep)
		switch {
		case apierrors.IsForbidden(err):
			forbidden = append(forbidden, ns)
		case err != nil:
			return nil, nil, fmt.Errorf("list %s in namespace %s: %w", what, ns, err)
		}
		items = append(items, got...)
	}
	return items, forbidden, nil
}

// noteDenied notes the namespaces where this user may not list what.
func (cl *clusterCheck) noteDenied(what string, namespaces []string) {
	if len(namespaces) > 0 {
		cl.r.Notes = append(cl.r.Notes, fmt.Sprintf("%s: this user may not list them in every namespace, nor in namespaces %s, which are not checked for them",
			what, strings.Join(namespaces, ", ")))
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
func (cl *clusterCheck) cniReady(context.Context) error {
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
	if slices.Contains(cl.podsDenied, cniNamespace) {
		cl.r.Notes = append(cl.r.Notes, fmt.Sprintf("%s: this user may not list its pods in %s, so the CNI agent's readiness is not checked", dsKey, cniNamespace))
		return nil
	}
	sel := labels.SelectorFromSet(ds.Spec.Selector.MatchLabels)
	var pods []*corev1.Pod
	for _, p := range cl.allPods {
		if p.Namespace == cniNamespace && sel.Matches(labels.Set(p.Labels)) {
			pods = append(pods, p)
		}
	}
	for _, n := range cl.nodes {
		if n.Spec.Unschedulable {
			continue
		}
		var pod *corev1.Pod
		for _, p := range pods {
			if p.Spec.NodeName == n.Name {
				pod = p
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
func (cl *clusterCheck) webhookCABundles(context.Context) error {
	report := func(kind, name string, empty []string) {
		if len(empty) > 0 {
			cl.add(WebhookCABundle, Error, object.KeyOf(kind, "", name),
				fmt.Sprintf("webhooks %s have no caBundle: istiod writes it when it starts, so istiod is not running or cannot update the webhook", strings.Join(empty, ", ")),
				"check istiod's logs and readiness (kubectl logs -n istio-system deploy/istiod); once istiod may update the webhook again (its ClusterRole), restart it (kubectl rollout restart -n istio-system deploy/istiod): istiod does not retry an update that was refused")
		}
	}
	for _, w := range cl.mutating {
		report("MutatingWebhookConfiguration", w.Name, withoutCABundle(w.Webhooks, func(h admissionv1.MutatingWebhook) (string, []byte) {
			return h.Name, h.ClientConfig.CABundle
		}))
	}
	for _, w := range cl.validating {
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
	pods := cl.allPods
	cl.noteDenied("Pods", cl.podsDenied)
	stale, err := (&owners{c: cl.c}).stale(ctx, pods, cl.release)
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
func (cl *clusterCheck) workloads(context.Context) error {
	file := &File{Path: "cluster"}
	for i, list := range cl.workloadsOf {
		cl.noteDenied(kindName(workloadKinds[i].gvr()), cl.workloadsDenied[i])
		for _, o := range list {
			file.Docs = append(file.Docs, &Document{Source: "cluster", Object: o})
		}
	}
	sub := CheckWorkloads([]*File{file}, WorkloadOptions{Injector: cl.injector, Namespaces: cl.namespaces, Mesh: cl.mesh})
	cl.r.Findings = append(cl.r.Findings, sub.Findings...)
	cl.r.Checked += sub.Checked
	return nil
}

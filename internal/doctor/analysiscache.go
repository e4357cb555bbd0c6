package doctor

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"istio.io/istio/pkg/config/schema/kubeclient"
	istiokube "istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/kube/informerfactory"
	"istio.io/istio/pkg/kube/kubetypes"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// analysisClient is an Istio client whose informers hold less than Istio's
// own on a large cluster, and read less: their Pods are the ones doctor
// lists for its own checks (pods), their Deployments are kept without
// status (analyzerDeployment), and their ConfigMaps are only those of the
// analyzers' Istio namespace.
type analysisClient struct {
	istiokube.Client
	// istioNamespace is the analyzers' Istio namespace.
	istioNamespace string
	// pods are doctor's pods.
	pods *podFeed
}

func (c analysisClient) Informers() informerfactory.InformerFactory {
	return analysisInformers{InformerFactory: c.Client.Informers(), client: c.Client, istioNamespace: c.istioNamespace, pods: c.pods}
}

type analysisInformers struct {
	informerfactory.InformerFactory
	client         istiokube.Client
	istioNamespace string
	pods           *podFeed
}

var (
	podsResource        = corev1.SchemeGroupVersion.WithResource("pods")
	deploymentsResource = appsv1.SchemeGroupVersion.WithResource("deployments")
	configMapsResource  = corev1.SchemeGroupVersion.WithResource("configmaps")
)

// InformerFor builds the analyzers' informers:
//   - of Pods, where Istio asks for no transform of its own and selects
//     them by namespace, name and labels only: one fed with those of the
//     pods doctor lists (pods), which are then listed and decoded once;
//   - of Deployments, where Istio asks for no transform of its own: one
//     that keeps them without status (transforms are set before an
//     informer starts);
//   - of ConfigMaps: one of the Istio namespace only. The analyzers read
//     the ConfigMaps of that namespace (the injectors' configuration) and
//     declare it in their filter, but their store watches every namespace's
//     ConfigMaps and filters by name only, which keeps each namespace's
//     istio-ca-root-cert. The narrowing keeps whatever transform Istio asks
//     for.
func (f analysisInformers) InformerFor(r schema.GroupVersionResource, o kubetypes.InformerOptions, newInformer informerfactory.NewInformerFunc) informerfactory.StartableInformer {
	switch {
	case r == configMapsResource && o.Namespace == metav1.NamespaceAll:
		o.Namespace = f.istioNamespace
		return kubeclient.GetInformerFilteredFromGVR(f.client, o, r)
	case r == podsResource && f.pods != nil && o.ObjectTransform == nil && o.InformerType == kubetypes.StandardInformer:
		if sel, ok := newPodSelector(o); ok {
			return f.InformerFactory.InformerFor(r, o, func() cache.SharedIndexInformer { return f.pods.informer(sel) })
		}
	case r == deploymentsResource && o.ObjectTransform == nil:
		return f.InformerFactory.InformerFor(r, o, func() cache.SharedIndexInformer {
			inf := newInformer()
			_ = inf.SetTransform(analyzerDeployment)
			return inf
		})
	}
	return f.InformerFactory.InformerFor(r, o, newInformer)
}

// podFeed hands the pods doctor lists to the analyzers' Pod informers.
type podFeed struct {
	// done is closed when the pods were read, or could not be.
	done chan struct{}
	pods []*corev1.Pod
	// denied are the namespaces where the pods could not be listed.
	denied []string
	err    error
	// refused is closed when an informer could not be given its pods: some
	// were in the namespaces unread.
	refused chan struct{}
	refuse  sync.Once
	unread  []string
}

func newPodFeed() *podFeed {
	return &podFeed{done: make(chan struct{}), refused: make(chan struct{})}
}

// set gives the feed what doctor read: pods, and the namespaces where it
// could not list them, or why it could not read them. It is called once.
func (f *podFeed) set(pods []*corev1.Pod, denied []string, err error) {
	f.pods, f.denied, f.err = pods, denied, err
	close(f.done)
}

// podSelector selects pods as the API server does for an informer whose
// options select by namespace, name and labels only.
type podSelector struct {
	namespace string
	byField   fields.Selector
	byLabel   labels.Selector
}

// newPodSelector is the selector of o's pods, and whether doctor's pods can
// tell which they are.
func newPodSelector(o kubetypes.InformerOptions) (podSelector, bool) {
	byField, err := fields.ParseSelector(o.FieldSelector)
	if err != nil {
		return podSelector{}, false
	}
	for _, r := range byField.Requirements() {
		if r.Field != "metadata.name" && r.Field != "metadata.namespace" {
			return podSelector{}, false
		}
	}
	byLabel, err := labels.Parse(o.LabelSelector)
	if err != nil {
		return podSelector{}, false
	}
	return podSelector{namespace: o.Namespace, byField: byField, byLabel: byLabel}, true
}

// selects reports whether p is selected.
func (s podSelector) selects(p *corev1.Pod) bool {
	return s.reaches(p.Namespace) && s.byField.Matches(fields.Set{"metadata.name": p.Name, "metadata.namespace": p.Namespace}) &&
		s.byLabel.Matches(labels.Set(p.Labels))
}

// reaches reports whether pods of namespace ns may be selected, whatever
// their names and labels.
func (s podSelector) reaches(ns string) bool {
	if s.namespace != metav1.NamespaceAll && ns != s.namespace {
		return false
	}
	for _, r := range s.byField.Requirements() {
		// A field selector's operators are =, == and !=.
		if r.Field == "metadata.namespace" && (r.Operator == selection.NotEquals) == (r.Value == ns) {
			return false
		}
	}
	return true
}

// list is the pods sel selects, once read. Where some of them could not
// be listed, it fails as the informer's own LIST would have, and the feed
// is refused: the analyzers read every pod they select.
func (f *podFeed) list(ctx context.Context, sel podSelector) (runtime.Object, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-f.done:
	}
	if f.err != nil {
		return nil, f.err
	}
	var unread []string
	for _, ns := range f.denied {
		if sel.reaches(ns) {
			unread = append(unread, ns)
		}
	}
	if len(unread) > 0 {
		f.refuse.Do(func() {
			f.unread = unread
			close(f.refused)
		})
		return nil, apierrors.NewForbidden(podsResource.GroupResource(), "",
			fmt.Errorf("pods may not be listed in namespaces %s", strings.Join(unread, ", ")))
	}
	l := &corev1.PodList{}
	for _, p := range f.pods {
		if sel.selects(p) {
			l.Items = append(l.Items, *p)
		}
	}
	return l, nil
}

// watch sends nothing: the analyzers read the pods once.
func (f *podFeed) watch(context.Context, metav1.ListOptions) (watch.Interface, error) {
	return watch.NewFake(), nil
}

// IsWatchListSemanticsUnSupported tells the informer to list, not to stream
// a watch of the initial pods.
func (*podFeed) IsWatchListSemanticsUnSupported() bool { return true }

// informer is an informer of the pods sel selects, as Istio's own but fed
// with the feed's pods.
func (f *podFeed) informer(sel podSelector) cache.SharedIndexInformer {
	list := func(ctx context.Context, _ metav1.ListOptions) (runtime.Object, error) { return f.list(ctx, sel) }
	lw := cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{ListWithContextFunc: list, WatchFuncWithContext: f.watch}, f)
	inf := cache.NewSharedIndexInformerWithOptions(lw, &corev1.Pod{}, cache.SharedIndexInformerOptions{
		Indexers:          cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
		ObjectDescription: podsResource.String(),
	})
	// The analyzers say, in a note, when they could not read the pods.
	_ = inf.SetWatchErrorHandlerWithContext(func(context.Context, *cache.Reflector, error) {})
	return inf
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

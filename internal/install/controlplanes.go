package install

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sync/errgroup"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
)

// ControlPlane is one istiod of a cluster: a revision, or the default
// control plane of an installation without revisions.
type ControlPlane struct {
	Revision string `json:"revision"`
	// Deployment is istiod's Deployment as the cluster has it.
	Deployment *appsv1.Deployment `json:"-"`
	Image      string             `json:"image"`
	Release    string             `json:"release"`
	// Tags are the revision tags that point at it.
	Tags []string `json:"tags,omitempty"`
	// Default is true for the control plane that injects the pods of
	// namespaces labelled istio-injection=enabled, as Kubeflow labels its
	// profiles.
	Default bool `json:"default"`
}

// Names are the names of the control plane's objects.
func (cp ControlPlane) Names() revision.Names { return revision.NamesOf(cp.Revision) }

// injectionEnabled are the labels of a namespace whose pods the default
// control plane injects.
var injectionEnabled = labels.Set{inject.InjectionLabel: "enabled"}

// ControlPlanes lists the istiods of the cluster (Deployments of
// istio-system labelled app=istiod) by revision, with the tags that point
// at each and which one injects istio-injection=enabled namespaces, as the
// mutating webhooks say.
func (in *Installer) ControlPlanes(ctx context.Context) ([]ControlPlane, error) {
	// Both at once: on a remote cluster, one round trip.
	var ds *appsv1.DeploymentList
	var hooks *admissionv1.MutatingWebhookConfigurationList
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		if ds, err = in.Client.Kube.AppsV1().Deployments(revision.Namespace).List(gctx, metav1.ListOptions{LabelSelector: "app=istiod"}); err != nil {
			return fmt.Errorf("list the istiod Deployments of %s: %w", revision.Namespace, err)
		}
		return nil
	})
	g.Go(func() (err error) {
		if hooks, err = in.Client.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations().List(gctx, metav1.ListOptions{LabelSelector: revision.Label}); err != nil {
			return fmt.Errorf("list MutatingWebhookConfigurations: %w", err)
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var cps []ControlPlane
	for i := range ds.Items {
		d := &ds.Items[i]
		cp := ControlPlane{Revision: revision.Default, Deployment: d}
		if r := d.Labels[revision.Label]; r != "" {
			cp.Revision = r
		}
		cp.Image, cp.Release = inject.IstiodRelease(&d.Spec.Template.Spec)
		cps = append(cps, cp)
	}
	slices.SortFunc(cps, func(a, b ControlPlane) int { return strings.Compare(a.Revision, b.Revision) })
	for _, h := range hooks.Items {
		i := slices.IndexFunc(cps, func(cp ControlPlane) bool { return cp.Revision == h.Labels[revision.Label] })
		if i < 0 {
			continue
		}
		if tag := h.Labels[revision.TagLabel]; tag != "" && !slices.Contains(cps[i].Tags, tag) {
			cps[i].Tags = append(cps[i].Tags, tag)
		}
		if injectsEnabledNamespaces(h) {
			cps[i].Default = true
		}
	}
	return cps, nil
}

// injectsEnabledNamespaces reports whether a webhook of h is called for the
// pods of a namespace labelled istio-injection=enabled.
func injectsEnabledNamespaces(h admissionv1.MutatingWebhookConfiguration) bool {
	for _, w := range h.Webhooks {
		sel, err := object.WebhookSelector(w.NamespaceSelector)
		if err == nil && sel.Matches(injectionEnabled) {
			return true
		}
	}
	return false
}

// DefaultControlPlane returns the control plane that injects
// istio-injection=enabled namespaces, or the only one; nil when there is
// none.
func DefaultControlPlane(cps []ControlPlane) *ControlPlane {
	for i := range cps {
		if cps[i].Default {
			return &cps[i]
		}
	}
	if len(cps) == 1 {
		return &cps[0]
	}
	return nil
}

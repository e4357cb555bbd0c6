package verify

import (
	"fmt"
	"slices"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
)

// istioConfigGroups are the API groups of the Istio configuration that
// istiod's validator checks.
var istioConfigGroups = []string{"security.istio.io", "networking.istio.io", "telemetry.istio.io", "extensions.istio.io"}

// revisionLabel selects the control plane revision of Istio config.
const revisionLabel = revision.Label

// checkValidation (F19): a webhook of istiod validates the Istio config that
// users write, whether or not it carries istio.io/rev, and fails closed; every
// validating webhook of istiod fails closed.
func checkValidation(t *target) []Problem {
	var p problems
	type hook struct {
		key string
		w   admissionv1.ValidatingWebhook
	}
	var hooks []hook
	for _, o := range t.objs {
		if o.GetKind() != "ValidatingWebhookConfiguration" {
			continue
		}
		var cfg admissionv1.ValidatingWebhookConfiguration
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &cfg); err != nil {
			p.because(object.Key(o), "", err.Error())
			continue
		}
		for _, w := range cfg.Webhooks {
			if !callsService(w.ClientConfig, t.names.Istiod, "/validate") {
				continue
			}
			if w.FailurePolicy == nil || *w.FailurePolicy != admissionv1.Fail {
				p.wrong(object.Key(o), "webhooks["+w.Name+"].failurePolicy", w.FailurePolicy, "Fail (invalid Istio config is refused, never let through)")
			}
			hooks = append(hooks, hook{object.Key(o), w})
		}
	}
	sets := []labels.Set{{}, {revisionLabel: revision.Default}}
	if t.names.Revision != revision.Default {
		sets = append(sets, labels.Set{revisionLabel: t.names.Revision})
	}
	for _, set := range sets {
		i := slices.IndexFunc(hooks, func(h hook) bool { return validatesIstioConfig(h.w, set) })
		if i < 0 {
			what := "Istio config without the " + revisionLabel + " label"
			if len(set) > 0 {
				what = "Istio config labelled " + set.String()
			}
			p.because("ValidatingWebhookConfiguration", "webhooks", fmt.Sprintf("no webhook of istiod validates %s (CREATE and UPDATE of %v): add the default-revision validator (values.defaultRevision)", what, istioConfigGroups))
		}
	}
	return p
}

// validatesIstioConfig reports whether w is called for the creation and
// update of every kind of Istio config that carries the labels set, in a
// namespace without labels.
func validatesIstioConfig(w admissionv1.ValidatingWebhook, set labels.Set) bool {
	if !selects(w.ObjectSelector, set) || !selects(w.NamespaceSelector, labels.Set{}) {
		return false
	}
	for _, g := range istioConfigGroups {
		if !slices.ContainsFunc(w.Rules, func(r admissionv1.RuleWithOperations) bool {
			return slices.Contains(r.APIGroups, g) && slices.Contains(r.APIVersions, "*") && slices.Contains(r.Resources, "*") &&
				hasOperations(r.Operations, admissionv1.Create, admissionv1.Update)
		}) {
			return false
		}
	}
	return true
}

// selects reports whether s (nil: everything) selects objects with labels l.
func selects(s *metav1.LabelSelector, l labels.Set) bool {
	sel, err := object.WebhookSelector(s)
	return err == nil && sel.Matches(l)
}

func hasOperations(ops []admissionv1.OperationType, want ...admissionv1.OperationType) bool {
	for _, o := range want {
		if !slices.Contains(ops, o) && !slices.Contains(ops, admissionv1.OperationAll) {
			return false
		}
	}
	return true
}

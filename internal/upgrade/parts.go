package upgrade

import (
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/revision"
)

// part is what an object of the new installation is to an upgrade.
type part int

const (
	// shared objects serve every revision and are upgraded in place at the
	// start: CRDs, the CNI node agent, namespaces, policies, Istio config.
	shared part = iota
	// controlPlane objects are the new revision's own: istiod-<revision>,
	// its config, injector and validator.
	controlPlane
	// tag objects make the new revision the default: the default tag's
	// webhook and Service, and the default validator.
	tag
	// gateway objects run the gateways, which move to the new revision at
	// the switch.
	gateway
)

// partOf says what o, an object of the installation of revision rev, is.
func partOf(o *unstructured.Unstructured, rev string) part {
	switch {
	case revision.IsGateway(o):
		return gateway
	case revision.StepOf(o) == revision.StepSwitch:
		return tag
	}
	if base, ok := revision.Base(o.GetName(), rev); ok && base != o.GetName() {
		return controlPlane
	}
	return shared
}

// selectParts returns the objects of objs in parts.
func selectParts(objs []*unstructured.Unstructured, rev string, parts ...part) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if slices.Contains(parts, partOf(o, rev)) {
			out = append(out, o)
		}
	}
	return out
}

// counterpart returns (a stub of) the object of revision in that stands for
// o, an object of the control plane of revision of: the same object of in's
// control plane, as Istio's charts name it.
func counterpart(o *unstructured.Unstructured, of, in string) *unstructured.Unstructured {
	base, _ := revision.Base(o.GetName(), of)
	return install.Ref{APIVersion: o.GetAPIVersion(), Kind: o.GetKind(), Namespace: o.GetNamespace(), Name: revision.Name(base, in)}.Stub()
}

// neverMatch is the selector that Istio's own tooling gives webhooks it
// deactivates without deleting them.
var neverMatch = map[string]any{"matchExpressions": []any{map[string]any{
	"key": "istio.io/deactivated", "operator": "In", "values": []any{"never-match"},
}}}

// inert returns a copy of a webhook configuration whose webhooks select
// nothing: created so, it gets its CA bundle from istiod before any request
// depends on it.
func inert(o *unstructured.Unstructured) *unstructured.Unstructured {
	c := o.DeepCopy()
	hooks, _, _ := unstructured.NestedSlice(c.Object, "webhooks")
	for _, h := range hooks {
		m := h.(map[string]any)
		m["namespaceSelector"], m["objectSelector"] = neverMatch, neverMatch
	}
	_ = unstructured.SetNestedSlice(c.Object, hooks, "webhooks")
	return c
}

// deactivation is the apply that makes every webhook of a mutating webhook
// configuration select nothing, leaving the rest of it as it is.
func deactivation(live *unstructured.Unstructured) *unstructured.Unstructured {
	return selectors(inert(live))
}

// selectors is the apply that gives the webhooks of a mutating webhook
// configuration back the selectors saved holds.
func selectors(saved *unstructured.Unstructured) *unstructured.Unstructured {
	var hooks []any
	sh, _, _ := unstructured.NestedSlice(saved.Object, "webhooks")
	for _, h := range sh {
		m := h.(map[string]any)
		hook := map[string]any{"name": m["name"]}
		for _, k := range []string{"namespaceSelector", "objectSelector"} {
			if v, ok := m[k]; ok {
				hook[k] = v
			}
		}
		hooks = append(hooks, hook)
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": saved.GetAPIVersion(), "kind": saved.GetKind(),
		"metadata": map[string]any{"name": saved.GetName()}, "webhooks": hooks,
	}}
}

// restorable is live without what the cluster manages rather than its
// installers (install.go of a live cluster changes: status, CA bundles,
// replicas that autoscalers own, bookkeeping of metadata): what an apply
// that puts it back sends.
func restorable(live *unstructured.Unstructured) map[string]any {
	c := live.DeepCopy()
	for _, f := range []string{"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"} {
		unstructured.RemoveNestedField(c.Object, "metadata", f)
	}
	unstructured.RemoveNestedField(c.Object, "status")
	annotations := c.GetAnnotations()
	for k := range annotations {
		if k == install.LastAppliedAnnotation || strings.HasPrefix(k, "deployment.kubernetes.io/") {
			delete(annotations, k)
		}
	}
	c.SetAnnotations(annotations)
	if len(annotations) == 0 {
		unstructured.RemoveNestedField(c.Object, "metadata", "annotations")
	}
	switch c.GetKind() {
	case "Deployment":
		unstructured.RemoveNestedField(c.Object, "spec", "replicas")
	case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
		hooks, _, _ := unstructured.NestedSlice(c.Object, "webhooks")
		for _, h := range hooks {
			unstructured.RemoveNestedField(h.(map[string]any), "clientConfig", "caBundle")
		}
		_ = unstructured.SetNestedSlice(c.Object, hooks, "webhooks")
	}
	return c.Object
}

// saved returns the entry of u for step and ref, or nil.
func saved(u *install.Upgrade, step string, ref install.Ref) *install.Saved {
	for i := range u.Saved {
		if u.Saved[i].Step == step && u.Saved[i].Ref == ref {
			return &u.Saved[i]
		}
	}
	return nil
}

// save records, for step, each object of objs as live holds it (nil when
// there is none), unless an earlier run of that step did: a rollback of the
// step puts back what was there before it.
func save(u *install.Upgrade, step string, objs []*unstructured.Unstructured, live func(*unstructured.Unstructured) *unstructured.Unstructured) {
	for _, o := range objs {
		ref := install.RefOf(o)
		if o.GetKind() == "CustomResourceDefinition" || saved(u, step, ref) != nil {
			continue
		}
		s := install.Saved{Step: step, Ref: ref}
		if l := live(o); l != nil {
			s.Object = restorable(l)
		}
		u.Saved = append(u.Saved, s)
	}
}

// savedOf returns the entries of step, in the order they were saved.
func savedOf(u *install.Upgrade, step string) []install.Saved {
	var out []install.Saved
	for _, s := range u.Saved {
		if s.Step == step {
			out = append(out, s)
		}
	}
	return out
}

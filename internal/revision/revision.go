// Package revision names the objects of one istiod control plane the way
// Istio's charts name them, for the default (non-revisioned) control plane
// and for revisions such as 1-29-1, and finds the control planes of a build
// or of a cluster.
package revision

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Default is the revision of a control plane installed without one: its
// objects carry istio.io/rev=default and no suffix in their names.
const Default = "default"

// Labels Istio's charts and injector put on what belongs to a revision or a
// tag.
const (
	Label    = "istio.io/rev"
	TagLabel = "istio.io/tag"
)

// StepLabel marks, in an installation of a revision, the objects an
// upgrade by revision applies at each of its steps: StepStart, the new
// control plane and what every revision shares (the CNI node agent);
// StepSwitch, the default tag, the default validator and the gateways.
const (
	StepLabel  = "kfistio.kubeflow.org/upgrade-step"
	StepStart  = "start"
	StepSwitch = "switch"
)

// StepOf returns the step of an upgrade by revision that applies o, an
// object of a control plane's render: the switch for the default tag's
// objects, the default validator and the gateways; the start for the rest.
func StepOf(o *unstructured.Unstructured) string {
	switch {
	case o.GetLabels()[TagLabel] != "",
		o.GetKind() == "ValidatingWebhookConfiguration" && o.GetName() == DefaultValidator,
		IsGateway(o):
		return StepSwitch
	}
	return StepStart
}

// IsGateway reports whether o is an object of a gateway, as Istio's charts
// label those.
func IsGateway(o *unstructured.Unstructured) bool {
	return o.GetLabels()["operator.istio.io/component"] == "IngressGateways"
}

// Namespace is where every control plane lives.
const Namespace = "istio-system"

// Of returns the revision name of an Istio release, as Istio's documentation
// names canary revisions: 1.29.1 is 1-29-1.
func Of(release string) string { return strings.ReplaceAll(release, ".", "-") }

// Name returns the name of the object of revision rev that the default
// control plane calls base: istiod is istiod-1-29-1, and names that end in
// the namespace (istio-validator-istio-system) take the revision before it
// (istio-validator-1-29-1-istio-system). The default revision keeps base.
func Name(base, rev string) string {
	if rev == "" || rev == Default {
		return base
	}
	if stem, ok := strings.CutSuffix(base, "-"+Namespace); ok {
		return stem + "-" + rev + "-" + Namespace
	}
	return base + "-" + rev
}

// Base is the inverse of Name: the default control plane's name of the
// object that revision rev calls name, and whether name is one of rev's.
func Base(name, rev string) (string, bool) {
	if rev == "" || rev == Default {
		return name, true
	}
	if stem, ok := strings.CutSuffix(name, "-"+rev+"-"+Namespace); ok {
		return stem + "-" + Namespace, true
	}
	return strings.CutSuffix(name, "-"+rev)
}

// Names are the objects of one control plane that kfistio reads.
type Names struct {
	Revision string
	// Istiod is its Deployment and Service.
	Istiod string
	// Mesh and Injector are its ConfigMaps: the mesh config and the
	// injector's templates and values.
	Mesh, Injector string
	// InjectorWebhook is its MutatingWebhookConfiguration, Validator its
	// ValidatingWebhookConfiguration.
	InjectorWebhook, Validator string
}

// NamesOf returns the names of revision rev's objects.
func NamesOf(rev string) Names {
	if rev == "" {
		rev = Default
	}
	return Names{
		Revision:        rev,
		Istiod:          Name("istiod", rev),
		Mesh:            Name("istio", rev),
		Injector:        Name("istio-sidecar-injector", rev),
		InjectorWebhook: Name("istio-sidecar-injector", rev),
		Validator:       Name("istio-validator-"+Namespace, rev),
	}
}

// DefaultValidator is the ValidatingWebhookConfiguration that validates the
// Istio config of no revision, on behalf of the default revision or tag.
const DefaultValidator = "istiod-default-validator"

// TagWebhook names the MutatingWebhookConfiguration of tag.
func TagWebhook(tag string) string { return "istio-revision-tag-" + tag }

// IstiodContainer is the container of istiod's pods.
const IstiodContainer = "discovery"

// IsIstiod reports whether o is the Deployment of an istiod.
func IsIstiod(o *unstructured.Unstructured) bool {
	return o.GetKind() == "Deployment" && o.GetNamespace() == Namespace && o.GetLabels()["app"] == "istiod"
}

// OfObject returns the revision o carries in its istio.io/rev label, the
// default when it carries none.
func OfObject(o *unstructured.Unstructured) string {
	if r := o.GetLabels()[Label]; r != "" {
		return r
	}
	return Default
}

// Find returns the names of the control plane of objs: the revision of its
// istiod Deployment, the default when objs hold none.
func Find(objs []*unstructured.Unstructured) Names {
	for _, o := range objs {
		if IsIstiod(o) {
			return NamesOf(OfObject(o))
		}
	}
	return NamesOf(Default)
}

// Minor returns the minor version of an Istio release such as 1.26.1.
func Minor(release string) (int, error) {
	parts := strings.Split(release, ".")
	if len(parts) < 2 || parts[0] != "1" {
		return 0, fmt.Errorf("%q is not an Istio release (1.minor.patch)", release)
	}
	return strconv.Atoi(parts[1])
}

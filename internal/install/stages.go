package install

import (
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/object"
)

// stage is one step of an install: objects applied together, then waited for.
type stage struct {
	name string
	// wait says what the stage waits for once applied.
	wait string
	objs []*unstructured.Unstructured
}

// Stage names.
const (
	stageFoundation   = "CRDs and namespaces"
	stageControlPlane = "control plane"
	stageWebhooks     = "webhooks"
	stageGateways     = "gateways and Istio resources"
)

// stageOrder is Istio's component order: the base (CRDs) first, then istiod
// and the CNI node agent, then the webhooks istiod serves, then gateways and
// the Istio configuration that istiod validates and distributes. The
// validating webhooks fail closed, so that configuration is applied only
// once istiod has written the CA bundle of every webhook.
var stageOrder = []struct{ name, wait string }{
	{stageFoundation, "CustomResourceDefinitions Established, namespaces Active"},
	{stageControlPlane, "istiod and the CNI node agent ready"},
	{stageWebhooks, "istiod to serve its webhooks"},
	{stageGateways, "gateways ready"},
}

// componentLabel is the label Istio's renderer puts on its objects.
const componentLabel = "operator.istio.io/component"

func stageOf(o *unstructured.Unstructured) string {
	gvk := o.GroupVersionKind()
	switch {
	case gvk.Kind == "CustomResourceDefinition" || gvk.Kind == "Namespace":
		return stageFoundation
	case gvk.Group == "admissionregistration.k8s.io":
		return stageWebhooks
	case strings.HasSuffix(gvk.Group, "istio.io"):
		return stageGateways
	}
	switch o.GetLabels()[componentLabel] {
	case "IngressGateways", "EgressGateways":
		return stageGateways
	}
	return stageControlPlane
}

// stages splits objs into the install stages, each in object.Less order.
func stages(objs []*unstructured.Unstructured) []stage {
	out := make([]stage, len(stageOrder))
	idx := map[string]int{}
	for i, s := range stageOrder {
		out[i] = stage{name: s.name, wait: s.wait}
		idx[s.name] = i
	}
	for _, o := range objs {
		i := idx[stageOf(o)]
		out[i].objs = append(out[i].objs, o)
	}
	for i := range out {
		object.Sort(out[i].objs)
	}
	return out
}

// installOrder sorts objs as they are installed: by stage, then object.Less.
func installOrder(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, s := range stages(objs) {
		out = append(out, s.objs...)
	}
	return out
}

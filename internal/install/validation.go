package install

import (
	"context"
	"fmt"
	"strings"
	"time"

	"istio.io/istio/pkg/config/constants"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
)

var gateways = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "gateways"}

// validates reports whether objs hold a validating webhook that calls istiod.
func validates(objs []*unstructured.Unstructured) bool {
	for _, o := range objs {
		if o.GetKind() != "ValidatingWebhookConfiguration" {
			continue
		}
		hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
		for _, h := range hooks {
			m, _ := h.(map[string]any)
			svc, _, _ := unstructured.NestedString(m, "clientConfig", "service", "name")
			svcNS, _, _ := unstructured.NestedString(m, "clientConfig", "service", "namespace")
			if svc == "istiod" && svcNS == istioNamespace {
				return true
			}
		}
	}
	return false
}

// waitValidation waits until istiod's validation webhook answers, as istiod
// itself finds out before it lets validation fail closed: the server-side
// dry run of a Gateway that carries the annotation istiod's validator always
// refuses is refused by the webhook. istiod writes the CA bundle of its
// webhooks before it serves them, so the bundle alone does not tell.
func (in *Installer) waitValidation(ctx context.Context, what string, timeout time.Duration) error {
	probe := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
		"metadata": map[string]any{
			"name": "kfistio-validation-probe", "namespace": istioNamespace,
			"labels":      map[string]any{"istio.io/rev": "default"},
			"annotations": map[string]any{constants.AlwaysReject: "true"},
		},
		"spec": map[string]any{},
	}}
	deadline := time.Now().Add(timeout)
	for {
		// A poll: each answer counts, none is retried.
		_, err := in.Client.Dynamic.Resource(gateways).Namespace(istioNamespace).Create(kube.WithoutRetries(ctx), probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		switch {
		case err == nil:
			// No webhook validates it: nothing to wait for.
			return nil
		case strings.Contains(err.Error(), "denied the request"):
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		if time.Now().After(deadline) {
			return &NotReadyError{What: what, Timeout: timeout, Objects: []NotReady{{
				Object: object.KeyOf("Service", istioNamespace, "istiod"), Status: "InProgress",
				Reason: "istiod's validation webhook does not answer: " + err.Error() + "; check kubectl logs -n istio-system deploy/istiod",
			}}}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

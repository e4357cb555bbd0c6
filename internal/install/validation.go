package install

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"istio.io/istio/pkg/config/constants"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
)

var gateways = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "gateways"}

// validatorRevisions returns the revisions (istio.io/rev labels) of the
// validating webhook configurations of objs that call istiod's /validate.
func validatorRevisions(objs []*unstructured.Unstructured) []string {
	var revs []string
	for _, o := range objs {
		if o.GetKind() != "ValidatingWebhookConfiguration" {
			continue
		}
		rev := revision.OfObject(o)
		for _, ws := range object.WebhookServices(o) {
			if ws.Namespace == revision.Namespace && ws.Path == "/validate" && !slices.Contains(revs, rev) {
				revs = append(revs, rev)
			}
		}
	}
	return revs
}

// waitValidation waits until the validation webhooks of objs answer, as
// istiod itself finds out before it lets validation fail closed: the
// server-side dry run of a Gateway that carries the annotation istiod's
// validator always refuses, labelled with the revision of each validator, is
// refused by the webhook. istiod writes the CA bundle of its webhooks before
// it serves them, so the bundle alone does not tell.
func (in *Installer) waitValidation(ctx context.Context, what string, objs []*unstructured.Unstructured, timeout time.Duration) error {
	for _, rev := range validatorRevisions(objs) {
		if err := in.waitValidator(ctx, what, rev, timeout); err != nil {
			return err
		}
	}
	return nil
}

// validationProbe is a Gateway that istiod's validator of revision rev
// always refuses.
func validationProbe(rev string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
		"metadata": map[string]any{
			"name": "kfistio-validation-probe", "namespace": revision.Namespace,
			"labels":      map[string]any{revision.Label: rev},
			"annotations": map[string]any{constants.AlwaysReject: "true"},
		},
		"spec": map[string]any{},
	}}
}

// probeValidator sends the probe of revision rev once, as a server-side
// dry run: nil when istiod's validator refused it or no validator applies to
// it, else why it did not answer.
func (in *Installer) probeValidator(ctx context.Context, rev string) error {
	_, err := in.Client.Dynamic.Resource(gateways).Namespace(revision.Namespace).Create(kube.WithoutRetries(ctx), validationProbe(rev), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err == nil || strings.Contains(err.Error(), "denied the request") {
		return nil
	}
	return err
}

// waitValidator waits until the validator of revision rev refuses the probe.
func (in *Installer) waitValidator(ctx context.Context, what, rev string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		// A poll: each answer counts, none is retried.
		err := in.probeValidator(ctx, rev)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("%s: %w", what, ctx.Err())
		}
		if time.Now().After(deadline) {
			istiod := revision.NamesOf(rev).Istiod
			return &NotReadyError{What: what, Timeout: timeout, Objects: []NotReady{{
				Object: object.KeyOf("Service", revision.Namespace, istiod), Status: "InProgress",
				Reason: "istiod's validation webhook does not answer: " + err.Error() + "; check kubectl logs -n istio-system deploy/" + istiod,
			}}}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

package install

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	"github.com/kubeflow/kfistio/internal/object"
)

// NotReady is an object that did not become ready, and why.
type NotReady struct {
	Object string `json:"object"`
	Status string `json:"status"`
	Reason string `json:"reason"`
}

// NotReadyError lists what did not become ready in time.
type NotReadyError struct {
	What    string
	Timeout time.Duration
	Objects []NotReady
}

func (e *NotReadyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: not ready after %s:", e.What, e.Timeout)
	for _, n := range e.Objects {
		fmt.Fprintf(&b, "\n  %s: %s", n.Object, n.Reason)
	}
	return b.String()
}

// waitable reports whether the readiness of o is worth waiting for.
func waitable(o *unstructured.Unstructured) bool {
	switch o.GetKind() {
	case "CustomResourceDefinition", "Deployment", "DaemonSet", "StatefulSet",
		"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
		return true
	}
	return false
}

// readiness is kstatus's status of o; a webhook configuration, which kstatus
// sees as current once it exists, is ready when every webhook has the CA
// bundle istiod writes: before that, the API server cannot call it.
func readiness(o *unstructured.Unstructured) (*status.Result, error) {
	switch o.GetKind() {
	case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
		hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
		var missing []string
		for _, h := range hooks {
			m, _ := h.(map[string]any)
			if b, _, _ := unstructured.NestedString(m, "clientConfig", "caBundle"); b == "" {
				missing = append(missing, fmt.Sprint(m["name"]))
			}
		}
		if len(missing) > 0 {
			return &status.Result{Status: status.InProgressStatus, Message: fmt.Sprintf(
				"webhooks %s have no CA bundle: istiod writes it once it serves them; check kubectl logs -n istio-system deploy/istiod, and once istiod may update the webhook again, restart it (kubectl rollout restart -n istio-system deploy/istiod)",
				strings.Join(missing, ", "))}, nil
		}
		return &status.Result{Status: status.CurrentStatus, Message: "every webhook has the CA bundle istiod writes"}, nil
	}
	return status.Compute(o)
}

const pollInterval = 500 * time.Millisecond

// Wait polls the objects of objs worth waiting for (workloads, CRDs,
// webhook configurations) until kstatus says each is Current, or timeout
// passes; then it explains each object that is not ready. It lists them by
// kind and namespace, only those labelled ManagedLabel.
func (in *Installer) Wait(ctx context.Context, what string, objs []*unstructured.Unstructured, timeout time.Duration) error {
	return in.wait(ctx, what, objs, timeout, ManagedLabel+"=true")
}

// WaitWorkloads is Wait for objects kfistio did not apply, such as the
// workloads of users.
func (in *Installer) WaitWorkloads(ctx context.Context, what string, objs []*unstructured.Unstructured, timeout time.Duration) error {
	return in.wait(ctx, what, objs, timeout, "")
}

func (in *Installer) wait(ctx context.Context, what string, objs []*unstructured.Unstructured, timeout time.Duration, selector string) error {
	pending := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		if waitable(o) {
			pending[object.Key(o)] = o
		}
	}
	if len(pending) == 0 {
		return nil
	}
	deadline := time.Now().Add(timeout)
	last := map[string]*status.Result{}
	lastObj := map[string]*unstructured.Unstructured{}
	for {
		var objs []*unstructured.Unstructured
		for _, o := range pending {
			objs = append(objs, o)
		}
		snap, err := in.snapshot(ctx, objs, selector)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s: %w", what, ctx.Err())
			}
			return fmt.Errorf("%s: %w", what, err)
		}
		for key, o := range pending {
			live, known := snap.Get(in, o)
			if live == nil {
				reason := "not found"
				if !known {
					reason = "its kind is not served"
				}
				last[key] = &status.Result{Status: status.NotFoundStatus, Message: reason}
				continue
			}
			st, err := readiness(live)
			if err != nil {
				return fmt.Errorf("%s: status of %s: %w", what, key, err)
			}
			if st.Status == status.CurrentStatus {
				delete(pending, key)
				continue
			}
			last[key], lastObj[key] = st, live
		}
		if len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
	e := &NotReadyError{What: what, Timeout: timeout}
	keys := make([]string, 0, len(pending))
	for k := range pending {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		st := last[k]
		reason := st.Message
		if o := lastObj[k]; o != nil {
			if why := in.explain(ctx, o); why != "" {
				reason += "; " + why
			}
		}
		e.Objects = append(e.Objects, NotReady{Object: k, Status: string(st.Status), Reason: reason})
	}
	return e
}

// explain finds out why o is not ready: the conditions of a CRD, or the
// state of a workload's pods.
func (in *Installer) explain(ctx context.Context, o *unstructured.Unstructured) string {
	if o.GetKind() == "CustomResourceDefinition" {
		return falseConditions(o)
	}
	sel, found, _ := unstructured.NestedStringMap(o.Object, "spec", "selector", "matchLabels")
	if !found {
		return ""
	}
	pods, err := in.Client.Kube.CoreV1().Pods(o.GetNamespace()).List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(sel).String()})
	if err != nil {
		return "cannot list its pods: " + err.Error()
	}
	var reasons []string
	for _, p := range pods.Items {
		if r := podProblem(&p); r != "" {
			reasons = append(reasons, "pod "+p.Name+": "+r)
		}
	}
	if len(pods.Items) == 0 {
		reasons = append(reasons, "no pods"+in.replicaFailure(ctx, o, sel))
	}
	if len(reasons) > 3 {
		reasons = append(reasons[:3], fmt.Sprintf("and %d more pods", len(reasons)-3))
	}
	return strings.Join(reasons, "; ")
}

// replicaFailure returns why the ReplicaSets of a Deployment create no pods
// (a Pod Security rejection, a missing ServiceAccount, ...).
func (in *Installer) replicaFailure(ctx context.Context, o *unstructured.Unstructured, sel map[string]string) string {
	if o.GetKind() != "Deployment" {
		return ""
	}
	rss, err := in.Client.Kube.AppsV1().ReplicaSets(o.GetNamespace()).List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(sel).String()})
	if err != nil {
		return ""
	}
	for _, rs := range rss.Items {
		for _, c := range rs.Status.Conditions {
			if c.Type == "ReplicaFailure" && c.Status == corev1.ConditionTrue {
				return ": " + c.Message
			}
		}
	}
	return ""
}

// podProblem says what keeps a pod from being ready, or "".
func podProblem(p *corev1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			return fmt.Sprintf("%s: %s", p.Status.Phase, strings.TrimSpace(c.Reason+" "+c.Message))
		}
	}
	statuses := append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
	for _, cs := range statuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "PodInitializing" && w.Reason != "ContainerCreating" {
			return fmt.Sprintf("container %s %s: %s", cs.Name, w.Reason, w.Message)
		}
		if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
			return fmt.Sprintf("container %s terminated: %s (exit %d)", cs.Name, t.Reason, t.ExitCode)
		}
	}
	if p.Status.Phase != corev1.PodRunning && p.Status.Phase != corev1.PodSucceeded {
		return string(p.Status.Phase)
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status != corev1.ConditionTrue {
			return "not ready: " + strings.TrimSpace(c.Reason+" "+c.Message)
		}
	}
	return ""
}

// falseConditions lists the conditions of o that are not True.
func falseConditions(o *unstructured.Unstructured) string {
	conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
	var out []string
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["status"] != "True" {
			out = append(out, fmt.Sprintf("%v=%v: %v", m["type"], m["status"], m["message"]))
		}
	}
	return strings.Join(out, "; ")
}

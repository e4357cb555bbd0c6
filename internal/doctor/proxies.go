package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
)

// StaleWorkload is a workload whose pods run sidecars of another Istio
// release than istiod (finding KF106): they were injected before the last
// upgrade, and a restart injects them again.
type StaleWorkload struct {
	// Workload is Kind/namespace/name of what restarts the pods: a
	// Deployment, StatefulSet or DaemonSet, or the pod itself when no such
	// controller owns it.
	Workload string
	// Pods are the pods of the workload with such a sidecar.
	Pods []string
	// Proxy is the release their sidecars run.
	Proxy string
	// Restart is what to run.
	Restart string
}

// Line is w as the lists of workloads to restart show it: the command, then
// the workload and its proxies.
func (w StaleWorkload) Line() string {
	return fmt.Sprintf("%s   # %s: %d pods with proxy %s", w.Restart, w.Workload, len(w.Pods), w.Proxy)
}

// StaleProxies lists the workloads whose pods run a sidecar of another
// release than release, sorted.
func StaleProxies(ctx context.Context, c *kube.Client, release string) ([]StaleWorkload, error) {
	pods, err := kube.ListAll[*corev1.Pod](ctx, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return c.Kube.CoreV1().Pods("").List(ctx, o)
	}, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	return (&owners{c: c}).stale(ctx, pods, release)
}

// pointers points to each of vs.
func pointers[T any](vs []T) []*T {
	out := make([]*T, len(vs))
	for i := range vs {
		out[i] = &vs[i]
	}
	return out
}

// ProxiesOf lists the workloads of pods (all of the cluster's, read once)
// whose pods run a proxy (sidecar or gateway) of the control plane revision
// rev, sorted; Proxy says the release they run.
func ProxiesOf(ctx context.Context, c *kube.Client, pods []corev1.Pod, rev string) ([]StaleWorkload, error) {
	return (&owners{c: c}).group(ctx, pointers(pods), func(p *corev1.Pod) (string, bool) {
		tag, ok := proxyRelease(p)
		return tag, ok && PodRevision(p) == rev && p.DeletionTimestamp == nil
	})
}

// PodRevision returns the control plane revision whose proxy p runs: for an
// injected pod, the revision its injection recorded in its
// sidecar.istio.io/status annotation; for a gateway, the istio.io/rev label
// of its pod template; "default" without either.
func PodRevision(p *corev1.Pod) string {
	var status struct {
		Revision string `json:"revision"`
	}
	if s := p.Annotations[sidecarStatusAnno]; s != "" && json.Unmarshal([]byte(s), &status) == nil && status.Revision != "" {
		return status.Revision
	}
	if r := p.Labels[revision.Label]; r != "" {
		return r
	}
	return revision.Default
}

// proxyRelease returns the release of p's sidecar, and whether it has one.
func proxyRelease(p *corev1.Pod) (string, bool) {
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name == inject.ProxyContainer {
			_, tag := object.SplitImage(c.Image)
			return tag, true
		}
	}
	return "", false
}

// owners finds what restarts a pod, listing the ReplicaSets of the
// cluster once, or, where that is forbidden, of each namespace once.
type owners struct {
	c *kube.Client
	// deployments names the Deployment of each ReplicaSet (namespace/name)
	// of the namespaces in listed ("" for all).
	deployments map[string]string
	listed      map[string]bool
}

func (o *owners) stale(ctx context.Context, pods []*corev1.Pod, release string) ([]StaleWorkload, error) {
	return o.group(ctx, pods, func(p *corev1.Pod) (string, bool) {
		tag, ok := proxyRelease(p)
		return tag, ok && release != "" && tag != release
	})
}

// group returns, by workload, the pods for which pick returns true, with
// the proxy release it returns.
func (o *owners) group(ctx context.Context, pods []*corev1.Pod, pick func(*corev1.Pod) (string, bool)) ([]StaleWorkload, error) {
	byWorkload := map[string]*StaleWorkload{}
	for _, p := range pods {
		tag, ok := pick(p)
		if !ok {
			continue
		}
		w, restart, err := o.workload(ctx, p)
		if err != nil {
			return nil, err
		}
		s := byWorkload[w]
		if s == nil {
			s = &StaleWorkload{Workload: w, Proxy: tag, Restart: restart}
			byWorkload[w] = s
		}
		s.Pods = append(s.Pods, object.KeyOf("Pod", p.Namespace, p.Name))
	}
	out := make([]StaleWorkload, 0, len(byWorkload))
	for _, s := range byWorkload {
		sort.Strings(s.Pods)
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Workload < out[j].Workload })
	return out, nil
}

// listReplicaSets reads the ReplicaSets that namespace ns holds, once: of
// every namespace, or of ns alone when this user may not list them all.
func (o *owners) listReplicaSets(ctx context.Context, ns string) error {
	if o.listed[""] || o.listed[ns] {
		return nil
	}
	if o.listed == nil {
		o.listed, o.deployments = map[string]bool{}, map[string]string{}
	}
	list := func(ns string) ([]*appsv1.ReplicaSet, error) {
		return kube.ListAll[*appsv1.ReplicaSet](ctx, func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			return o.c.Kube.AppsV1().ReplicaSets(ns).List(ctx, opts)
		}, metav1.ListOptions{})
	}
	sets, err := list("")
	scope := ""
	if apierrors.IsForbidden(err) {
		sets, err = list(ns)
		scope = ns
	}
	if err != nil {
		return fmt.Errorf("list ReplicaSets in namespace %s: %w", ns, err)
	}
	o.listed[scope] = true
	for _, rs := range sets {
		if ref := metav1.GetControllerOf(rs); ref != nil && ref.Kind == "Deployment" {
			o.deployments[rs.Namespace+"/"+rs.Name] = ref.Name
		}
	}
	return nil
}

// workload returns the key of what restarts p and the command that does.
func (o *owners) workload(ctx context.Context, p *corev1.Pod) (string, string, error) {
	kind, name := "", ""
	if ref := metav1.GetControllerOf(p); ref != nil {
		kind, name = ref.Kind, ref.Name
	}
	if kind == "ReplicaSet" {
		if err := o.listReplicaSets(ctx, p.Namespace); err != nil {
			return "", "", err
		}
		dep := o.deployments[p.Namespace+"/"+name]
		kind, name = "Deployment", dep
		if dep == "" {
			kind = ""
		}
	}
	switch kind {
	case "Deployment", "StatefulSet", "DaemonSet":
		return object.KeyOf(kind, p.Namespace, name),
			fmt.Sprintf("kubectl rollout restart -n %s %s/%s", p.Namespace, strings.ToLower(kind), name), nil
	}
	if kind != "" {
		// A Job, a bare ReplicaSet...: its controller makes the pod again.
		return object.KeyOf("Pod", p.Namespace, p.Name), fmt.Sprintf("kubectl delete pod -n %s %s", p.Namespace, p.Name), nil
	}
	return object.KeyOf("Pod", p.Namespace, p.Name),
		fmt.Sprintf("kubectl get pod -n %s %s -o yaml | kubectl replace --force -f -", p.Namespace, p.Name), nil
}

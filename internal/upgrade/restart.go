package upgrade

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubeflow/kfistio/internal/doctor"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/object"
)

// RestartOptions say which workloads Restart restarts.
type RestartOptions struct {
	// Namespaces to restart, one after the other; All for every namespace.
	// With neither, Restart only lists what it would restart.
	Namespaces []string
	All        bool
	Timeout    time.Duration
}

// RestartedAtAnnotation is the pod template annotation that `kubectl rollout
// restart` sets, and Restart with it.
const RestartedAtAnnotation = "kubectl.kubernetes.io/restartedAt"

// RestartFieldManager is the field manager of Restart's patches.
const RestartFieldManager = "kfistio-restart"

// Restart restarts, namespace by namespace, the Deployments, StatefulSets
// and DaemonSets whose pods run proxies of a revision other than the default
// one (the gateways of istio-system move with the switch), waiting until
// each namespace's workloads are ready again before the next; their new pods
// are injected by the default revision. Pods that no such workload owns are
// listed with the command that replaces them. Without namespaces it only
// lists, in Result.InUse.
func (u *Upgrader) Restart(ctx context.Context, o RestartOptions) (*Result, error) {
	st, err := u.read(ctx)
	if err != nil {
		return nil, err
	}
	def := ""
	if st.inv != nil && st.inv.Upgrade != nil {
		def = st.inv.Upgrade.Default
	} else if cp := install.DefaultControlPlane(st.cps); cp != nil {
		def = cp.Revision
	}
	if def == "" {
		return nil, errors.New("no control plane injects namespaces labelled istio-injection=enabled: nothing to restart onto")
	}
	res := &Result{}
	if st.inv != nil {
		res.Upgrade = st.inv.Upgrade
	}
	pods, err := u.In.Client.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var revs []string
	for i := range pods.Items {
		if rev := doctor.PodRevision(&pods.Items[i]); rev != def && !slices.Contains(revs, rev) {
			revs = append(revs, rev)
		}
	}
	slices.Sort(revs)
	for _, rev := range revs {
		ws, err := doctor.ProxiesOf(ctx, u.In.Client, pods.Items, rev)
		if err != nil {
			return nil, err
		}
		res.InUse = append(res.InUse, WithoutGateways(ws)...)
	}
	if !o.All && len(o.Namespaces) == 0 {
		return res, nil
	}
	byNamespace := map[string][]doctor.StaleWorkload{}
	for _, w := range res.InUse {
		ns := namespaceOf(w)
		if o.All || slices.Contains(o.Namespaces, ns) {
			byNamespace[ns] = append(byNamespace[ns], w)
		}
	}
	restarted := map[string]bool{}
	for _, ns := range slices.Sorted(maps.Keys(byNamespace)) {
		var objs []*unstructured.Unstructured
		err := u.In.Step(fmt.Sprintf("Restarting the workloads of namespace %s onto revision %s", ns, def), func() error {
			for _, w := range byNamespace[ns] {
				obj, err := u.restart(ctx, w)
				if err != nil {
					return err
				}
				if obj == nil {
					res.Notes = append(res.Notes, fmt.Sprintf("%s is not a Deployment, StatefulSet or DaemonSet: replace its pods yourself: %s", w.Workload, w.Restart))
					continue
				}
				objs = append(objs, obj)
				restarted[w.Workload] = true
				res.Changes = append(res.Changes, install.Change{Object: w.Workload, Action: Restarted, Note: fmt.Sprintf("its pods ran proxies %s", w.Proxy)})
			}
			return u.In.WaitWorkloads(ctx, "waiting for the workloads of namespace "+ns, objs, install.TimeoutOr(o.Timeout))
		})
		if err != nil {
			return res, err
		}
	}
	res.InUse = slices.DeleteFunc(res.InUse, func(w doctor.StaleWorkload) bool { return restarted[w.Workload] })
	return res, nil
}

// Restarted is the action of a workload that Restart restarted.
const Restarted install.Action = "restarted"

// restart sets RestartedAtAnnotation on the pod template of w, as kubectl
// rollout restart does, and returns a stub of w; nil when w is not a
// Deployment, StatefulSet or DaemonSet.
func (u *Upgrader) restart(ctx context.Context, w doctor.StaleWorkload) (*unstructured.Unstructured, error) {
	kind, ns, name, ok := object.SplitKey(w.Workload)
	if !ok || (kind != "Deployment" && kind != "StatefulSet" && kind != "DaemonSet") {
		return nil, nil
	}
	obj := install.Ref{APIVersion: "apps/v1", Kind: kind, Namespace: ns, Name: name}.Stub()
	res, err := u.In.Client.Resource(obj)
	if err != nil {
		return nil, fmt.Errorf("restart %s: %w", w.Workload, err)
	}
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{%q:%q}}}}}`, RestartedAtAnnotation, time.Now().UTC().Format(time.RFC3339))
	if _, err := res.Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: RestartFieldManager}); err != nil {
		return nil, fmt.Errorf("restart %s: %w", w.Workload, err)
	}
	return obj, nil
}

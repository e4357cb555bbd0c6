package upgrade

import (
	"context"
	"errors"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/testcluster"
	"github.com/kubeflow/kfistio/internal/testutil"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// expectPrevious fails unless the cluster is back on Kubeflow's previous
// tree: its istiod alone, injecting new pods, its CNI node agent, no
// inventory, no default validator (that tree had none).
func expectPrevious(t *testing.T, when string) {
	t.Helper()
	ctx := context.Background()
	u, _ := upgrader(t)
	if d := deployment(t, next.Istiod); d != nil {
		t.Errorf("%s: %s is still there", when, next.Istiod)
	}
	if p, err := newPod(ctx, u.In.Client, profile); err != nil {
		t.Error(err)
	} else {
		expectProxy(t, p, previous, revision.Default)
	}
	ds, err := u.In.Client.Kube.AppsV1().DaemonSets("kube-system").Get(ctx, "istio-cni-node", metav1.GetOptions{})
	if err != nil || !strings.HasSuffix(ds.Spec.Template.Spec.Containers[0].Image, ":"+previous) {
		t.Errorf("%s: the CNI node agent is not back on %s: %v", when, previous, err)
	}
	if _, err := u.In.ReadInventory(ctx); !errors.Is(err, install.ErrNotInstalled) {
		t.Errorf("%s: kfistio's inventory is still there: %v", when, err)
	}
	if _, err := u.In.Client.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, revision.DefaultValidator, metav1.GetOptions{}); err == nil {
		t.Errorf("%s: the default validator the upgrade added is still there", when)
	}
	if ok, err := refused(ctx, u.In.Client, validationLabels[1]); !ok {
		t.Errorf("%s: invalid config labelled istio.io/rev=default is not refused: %v", when, err)
	}
	expectRevisions(t, when, map[string]string{revision.Default: previous + " default 3 pods"})
}

// Every rollback point, on Kubeflow's 1.26.1 tree applied with kubectl and
// its real istiod: after start, the new revision is removed at once and what
// start changed goes back; after a switch and a restart (interrupted once
// and run again), the gateways, the old injector and the default validator
// go back first, the restarted workload goes back with a restart, and finish
// removes the new revision. Pods are injected and invalid Istio config is
// refused throughout; the old release's sidecar keeps getting pushes; no
// istiod logs an error.
func TestUpgradeRollback(t *testing.T) {
	ctx := context.Background()
	applyKubeflow(t, "")
	mark := cluster.IstiodLogMark()
	u, _ := upgrader(t)
	o := options(t)
	namespace(t, profile, map[string]string{"istio-injection": "enabled"})
	notebook := workload(t, profile, "notebook")
	old := connectSidecar(t, notebook, previousDefault.Istiod, previous)

	// After start, with a workload of a canary namespace on the new
	// revision: the rollback keeps the revision until the workload has moved
	// (a new label, a restart), then finish removes it.
	if res, err := u.Start(ctx, o); err != nil {
		t.Fatalf("start: %v\n%s", err, text(res.Changes))
	}
	namespace(t, canary, map[string]string{revision.Label: upstream.Revision})
	expectProxy(t, workload(t, canary, "app"), upstream.Release, upstream.Revision)
	res, err := u.Rollback(ctx, o)
	if err != nil {
		t.Fatalf("rollback after start: %v\n%s", err, text(res.Changes))
	}
	if res.Upgrade == nil || !res.Upgrade.RolledBack || len(res.InUse) != 1 || !strings.Contains(Next(res.Upgrade, len(res.InUse)), "restart") {
		t.Fatalf("rollback after start with a workload on the new revision: upgrade %+v, in use %+v", res.Upgrade, res.InUse)
	}
	var inUse *InUseError
	if _, err := u.Finish(ctx, o); !errors.As(err, &inUse) || inUse.Revision != upstream.Revision {
		t.Fatalf("finish with the canary on the new revision: %v", err)
	}
	kubectl(t, "label", "namespace", canary, revision.Label+"-", "istio-injection=enabled")
	if res, err := u.Restart(ctx, RestartOptions{Namespaces: []string{canary}}); err != nil || len(res.InUse) != 0 {
		t.Fatalf("restart %s: %+v, %v", canary, res, err)
	}
	expectProxy(t, runningPod(t, canary, "app=app"), previous, revision.Default)
	kubectl(t, "delete", "deployment", "-n", canary, "app", "--cascade=foreground", "--wait")
	if res, err = u.Finish(ctx, o); err != nil {
		t.Fatalf("finish after the rollback: %v\n%s", err, text(res.Changes))
	}
	expectPrevious(t, "rollback after start")
	old.expectPush(t, "rollback after start")
	istiodErrors(t, mark, "rollback after start")

	// After switch and restart; start and switch each interrupted once,
	// once they have written, and run again.
	if _, err := u.Start(interrupted(t, ref("apps/v1", "Deployment", revision.Namespace, next.Istiod)), o); err == nil {
		t.Fatal("start was not interrupted")
	}
	if res, err := u.Start(ctx, o); err != nil {
		t.Fatalf("start run again: %v\n%s", err, text(res.Changes))
	}
	if _, err = u.Switch(interrupted(t, ref("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "", revision.TagWebhook(revision.Default))), o); err == nil {
		t.Fatal("switch was not interrupted")
	}
	stop := watch(t, profile, validationLabels...)
	res, err = u.Switch(ctx, o)
	expectWatched(t, "switch run again", stop)
	if err != nil {
		t.Fatalf("switch run again: %v\n%s", err, text(res.Changes))
	}
	if _, err := u.Restart(ctx, RestartOptions{Namespaces: []string{profile}}); err != nil {
		t.Fatal(err)
	}
	expectProxy(t, runningPod(t, profile, "app=notebook"), upstream.Release, upstream.Revision)
	stop = watch(t, profile, validationLabels...)
	res, err = u.Rollback(ctx, o)
	expectWatched(t, "rollback after switch", stop)
	if err != nil {
		t.Fatalf("rollback after switch: %v\n%s", err, text(res.Changes))
	}
	if res.Upgrade == nil || res.Upgrade.Default != revision.Default || len(res.InUse) != 1 {
		t.Fatalf("rollback with the notebook on the new revision: upgrade %+v, in use %+v", res.Upgrade, res.InUse)
	}
	if img := imageOf(t, deployment(t, "istio-ingressgateway"), "istio-proxy"); !strings.HasSuffix(img, ":"+previous) {
		t.Errorf("the ingress gateway runs %s after the rollback", img)
	}
	if p, err := newPod(ctx, u.In.Client, profile); err != nil {
		t.Fatal(err)
	} else {
		expectProxy(t, p, previous, revision.Default)
	}
	expectValidated(t, "rollback after switch")
	// The default validator calls the previous istiod again.
	vwc, err := u.In.Client.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, revision.DefaultValidator, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range vwc.Webhooks {
		if s := h.ClientConfig.Service; s == nil || s.Name != previousDefault.Istiod {
			t.Errorf("after the rollback, webhook %s of %s calls %+v, want Service %s", h.Name, vwc.Name, s, previousDefault.Istiod)
		}
	}
	// Finish removes the new revision once nothing uses it.
	if _, err := u.Finish(ctx, o); !errors.As(err, &inUse) || inUse.Revision != upstream.Revision {
		t.Fatalf("finish with the notebook on the new revision: %v", err)
	}
	if _, err := u.Restart(ctx, RestartOptions{All: true}); err != nil {
		t.Fatal(err)
	}
	expectProxy(t, runningPod(t, profile, "app=notebook"), previous, revision.Default)
	// Config without a revision label goes unvalidated again once the default
	// validator is gone, as before the upgrade.
	stop = watch(t, profile, validationLabels[1])
	res, err = u.Finish(ctx, o)
	expectWatched(t, "finish after the rollback", stop)
	if err != nil {
		t.Fatalf("finish after the rollback: %v\n%s", err, text(res.Changes))
	}
	expectPrevious(t, "finish after the rollback")
	old.expectPush(t, "finish after the rollback")
	if _, err := u.Rollback(ctx, o); err == nil || !strings.Contains(err.Error(), "no upgrade by revision is under way") {
		t.Errorf("rollback once rolled back: %v", err)
	}
	istiodErrors(t, mark, "finish after the rollback")
}

// An earlier kfistio installed the previous release as revision 1-26-1, with
// the default tag: the upgrade goes to the next revision by the same steps,
// and finish leaves nothing of the previous revision, in the cluster or the
// inventory.
func TestUpgradeFromRevision(t *testing.T) {
	ctx := context.Background()
	const from = "1-26-1"
	crds, rest, err := testcluster.PreviousKubeflow(from)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wipe(t, testutil.WriteYAML(t, "objects.yaml", rest)) })
	u, _ := upgrader(t)
	o := options(t)
	earlier := o.Installation
	earlier.Revision = from
	objs := append(crds, rest...)
	if cs, err := u.In.Install(ctx, install.Options{Installation: earlier, Objects: objs, Version: "earlier"}); err != nil {
		t.Fatalf("the earlier install: %v\n%s", err, text(cs))
	}
	mark := cluster.IstiodLogMark()
	namespace(t, profile, map[string]string{"istio-injection": "enabled"})
	notebook := workload(t, profile, "notebook")
	expectProxy(t, notebook, previous, from)

	res, err := u.Start(ctx, o)
	if err != nil {
		t.Fatalf("start: %v\n%s", err, text(res.Changes))
	}
	if res.Upgrade.From != from || res.Upgrade.Previous == nil || res.Upgrade.Previous.Revision != from {
		t.Errorf("upgrade %+v", res.Upgrade)
	}
	if res, err = u.Switch(ctx, o); err != nil {
		t.Fatalf("switch: %v\n%s", err, text(res.Changes))
	}
	if p, err := newPod(ctx, u.In.Client, profile); err != nil {
		t.Fatal(err)
	} else {
		expectProxy(t, p, upstream.Release, upstream.Revision)
	}
	expectValidated(t, "after switch")
	if _, err := u.Restart(ctx, RestartOptions{All: true}); err != nil {
		t.Fatal(err)
	}
	if res, err = u.Finish(ctx, o); err != nil {
		t.Fatalf("finish: %v\n%s", err, text(res.Changes))
	}
	// Nothing of the previous revision is left.
	for _, kind := range []struct{ apiVersion, kind, ns string }{
		{"apps/v1", "Deployment", revision.Namespace}, {"v1", "ConfigMap", revision.Namespace}, {"v1", "Service", revision.Namespace},
		{"v1", "ServiceAccount", revision.Namespace}, {"admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", ""},
		{"admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", ""}, {"rbac.authorization.k8s.io/v1", "ClusterRole", ""},
	} {
		res, err := u.In.Client.Resource(&unstructured.Unstructured{Object: map[string]any{"apiVersion": kind.apiVersion, "kind": kind.kind, "metadata": map[string]any{"namespace": kind.ns}}})
		if err != nil {
			t.Fatal(err)
		}
		list, err := res.List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, item := range list.Items {
			if _, ok := revision.Base(item.GetName(), from); ok || item.GetLabels()[revision.Label] == from {
				t.Errorf("%s/%s of revision %s is left after finish", kind.kind, item.GetName(), from)
			}
		}
	}
	inv, err := u.In.ReadInventory(ctx)
	if err != nil || inv.Revision != upstream.Revision || inv.Upgrade != nil || inv.IstioRelease != upstream.Release {
		t.Fatalf("inventory after finish: %+v, %v", inv, err)
	}
	for _, r := range inv.Objects {
		if _, ok := revision.Base(r.Name, from); ok {
			t.Errorf("the inventory still lists %s", r.Key())
		}
	}
	istiodErrors(t, mark, "after finish")
}

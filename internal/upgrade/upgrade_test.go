package upgrade

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/upstream"
)

var (
	next            = revision.NamesOf(upstream.Revision)
	previousDefault = revision.NamesOf(revision.Default)
)

// expectWatched stops w and fails on what it saw go wrong.
func expectWatched(t *testing.T, when string, stop func() ([]string, int, int)) {
	t.Helper()
	problems, pods, configs := stop()
	if len(problems) > 0 {
		t.Errorf("%s: of %d pods and %d invalid configs created meanwhile: %s", when, pods, configs, strings.Join(problems, "; "))
	}
	if pods == 0 || configs == 0 {
		t.Errorf("%s: nothing was created meanwhile (%d pods, %d configs)", when, pods, configs)
	}
	t.Logf("%s: %d pods injected and %d invalid configs refused meanwhile", when, pods, configs)
}

// Kubeflow's Istio 1.26.1 tree, applied with kubectl, with its real istiod
// running: install refuses an in-place jump of three minor releases; the
// upgrade by revision goes through every step to finish, with the real
// istiod of both releases, while a controller keeps writing to the objects
// it adopts and to its inventory: pods are injected by the old istiod before
// the switch and by the new one after, none is left uninjected, invalid
// Istio config is refused throughout, a sidecar of the old release keeps
// getting its configuration from the old istiod until finish, and neither
// istiod logs an error.
func TestUpgradeFromKubeflow(t *testing.T) {
	ctx := context.Background()
	applyKubeflow(t, "")
	mark := cluster.IstiodLogMark()
	u, counter := upgrader(t)
	o := options(t)
	namespace(t, profile, map[string]string{"istio-injection": "enabled"})
	notebook := workload(t, profile, "notebook")
	expectProxy(t, notebook, previous, revision.Default)
	// The 1.26 tree validates only Istio config labelled istio.io/rev=default.
	if ok, _ := refused(ctx, u.In.Client, nil); ok {
		t.Fatal("invalid Istio config without a revision label is refused before the upgrade: the fixture is not Kubeflow's 1.26 tree")
	}
	old := connectSidecar(t, notebook, previousDefault.Istiod, previous)
	old.expectPush(t, "before the upgrade")

	// In place, three minor releases: refused before any write, with and
	// without --adopt.
	plain := options(t)
	plain.Installation.Revision = ""
	tree, err := build.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	if plain.Objects, plain.NamespaceLabels, err = tree.InstallationParts(plain.Installation); err != nil {
		t.Fatal(err)
	}
	for _, adopt := range []bool{false, true} {
		before := counter.Writes()
		_, err := u.In.Install(ctx, install.Options{Installation: plain.Installation, Objects: plain.Objects, NamespaceLabels: plain.NamespaceLabels, Adopt: adopt, Version: "test"})
		var skew *install.SkewError
		if !errors.As(err, &skew) || skew.From != previous || skew.Minors != 3 || !strings.Contains(err.Error(), "kfistio upgrade start") {
			t.Fatalf("install (adopt %v) over Istio %s: %v", adopt, previous, err)
		}
		if w := counter.Writes() - before; w != 0 {
			t.Errorf("the refused install wrote %d times", w)
		}
	}

	stopBusy := cluster.KeepWriting(
		ref("v1", "ConfigMap", install.InventoryNamespace, install.InventoryName),
		ref("apps/v1", "DaemonSet", "kube-system", "istio-cni-node"),
		ref("networking.istio.io/v1", "Gateway", revision.Namespace, "istio-ingressgateway"),
		ref("apps/v1", "Deployment", revision.Namespace, "istio-ingressgateway"),
		ref("coordination.k8s.io/v1", "Lease", install.InventoryNamespace, install.LeaseName),
	)
	// Config without a revision label is validated once start has added
	// the default validator, which it does first.
	stop := watch(t, profile, validationLabels[1])
	res, err := u.Start(ctx, o)
	expectWatched(t, "start", stop)
	if err != nil {
		t.Fatalf("start: %v\n%s", err, text(res.Changes))
	}
	if len(res.Notes) == 0 || !strings.Contains(res.Notes[0], "3 minor releases") {
		t.Errorf("start does not say that it spans three minor releases: %v", res.Notes)
	}
	waitIstiod(t, next.Istiod)
	if d := deployment(t, previousDefault.Istiod); d == nil || !strings.HasSuffix(imageOf(t, d, "discovery"), ":"+previous) {
		t.Fatal("the old istiod is gone after start")
	}
	p, err := newPod(ctx, u.In.Client, profile)
	if err != nil {
		t.Fatal(err)
	}
	expectProxy(t, p, previous, revision.Default)
	namespace(t, canary, map[string]string{revision.Label: upstream.Revision})
	if p, err = newPod(ctx, u.In.Client, canary); err != nil {
		t.Fatal(err)
	}
	expectProxy(t, p, upstream.Release, upstream.Revision)
	expectValidated(t, "after start")
	old.expectPush(t, "after start")
	istiodErrors(t, mark, "after start")

	// Started twice: the second run changes nothing.
	if res, err = u.Start(ctx, o); err != nil {
		t.Fatalf("start again: %v", err)
	}
	for _, c := range res.Changes {
		if c.Action != install.Unchanged {
			t.Errorf("start again changed %s: %s", c.Object, c.Action)
		}
	}
	// Finish before the switch has nothing to finish.
	if _, err := u.Finish(ctx, o); err == nil || !strings.Contains(err.Error(), "switch first") {
		t.Errorf("finish before the switch: %v", err)
	}

	stop = watch(t, profile, validationLabels...)
	res, err = u.Switch(ctx, o)
	expectWatched(t, "switch", stop)
	if err != nil {
		t.Fatalf("switch: %v\n%s", err, text(res.Changes))
	}
	if p, err = newPod(ctx, u.In.Client, profile); err != nil {
		t.Fatal(err)
	}
	expectProxy(t, p, upstream.Release, upstream.Revision)
	gw := deployment(t, "istio-ingressgateway")
	if img := imageOf(t, gw, "istio-proxy"); !strings.HasSuffix(img, ":"+upstream.Release) {
		t.Errorf("the ingress gateway runs %s after the switch", img)
	}
	expectProxy(t, runningPod(t, revision.Namespace, "app=istio-ingressgateway"), upstream.Release, upstream.Revision)
	expectValidated(t, "after switch")
	old.expectPush(t, "after switch")
	if len(res.InUse) != 1 || res.InUse[0].Workload != "Deployment/"+profile+"/notebook" {
		t.Errorf("after the switch, to restart: %+v", res.InUse)
	}
	expectRevisions(t, "after the switch", map[string]string{
		revision.Default:  previous + " 1 pods",
		upstream.Revision: upstream.Release + " default 2 pods",
	})

	// Finish refuses while the notebook's proxy uses the old istiod.
	_, err = u.Finish(ctx, o)
	var inUse *InUseError
	if !errors.As(err, &inUse) || inUse.Revision != revision.Default || len(inUse.Workloads) != 1 || !strings.Contains(err.Error(), "kubectl rollout restart -n "+profile+" deployment/notebook") {
		t.Fatalf("finish with a proxy on the old revision: %v", err)
	}
	if res, err = u.Restart(ctx, RestartOptions{}); err != nil || len(res.InUse) != 1 || len(res.Changes) != 0 {
		t.Fatalf("restart without namespaces lists, restarts nothing: %+v, %v", res, err)
	}
	if res, err = u.Restart(ctx, RestartOptions{Namespaces: []string{profile}}); err != nil || len(res.InUse) != 0 {
		t.Fatalf("restart %s: %+v, %v", profile, res, err)
	}
	expectProxy(t, runningPod(t, profile, "app=notebook"), upstream.Release, upstream.Revision)
	old.expectPush(t, "before finish")

	if res, err = u.Finish(ctx, o); err != nil {
		t.Fatalf("finish: %v\n%s", err, text(res.Changes))
	}
	if d := deployment(t, previousDefault.Istiod); d != nil {
		t.Error("the old istiod is still there after finish")
	}
	inv, err := u.In.ReadInventory(ctx)
	if err != nil || inv.Upgrade != nil || inv.Revision != upstream.Revision {
		t.Fatalf("inventory after finish: %+v, %v", inv, err)
	}
	updates := stopBusy()
	conflicts := 0
	for _, n := range counter.Conflicts() {
		conflicts += n
	}
	t.Logf("the busy controller wrote %d times; kfistio met %d conflicts (%v) and retried them", updates, conflicts, counter.Conflicts())
	if updates == 0 || conflicts == 0 {
		t.Errorf("no conflict happened (%d updates of the busy controller): the test proves nothing about retries", updates)
	}

	// Done: a second install of the revision changes nothing, and there is
	// nothing to roll back.
	before := counter.Writes()
	cs, err := u.In.Install(ctx, install.Options{Installation: o.Installation, Objects: o.Objects, NamespaceLabels: o.NamespaceLabels, Version: "test"})
	if err != nil {
		t.Fatalf("install after the upgrade: %v", err)
	}
	if n := len(cs) - cs.Count(install.Unchanged); n != 0 || counter.Writes() != before {
		t.Errorf("install after the upgrade changed %d objects with %d writes:\n%s", n, counter.Writes()-before, text(cs))
	}
	if _, err := u.Rollback(ctx, o); err == nil || !strings.Contains(err.Error(), "no upgrade by revision is under way") {
		t.Errorf("rollback after finish: %v", err)
	}
	istiodErrors(t, mark, "after finish")
}

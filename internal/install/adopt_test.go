package install

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/testcluster"
	"github.com/kubeflow/kfistio/internal/testutil"
)

// previousRelease is the release of Kubeflow's previous Istio tree.
const previousRelease = testcluster.PreviousRelease

// previousInstallation is Kubeflow's Istio tree of previousRelease
// (testcluster.PreviousKubeflow), with what an older default profile had and
// this tree has not (the egress gateway's ServiceAccount and Role), and a
// ConfigMap of the user's in istio-system.
func previousInstallation(t *testing.T) (crds, rest []*unstructured.Unstructured) {
	t.Helper()
	crds, rest, err := testcluster.PreviousKubeflow("")
	if err != nil {
		t.Fatal(err)
	}
	egress := map[string]any{"app": "istio-egressgateway", "app.kubernetes.io/part-of": "istio", componentLabel: "EgressGateways", "install.operator.istio.io/owning-resource": "unknown"}
	rest = append(rest,
		&unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ServiceAccount",
			"metadata": map[string]any{"name": "istio-egressgateway-service-account", "namespace": "istio-system", "labels": egress}}},
		&unstructured.Unstructured{Object: map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
			"metadata": map[string]any{"name": "istio-egressgateway-sds", "namespace": "istio-system", "labels": egress},
			"rules":    []any{map[string]any{"apiGroups": []any{""}, "resources": []any{"secrets"}, "verbs": []any{"get"}}}}},
		&unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ConfigMap",
			"metadata": map[string]any{"name": "site-notes", "namespace": "istio-system"}, "data": map[string]any{"owner": "platform team"}}},
	)
	object.Sort(rest)
	return crds, rest
}

// kubectl runs the kubectl of the control-plane build against the cluster.
func kubectl(t *testing.T, args ...string) {
	t.Helper()
	if _, err := cluster.Kubectl(args...); err != nil {
		t.Fatal(err)
	}
}

// applyPrevious applies the previous installation as its users did: the
// CRDs server-side (too large for client-side apply), the rest client-side
// or server-side; then waits until its istiod runs and has let its validator
// fail closed. The cleanup deletes whatever of it is still there.
func applyPrevious(t *testing.T, serverSide bool) {
	crds, rest := previousInstallation(t)
	crdFile, restFile := testutil.WriteYAML(t, "objects.yaml", crds), testutil.WriteYAML(t, "objects.yaml", rest)
	t.Cleanup(func() {
		purge(t)
		if out, err := cluster.Kubectl("delete", "--ignore-not-found", "--wait", "-f", restFile); err != nil && !strings.Contains(out, "ensure CRDs are installed first") {
			t.Error(err)
		}
		kubectl(t, "delete", "--ignore-not-found", "--wait", "-f", crdFile)
		waitNamespaceGone(t, "istio-system")
		waitNamespaceGone(t, "kubeflow")
	})
	kubectl(t, "apply", "--server-side", "-f", crdFile)
	kubectl(t, "wait", "--for", "condition=established", "--timeout", "60s", "-f", crdFile)
	if serverSide {
		kubectl(t, "apply", "--server-side", "-f", restFile)
	} else {
		kubectl(t, "apply", "-f", restFile)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := cluster.WaitIstiod(ctx); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "wait", "--for=jsonpath={.webhooks[0].failurePolicy}=Fail", "--timeout=2m", "validatingwebhookconfiguration/istio-validator-istio-system")
}

// waitNamespaceGone waits until the namespace is deleted, if it is being
// deleted, so that the next test can create it again.
func waitNamespaceGone(t *testing.T, name string) {
	t.Helper()
	in, _ := admin(t)
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		ns, err := in.Client.Kube.CoreV1().Namespaces().Get(context.Background(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && ns.DeletionTimestamp == nil) {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("Namespace/%s still being deleted after 2m", name)
}

// otherManagers lists the field managers of o other than kfistio and the
// cluster's own controllers (subresources, istiod, the API server).
func otherManagers(o *unstructured.Unstructured) []string {
	var out []string
	for _, e := range o.GetManagedFields() {
		if e.Subresource == "" && (strings.HasPrefix(e.Manager, "kubectl") || e.Manager == "before-first-apply") {
			out = append(out, e.Manager)
		}
	}
	return out
}

// Kubeflow's Istio 1.26.1 applied with kubectl, client-side or server-side,
// its real istiod running: a plain install, with or without --adopt, refuses
// the in-place jump of three minor releases with no write; with
// --unsupported-in-place, a plain install refuses another installation's
// objects with no write; --adopt takes it over, while a controller keeps
// writing to its webhooks (the conflicts are retried), removes what the
// previous release set and this one does not, prunes what it left with
// Istio's labels and lists the rest; diff is then clean, a second install
// writes nothing, and uninstall leaves nothing labelled.
func TestAdopt(t *testing.T) {
	for _, mode := range []struct {
		name       string
		serverSide bool
		manager    string
	}{
		{"client-side", false, "kubectl-client-side-apply"},
		{"server-side", true, "kubectl"},
	} {
		t.Run(mode.name, func(t *testing.T) {
			ctx := context.Background()
			applyPrevious(t, mode.serverSide)
			o := options(t, "oauth2-proxy")

			in, counter := admin(t)
			for _, adopt := range []bool{false, true} {
				o.Adopt = adopt
				_, err := in.Install(ctx, o)
				var skew *SkewError
				if !errors.As(err, &skew) || skew.From != previousRelease || !strings.Contains(err.Error(), "--unsupported-in-place") {
					t.Fatalf("install (adopt %v) over Istio %s: %v", adopt, previousRelease, err)
				}
			}
			o.Adopt, o.UnsupportedInPlace = false, true
			_, err := in.Install(ctx, o)
			var fe *ForeignError
			if !errors.As(err, &fe) || fe.Release != previousRelease || len(fe.Managers[mode.manager]) == 0 ||
				!strings.Contains(err.Error(), "--adopt") || !strings.Contains(err.Error(), "Istio "+previousRelease) {
				t.Fatalf("install over a kubectl installation: %v", err)
			}
			t.Logf("plain install: %v", err)
			if !slices.Contains(fe.Managers[mode.manager], istiodKey) {
				t.Errorf("refusal does not name %s under %s: %v", istiodKey, mode.manager, fe.Managers)
			}
			if w := counter.Writes(); w != 0 {
				t.Errorf("refused install made %d writes (%s)", w, counter)
			}
			// --force-conflicts is not --adopt.
			forced := o
			forced.ForceConflicts = true
			if _, err := in.Install(ctx, forced); !errors.As(err, &fe) {
				t.Errorf("install --force-conflicts over a kubectl installation: %v", err)
			}

			// From here on another writer keeps updating the objects that
			// adoption moves, as istiod does its webhooks.
			stop := cluster.KeepWriting(
				Ref{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingWebhookConfiguration", Name: "istio-validator-istio-system"}.Stub(),
				Ref{APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingWebhookConfiguration", Name: "istio-sidecar-injector"}.Stub(),
				Ref{APIVersion: "apps/v1", Kind: "DaemonSet", Namespace: "kube-system", Name: "istio-cni-node"}.Stub(),
			)
			defer stop()
			o.Adopt = true
			// The dry run writes nothing and previews the stale fields.
			preview := o
			preview.DryRun = true
			dryIn, dryCounter := admin(t)
			dry, err := dryIn.Install(ctx, preview)
			if err != nil {
				t.Fatal(err)
			}
			if w := dryCounter.Writes(); w != 0 {
				t.Errorf("install --adopt --dry-run made %d writes (%s)", w, dryCounter)
			}
			previewed := change(dry, istiodKey)
			if previewed == nil || previewed.Action != Adopted ||
				!slices.ContainsFunc(previewed.Removed, func(f string) bool { return strings.Contains(f, "GOMEMLIMIT") }) {
				t.Errorf("istiod in the dry run's change set: %+v", previewed)
			}

			cs, err := in.Install(ctx, o)
			updates := stop()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("adopt met %v conflicts while another writer updated the objects %d times", counter.Conflicts(), updates)
			if counter.Conflicts()["patch"] == 0 {
				t.Errorf("no managedFields move met a conflict (%d updates of the other writer, %v): the test proves nothing about retries", updates, counter.Conflicts())
			}
			istiod := change(cs, istiodKey)
			if istiod == nil || istiod.Action != Adopted || !strings.Contains(istiod.Note, mode.manager) ||
				!slices.ContainsFunc(istiod.Removed, func(f string) bool { return strings.Contains(f, "GOMEMLIMIT") }) {
				t.Errorf("istiod in the change set: %+v", istiod)
			}
			// The dry run named each object adopted and the fields removed.
			dryChanges := actions(dry)
			for _, c := range cs {
				if c.Action != Adopted {
					continue
				}
				p := change(dry, c.Object)
				if p == nil || p.Action != Adopted || !slices.Equal(p.Removed, c.Removed) {
					t.Errorf("%s: adopted removing %v; its dry run: %+v (%s)", c.Object, c.Removed, p, dryChanges[c.Object])
				}
			}
			a := actions(cs)
			if a["ServiceAccount/istio-system/istio-egressgateway-service-account"] != Pruned || a["Role/istio-system/istio-egressgateway-sds"] != Pruned {
				t.Errorf("Istio's leftovers: %v", onlyChanges(cs))
			}
			if a["ConfigMap/istio-system/site-notes"] != Unchanged {
				t.Errorf("the user's ConfigMap: %q, want listed as left alone", a["ConfigMap/istio-system/site-notes"])
			}
			if _, err := in.Client.Kube.CoreV1().ConfigMaps("istio-system").Get(ctx, "site-notes", metav1.GetOptions{}); err != nil {
				t.Errorf("the user's ConfigMap: %v", err)
			}
			if _, err := in.Client.Kube.CoreV1().ServiceAccounts("istio-system").Get(ctx, "istio-egressgateway-service-account", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("the old ServiceAccount is still there: %v", err)
			}
			if _, err := in.Client.Kube.RbacV1().Roles("istio-system").Get(ctx, "istio-egressgateway-sds", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("the old Role is still there: %v", err)
			}

			snap, err := in.Snapshot(ctx, o.Objects)
			if err != nil {
				t.Fatal(err)
			}
			for _, obj := range o.Objects {
				live, _ := snap.Get(in, obj)
				if live == nil {
					t.Errorf("%s missing after adopt", object.Key(obj))
					continue
				}
				if m := otherManagers(live); len(m) > 0 {
					t.Errorf("%s still managed by %v", object.Key(obj), m)
				}
				if _, ok := live.GetAnnotations()[LastAppliedAnnotation]; ok {
					t.Errorf("%s keeps %s", object.Key(obj), LastAppliedAnnotation)
				}
			}
			d, err := in.Client.Kube.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, rel := inject.IstiodRelease(&d.Spec.Template.Spec); rel == previousRelease {
				t.Errorf("istiod still runs %s", rel)
			}
			for _, e := range d.Spec.Template.Spec.Containers[0].Env {
				if e.Name == "GOMEMLIMIT" {
					t.Errorf("istiod keeps GOMEMLIMIT, which the new release does not set")
				}
			}

			diffs, err := in.Diff(ctx, o.Objects)
			if err != nil || len(diffs) != 0 {
				t.Errorf("diff after adopt: %v, %v", diffs, err)
			}
			again, counter := admin(t)
			o.Adopt = false
			cs, err = again.Install(ctx, o)
			if err != nil || len(onlyChanges(cs)) > 0 || counter.Writes() != 0 {
				t.Errorf("second install: %v, changes %v, %d writes (%s)", err, onlyChanges(cs), counter.Writes(), counter)
			}

			if _, err := in.Uninstall(ctx, UninstallOptions{Purge: true, Confirm: true, Timeout: 2 * time.Minute}); err != nil {
				t.Fatal(err)
			}
			// A new connection: the purge removed the Istio kinds.
			after, _ := admin(t)
			left, err := after.Snapshot(ctx, o.Objects)
			if err != nil {
				t.Fatal(err)
			}
			for _, obj := range o.Objects {
				if l, _ := left.Get(after, obj); l != nil && l.GetLabels()[ManagedLabel] == "true" {
					t.Errorf("%s still labelled %s after uninstall", object.Key(obj), ManagedLabel)
				}
			}
		})
	}
}

// Objects of a Helm release are not taken over, even with --adopt; nothing
// is written.
func TestAdoptRefusesHelm(t *testing.T) {
	ctx := context.Background()
	in, counter := admin(t)
	t.Cleanup(func() {
		_ = in.Client.Kube.CoreV1().Namespaces().Delete(ctx, "istio-system", metav1.DeleteOptions{})
		waitNamespaceGone(t, "istio-system")
	})
	ns := []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"istio-system"}}`)
	sa := []byte(`{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"istiod","namespace":"istio-system",
"labels":{"app.kubernetes.io/managed-by":"Helm"},"annotations":{"meta.helm.sh/release-name":"istiod","meta.helm.sh/release-namespace":"istio-system"}}}`)
	if _, err := in.Client.Kube.CoreV1().Namespaces().Patch(ctx, "istio-system", "application/apply-patch+yaml", ns, metav1.PatchOptions{FieldManager: "helm"}); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Client.Kube.CoreV1().ServiceAccounts("istio-system").Patch(ctx, "istiod", "application/apply-patch+yaml", sa, metav1.PatchOptions{FieldManager: "helm"}); err != nil {
		t.Fatal(err)
	}
	before := counter.Writes()
	o := options(t, "oauth2-proxy")
	o.Adopt = true
	_, err := in.Install(ctx, o)
	var he *HelmError
	if !errors.As(err, &he) || !slices.Contains(he.Objects, "ServiceAccount/istio-system/istiod: release istiod in namespace istio-system") {
		t.Fatalf("adopt of a Helm release: %v", err)
	}
	if w := counter.Writes() - before; w != 0 {
		t.Errorf("%d writes (%s)", w, counter)
	}
}

// An install into a namespace being deleted stops before any write.
func TestNamespaceBeingDeleted(t *testing.T) {
	ctx := context.Background()
	in, counter := admin(t)
	kc := in.Client.Kube
	ns := []byte(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"istio-system"}}`)
	held := []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"held","namespace":"istio-system","finalizers":["example.com/hold"]}}`)
	t.Cleanup(func() {
		_, _ = kc.CoreV1().ConfigMaps("istio-system").Patch(ctx, "held", "application/merge-patch+json", []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
		_ = kc.CoreV1().Namespaces().Delete(ctx, "istio-system", metav1.DeleteOptions{})
		waitNamespaceGone(t, "istio-system")
	})
	if _, err := kc.CoreV1().Namespaces().Patch(ctx, "istio-system", "application/apply-patch+yaml", ns, metav1.PatchOptions{FieldManager: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.CoreV1().ConfigMaps("istio-system").Patch(ctx, "held", "application/apply-patch+yaml", held, metav1.PatchOptions{FieldManager: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := kc.CoreV1().Namespaces().Delete(ctx, "istio-system", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	before := counter.Writes()
	_, err := in.Install(ctx, options(t, "oauth2-proxy"))
	if err == nil || !strings.Contains(err.Error(), "Namespace/istio-system is being deleted") {
		t.Fatalf("install into a namespace being deleted: %v", err)
	}
	if w := counter.Writes() - before; w != 0 {
		t.Errorf("%d writes (%s)", w, counter)
	}
}

// change returns the entry of cs for the object key, nil when it has none.
func change(cs ChangeSet, key string) *Change {
	for i := range cs {
		if cs[i].Object == key {
			return &cs[i]
		}
	}
	return nil
}

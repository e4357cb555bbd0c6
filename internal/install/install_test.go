package install

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

const (
	istiodKey = "Deployment/istio-system/istiod"
	cniKey    = "DaemonSet/kube-system/istio-cni-node"
)

func actions(cs ChangeSet) map[string]Action {
	m := map[string]Action{}
	for _, c := range cs {
		m[c.Object] = c.Action
	}
	return m
}

// onlyChanges returns the changes that are not Unchanged.
func onlyChanges(cs ChangeSet) []string {
	var out []string
	for _, c := range cs {
		if c.Action != Unchanged {
			out = append(out, c.Object+" "+string(c.Action))
		}
	}
	return out
}

func mustReady(t *testing.T, in *Installer, inv *Inventory, o Options, want ...string) {
	t.Helper()
	st, err := in.Status(context.Background(), inv, o.Objects)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range st.Components {
		got = append(got, c.Object)
		if c.Status != "Current" {
			t.Errorf("%s is %s: %s", c.Object, c.Status, c.Message)
		}
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("status has no %s (has %v)", w, got)
		}
	}
	if len(st.Drift) > 0 {
		t.Errorf("drift right after install: %v", st.Drift)
	}
}

// The whole life of an installation: install, re-install with no writes,
// what istiod and autoscalers write survives, switch overlays with a prune,
// diff and status, uninstall.
func TestInstallLifecycle(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() { purge(t) })

	in, counter := admin(t)
	o := options(t, "oauth2-proxy")
	creates := 0 // Namespace/kubeflow, which the tree does not define, unless an earlier test left it
	if _, err := in.Client.Kube.CoreV1().Namespaces().Get(ctx, "kubeflow", metav1.GetOptions{}); apierrors.IsNotFound(err) {
		creates = 1
	}
	in, counter = admin(t)
	cs, err := in.Install(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if n := cs.Count(Created); n != len(o.Objects)+creates {
		t.Errorf("first install created %d objects, want %d: %v", n, len(o.Objects)+creates, onlyChanges(cs))
	}
	// One apply per object, the inventory created before and updated after,
	// the namespace it needs; no dry run of a creation, no GET but the
	// inventory's, read first and again once the lease is held.
	c := counter.Counts()
	if c["patch"] != len(o.Objects) || c["create"] != creates+1 || c["update"] != 1 || c["patch (dry run)"] != 0 || c["get"] != 2 ||
		c["lease create"] != 1 || c["lease delete"] != 1 {
		t.Errorf("first install: %s; want %d patches, %d create, 1 update, 2 get, no dry-run patch, the lease created and deleted", counter, len(o.Objects), creates+1)
	}
	inv, err := in.ReadInventory(ctx)
	if err != nil || !inv.Complete || inv.Overlay != "oauth2-proxy" || len(inv.Objects) != len(o.Objects) {
		t.Fatalf("inventory after install: %+v, %v", inv, err)
	}
	mustReady(t, in, inv, o, istiodKey, cniKey, "Deployment/istio-system/istio-ingressgateway", "Deployment/istio-system/cluster-local-gateway")

	t.Run("re-install writes nothing", func(t *testing.T) {
		in, counter := admin(t)
		cs, err := in.Install(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		if c := onlyChanges(cs); len(c) > 0 || len(cs) != len(o.Objects) {
			t.Errorf("changes %v, want %d unchanged", c, len(o.Objects))
		}
		if w := counter.Writes(); w != 0 {
			t.Errorf("%d writes (%s), want none", w, counter)
		}
		// Reads: the inventory, one LIST per kind and namespace, one more
		// per kind and namespace of what the stages wait for; nothing is
		// dry-run, since nothing moved since the last apply.
		c := counter.Counts()
		max := scopes(o.Objects, nil)
		for _, s := range stages(o.Objects) {
			max += scopes(s.objs, waitable)
		}
		if lists := c["list"]; c["get"] != 1 || lists > max || c["patch (dry run)"] != 0 {
			t.Errorf("re-install: %s; want 1 get, at most %d lists, no dry run", counter, max)
		}
	})

	t.Run("a deleted object comes back, and only it is written", func(t *testing.T) {
		if err := in.Client.Kube.CoreV1().ConfigMaps("istio-system").Delete(ctx, "values", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		in, counter := admin(t)
		cs, err := in.Install(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		if c := onlyChanges(cs); !slices.Equal(c, []string{"ConfigMap/istio-system/values created"}) {
			t.Errorf("changes %v", c)
		}
		// The object, then the inventory with its new fingerprint.
		if w := counter.Writes(); w != 2 {
			t.Errorf("%d writes (%s), want 2", w, counter)
		}
	})

	t.Run("what istiod and autoscalers write stays", func(t *testing.T) {
		kc := in.Client.Kube
		// The real istiod has written the CA bundle of its webhooks (the
		// install waited for it), as an update of its own field manager.
		v, err := kc.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "istio-validator-istio-system", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		bundle := v.Webhooks[0].ClientConfig.CABundle
		if len(bundle) == 0 {
			t.Fatal("istiod wrote no CA bundle")
		}
		// The HorizontalPodAutoscaler scales istiod and the gateway.
		for _, d := range []string{"istiod", "istio-ingressgateway"} {
			_, err := kc.AppsV1().Deployments("istio-system").UpdateScale(ctx, d,
				&autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: d, Namespace: "istio-system"}, Spec: autoscalingv1.ScaleSpec{Replicas: 2}},
				metav1.UpdateOptions{FieldManager: "horizontal-pod-autoscaler"})
			if err != nil {
				t.Fatal(err)
			}
		}
		in, counter := admin(t)
		cs, err := in.Install(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		if c := onlyChanges(cs); len(c) > 0 {
			t.Errorf("re-install after istiod's and the autoscaler's writes changed %v", c)
		}
		if w := counter.Writes(); w != 0 {
			t.Errorf("%d writes (%s), want none", w, counter)
		}
		v, err = kc.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "istio-validator-istio-system", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if string(v.Webhooks[0].ClientConfig.CABundle) != string(bundle) || *v.Webhooks[0].FailurePolicy != "Fail" {
			t.Errorf("validator after re-install: caBundle %q, failurePolicy %s", v.Webhooks[0].ClientConfig.CABundle, *v.Webhooks[0].FailurePolicy)
		}
		d, err := kc.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if *d.Spec.Replicas != 2 {
			t.Errorf("istiod replicas %d after re-install, want the autoscaler's 2", *d.Spec.Replicas)
		}
		diffs, err := in.Diff(ctx, o.Objects)
		if err != nil || len(diffs) != 0 {
			t.Errorf("diff: %v, %v", diffs, err)
		}
	})

	t.Run("gke changes the CNI binary directory only", func(t *testing.T) {
		g := options(t, "gke")
		diffs, err := in.Diff(ctx, g.Objects)
		if err != nil {
			t.Fatal(err)
		}
		if len(diffs) != 1 || diffs[0].Object != cniKey || !strings.Contains(diffs[0].Diff, "+          path: /home/kubernetes/bin") {
			t.Fatalf("diff to gke: %+v", diffs)
		}
		cs, err := in.Install(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		if c := onlyChanges(cs); !slices.Equal(c, []string{cniKey + " configured"}) {
			t.Errorf("changes %v, want only the CNI DaemonSet configured", c)
		}
		ds, err := in.Client.Kube.AppsV1().DaemonSets("kube-system").Get(ctx, "istio-cni-node", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p := hostPath(ds, "cni-bin-dir"); p != "/home/kubernetes/bin" {
			t.Errorf("cni-bin-dir %q", p)
		}
		inv, _ := in.ReadInventory(ctx)
		mustReady(t, in, inv, g, cniKey)
	})

	t.Run("insecure prunes the CNI", func(t *testing.T) {
		ins := options(t, "insecure")
		cs, err := in.Install(ctx, ins)
		if err != nil {
			t.Fatal(err)
		}
		a := actions(cs)
		for _, key := range []string{cniKey, "ServiceAccount/kube-system/istio-cni", "ClusterRole/istio-cni", "ConfigMap/kube-system/istio-cni-config"} {
			if a[key] != Pruned {
				t.Errorf("%s: %q, want pruned", key, a[key])
			}
		}
		if _, err := in.Client.Kube.AppsV1().DaemonSets("kube-system").Get(ctx, "istio-cni-node", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the CNI DaemonSet is still there: %v", err)
		}
		for _, n := range []string{"kubeflow", "kubeflow-user-example-com", "knative-serving"} {
			ns, err := in.Client.Kube.CoreV1().Namespaces().Get(ctx, n, metav1.GetOptions{})
			if err != nil || ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
				t.Errorf("Namespace/%s: %v %v", n, ns.Labels, err)
			}
		}
		inv, err := in.ReadInventory(ctx)
		if err != nil || inv.Overlay != "insecure" || slices.ContainsFunc(inv.Objects, func(r Ref) bool { return r.Key() == cniKey }) {
			t.Errorf("inventory %+v, %v", inv, err)
		}
		mustReady(t, in, inv, ins, istiodKey)
	})

	t.Run("uninstall", func(t *testing.T) {
		cs, err := in.Uninstall(ctx, UninstallOptions{Timeout: 2 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		a := actions(cs)
		if a[istiodKey] != Deleted || a["Namespace/istio-system"] != Released || a["CustomResourceDefinition/gateways.networking.istio.io"] != Unchanged {
			t.Errorf("changes %v", cs)
		}
		if _, err := in.Client.Kube.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("istiod is still there: %v", err)
		}
		ns, err := in.Client.Kube.CoreV1().Namespaces().Get(ctx, "kubeflow", metav1.GetOptions{})
		if err != nil || ns.Labels[ManagedLabel] != "" || ns.Labels["pod-security.kubernetes.io/enforce"] != "" {
			t.Errorf("Namespace/kubeflow after uninstall: %v, %v (want it kept, without kfistio's labels)", ns.Labels, err)
		}
		if _, err := in.ReadInventory(ctx); !errors.Is(err, ErrNotInstalled) {
			t.Errorf("inventory after uninstall: %v", err)
		}
		if _, err := in.Uninstall(ctx, UninstallOptions{}); !errors.Is(err, ErrNotInstalled) {
			t.Errorf("second uninstall: %v, want ErrNotInstalled", err)
		}
	})
}

// scopes counts the kinds and namespaces of the objects that keep.
func scopes(objs []*unstructuredObject, keep func(*unstructuredObject) bool) int {
	seen := map[string]bool{}
	for _, o := range objs {
		if keep == nil || keep(o) {
			seen[o.GroupVersionKind().String()+"/"+o.GetNamespace()] = true
		}
	}
	return len(seen)
}

func hostPath(ds *appsv1.DaemonSet, volume string) string {
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == volume && v.HostPath != nil {
			return v.HostPath.Path
		}
	}
	return ""
}

// A purge names the custom resources users made before it deletes them.
func TestPurge(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() { purge(t) })
	in, _ := admin(t)
	if _, err := in.Install(ctx, options(t, "oauth2-proxy")); err != nil {
		t.Fatal(err)
	}
	vs := []byte(`{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"mine","namespace":"default"},"spec":{"hosts":["x"],"http":[{"route":[{"destination":{"host":"x"}}]}]}}`)
	if _, err := in.Client.Dynamic.Resource(virtualServices).Namespace("default").Patch(ctx, "mine", types.ApplyPatchType, vs, metav1.PatchOptions{FieldManager: "user"}); err != nil {
		t.Fatal(err)
	}
	_, err := in.Uninstall(ctx, UninstallOptions{Purge: true})
	var pe *PurgeError
	if !errors.As(err, &pe) || !slices.Equal(pe.Resources, []string{"VirtualService/default/mine"}) {
		t.Fatalf("purge without --yes: %v", err)
	}
	if _, err := in.ReadInventory(ctx); err != nil {
		t.Fatalf("an unconfirmed purge removed something: %v", err)
	}
	if _, err := in.Uninstall(ctx, UninstallOptions{Purge: true, Confirm: true, Timeout: 2 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	crds, err := in.Client.Dynamic.Resource(crdResource).List(ctx, metav1.ListOptions{})
	if err != nil || len(crds.Items) != 0 {
		t.Errorf("CRDs left after purge: %d, %v", len(crds.Items), err)
	}
	if _, err := in.Client.Kube.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("istio-system after purge: %v", err)
	}
}

// A dry run sends only dry-run requests and reports what an install would do.
func TestDryRun(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() { purge(t) })
	in, counter := admin(t)
	o := options(t, "gke")
	o.DryRun = true
	want := len(o.Objects)
	if _, err := in.Client.Kube.CoreV1().Namespaces().Get(ctx, "kubeflow", metav1.GetOptions{}); apierrors.IsNotFound(err) {
		want++ // the install creates it for kubeflow-gateway
	}
	cs, err := in.Install(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if n := cs.Count(Created); n != want {
		t.Errorf("dry run: %d created, want %d", n, want)
	}
	if w := counter.Writes(); w != 0 {
		t.Errorf("dry run made %d writes (%s)", w, counter)
	}
	if _, err := in.ReadInventory(ctx); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("dry run wrote the inventory: %v", err)
	}
}

// Installs interrupted at any step converge when run again.
func TestInterruptedInstallConverges(t *testing.T) {
	t.Cleanup(func() { purge(t) })
	o := options(t, "oauth2-proxy")
	for _, cut := range []int{1, 2, 4, 6, 8} {
		ctx, cancel := context.WithCancel(context.Background())
		in, _ := admin(t)
		events := 0
		in.Progress = func(e Event) {
			events++
			if events == cut {
				cancel()
			}
		}
		_, err := in.Install(ctx, o)
		cancel()
		if err == nil {
			t.Fatalf("install cut at event %d did not fail", cut)
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("install cut at event %d: %v, want it to say it was cancelled", cut, err)
		}
		inv, err := admin2(t).ReadInventory(context.Background())
		if err == nil && inv.Complete {
			t.Errorf("inventory complete after an install cut at event %d", cut)
		}
	}
	in, _ := admin(t)
	if _, err := in.Install(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	again, counter := admin(t)
	cs, err := again.Install(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if c := onlyChanges(cs); len(c) > 0 || counter.Writes() != 0 {
		t.Errorf("after converging: changes %v, %d writes", c, counter.Writes())
	}
	inv, err := in.ReadInventory(context.Background())
	if err != nil || !inv.Complete {
		t.Errorf("inventory %+v, %v", inv, err)
	}
	mustReady(t, in, inv, o, istiodKey)
}

func admin2(t *testing.T) *Installer {
	in, _ := admin(t)
	return in
}

// The API server going away mid-install fails the install with the object
// being applied; once it is back, the install converges.
func TestAPIServerGoesAway(t *testing.T) {
	t.Cleanup(func() { purge(t) })
	o := options(t, "insecure")
	in, _ := admin(t)
	stopped := false
	in.Progress = func(e Event) {
		if !stopped && !e.Done && strings.HasPrefix(e.Step, "Applying "+stageControlPlane) {
			stopped = true
			cluster.StopAPIServer()
		}
	}
	_, err := in.Install(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "apply ") {
		t.Fatalf("install with the API server gone: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cluster.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	// The interrupted run could not release its lease: the next one runs
	// once the lease has expired.
	in, _ = admin(t)
	cs, err := in.Install(context.Background(), o)
	var he *HeldError
	if errors.As(err, &he) {
		time.Sleep(time.Until(he.ExpiresAt) + time.Second)
		cs, err = in.Install(context.Background(), o)
	}
	if err != nil {
		t.Fatal(err)
	}
	if cs.Count(Created) == 0 {
		t.Errorf("nothing created after the interruption: %v", onlyChanges(cs))
	}
	inv, err := in.ReadInventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mustReady(t, in, inv, o, istiodKey)
}

// Fields another manager took are a conflict that names the manager; with
// ForceConflicts the install takes them back.
func TestFieldManagerConflict(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() { purge(t) })
	in, _ := admin(t)
	o := options(t, "oauth2-proxy")
	if _, err := in.Install(ctx, o); err != nil {
		t.Fatal(err)
	}
	patch := []byte(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"istiod","namespace":"istio-system"},
"spec":{"template":{"spec":{"containers":[{"name":"discovery","env":[{"name":"ENABLE_DEBUG_ON_HTTP","value":"true"}]}]}}}}`)
	_, err := in.Client.Kube.AppsV1().Deployments("istio-system").Patch(ctx, "istiod", types.ApplyPatchType, patch,
		metav1.PatchOptions{FieldManager: "debugging-operator", Force: ptr.To(true)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = in.Install(ctx, o)
	if err == nil || !strings.Contains(err.Error(), `conflict with "debugging-operator"`) || !strings.Contains(err.Error(), "--force-conflicts") || !strings.Contains(err.Error(), istiodKey) {
		t.Fatalf("install over another manager's field: %v", err)
	}
	o.ForceConflicts = true
	cs, err := in.Install(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if actions(cs)[istiodKey] != Configured {
		t.Errorf("istiod: %s, want configured", actions(cs)[istiodKey])
	}
	d, _ := in.Client.Kube.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		if e.Name == "ENABLE_DEBUG_ON_HTTP" && e.Value != "false" {
			t.Errorf("ENABLE_DEBUG_ON_HTTP=%s after a forced install", e.Value)
		}
	}
}

// A CRD that never becomes Established stops the install with its reason.
func TestCRDNeverEstablished(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() {
		for _, n := range []string{"widgets.example.com", "gadgets.example.com"} {
			_ = admin2(t).Client.Dynamic.Resource(crdResource).Delete(ctx, n, metav1.DeleteOptions{})
		}
		purge(t)
	})
	in, _ := admin(t)
	first := crd("widgets", "Widget")
	if _, _, err := in.apply(ctx, first, nil, "", false, false); err != nil {
		t.Fatal(err)
	}
	// Same kind, other plural: the API server refuses the names.
	clash := crd("gadgets", "Widget")
	_, err := in.Install(ctx, Options{Installation: options(t, "oauth2-proxy").Installation, Objects: []*unstructuredObject{clash}, Timeout: 3 * time.Second})
	var nr *NotReadyError
	if !errors.As(err, &nr) || len(nr.Objects) != 1 || nr.Objects[0].Object != "CustomResourceDefinition/gadgets.example.com" ||
		!strings.Contains(nr.Objects[0].Reason, "NamesAccepted=False") {
		t.Fatalf("install of a clashing CRD: %v", err)
	}
	if !strings.Contains(err.Error(), "not ready after 3s") {
		t.Errorf("error does not say how long it waited: %v", err)
	}
}

// A user who may only read some kinds gets the verb and resource they lack,
// before any write.
func TestInsufficientRBAC(t *testing.T) {
	ctx := context.Background()
	adm, _ := admin(t)
	rbac := []byte(`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"reader-view"},
"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"view"},
"subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"reader"}]}`)
	t.Cleanup(func() {
		_ = adm.Client.Kube.RbacV1().ClusterRoleBindings().Delete(ctx, "reader-view", metav1.DeleteOptions{})
	})
	if _, err := adm.Client.Kube.RbacV1().ClusterRoleBindings().Patch(ctx, "reader-view", types.ApplyPatchType, rbac, metav1.PatchOptions{FieldManager: "test"}); err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := cluster.UserKubeconfig("reader")
	if err != nil {
		t.Fatal(err)
	}
	in, counter := installer(t, kubeconfig)
	_, err = in.Install(ctx, options(t, "oauth2-proxy"))
	if err == nil || !strings.Contains(err.Error(), `User "reader" cannot list`) {
		t.Fatalf("install as a reader: %v", err)
	}
	if counter.Writes() > 0 {
		t.Errorf("%d write attempts: the install reads what is there first", counter.Writes())
	}
	if _, err := adm.ReadInventory(ctx); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("a refused install left an inventory: %v", err)
	}
}

// The ambient overlays install: ztunnel runs on every node, in kube-system,
// istio-system stays restricted, and the kubeflow namespace gets the ambient
// label, owned by the labels' field manager alone; moving back to sidecars
// prunes ztunnel and releases the label.
func TestAmbient(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() { purge(t) })
	in, _ := admin(t)
	const ztunnelKey = "DaemonSet/kube-system/ztunnel"
	for _, overlay := range []string{"ambient", "ambient-oauth2-proxy-gke", "ambient-oauth2-proxy"} {
		o := options(t, overlay)
		if _, err := in.Install(ctx, o); err != nil {
			t.Fatalf("%s: %v", overlay, err)
		}
		inv, err := in.ReadInventory(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mustReady(t, in, inv, o, istiodKey, cniKey, ztunnelKey)
		ns, err := in.Client.Kube.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{})
		if err != nil || ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
			t.Errorf("%s: istio-system labels %v, %v", overlay, ns.Labels, err)
		}
		kf, err := in.Client.Kube.CoreV1().Namespaces().Get(ctx, "kubeflow", metav1.GetOptions{})
		if err != nil || kf.Labels["istio.io/dataplane-mode"] != "ambient" || !slices.Equal(ownedLabels(kf.ManagedFields), []string{"istio.io/dataplane-mode"}) {
			t.Errorf("%s: kubeflow labels %v, owned by %s: %v, %v", overlay, kf.Labels, LabelsFieldManager, ownedLabels(kf.ManagedFields), err)
		}
		again, counter := admin(t)
		if cs, err := again.Install(ctx, o); err != nil || len(onlyChanges(cs)) > 0 || counter.Writes() > 0 {
			t.Errorf("%s again: %v, changes %v, %d writes", overlay, err, onlyChanges(cs), counter.Writes())
		}
	}
	cs, err := in.Install(ctx, options(t, "oauth2-proxy"))
	if err != nil {
		t.Fatal(err)
	}
	a := actions(cs)
	if a[ztunnelKey] != Pruned || a["Namespace/kubeflow"] != Configured {
		t.Errorf("back to sidecars: %v", onlyChanges(cs))
	}
	kf, _ := in.Client.Kube.CoreV1().Namespaces().Get(ctx, "kubeflow", metav1.GetOptions{})
	if _, ok := kf.Labels["istio.io/dataplane-mode"]; ok || len(ownedLabels(kf.ManagedFields)) > 0 {
		t.Errorf("kubeflow labels %v after leaving ambient", kf.Labels)
	}
}

// When pods cannot run, the install says which objects are not ready and
// why, from their pods.
func TestNotReadyExplained(t *testing.T) {
	ctx := context.Background()
	in, _ := admin(t)
	cordon := func(on bool) {
		for _, n := range []string{"node-a", "node-b"} {
			patch := []byte(fmt.Sprintf(`{"spec":{"unschedulable":%t}}`, on))
			if _, err := in.Client.Kube.CoreV1().Nodes().Patch(ctx, n, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	cordon(true)
	t.Cleanup(func() { cordon(false); purge(t) })
	o := options(t, "oauth2-proxy")
	o.Timeout = 5 * time.Second
	_, err := in.Install(ctx, o)
	var nr *NotReadyError
	if !errors.As(err, &nr) {
		t.Fatalf("install on cordoned nodes: %v", err)
	}
	found := false
	for _, n := range nr.Objects {
		if n.Object == istiodKey && strings.Contains(n.Reason, "Pending") && strings.Contains(n.Reason, "Unschedulable") {
			found = true
		}
		if n.Object == cniKey {
			t.Errorf("the CNI DaemonSet runs on cordoned nodes, yet: %s", n.Reason)
		}
	}
	if !found {
		t.Errorf("istiod not explained: %v", err)
	}
}

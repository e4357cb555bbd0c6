package install

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/kubeflow/kfistio/internal/kube"
)

// writeLease writes the Lease as a run that renewed it at renewed would
// have left it; the cleanup deletes it.
func writeLease(t *testing.T, holder string, renewed time.Time) {
	t.Helper()
	in, _ := admin(t)
	leases := in.Client.Kube.CoordinationV1().Leases(InventoryNamespace)
	at := metav1.NewMicroTime(renewed)
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: LeaseName, Namespace: InventoryNamespace},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: ptr.To(int32(LeaseDuration / time.Second)), AcquireTime: &at, RenewTime: &at}}
	if _, err := leases.Create(context.Background(), l, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = leases.Delete(context.Background(), LeaseName, metav1.DeleteOptions{}) })
}

// Two installs started together: one runs, the other fails at once naming
// the holder; the cluster ends with the winner's installation, whole.
func TestConcurrentInstalls(t *testing.T) {
	t.Cleanup(func() { purge(t) })
	overlays := []string{"oauth2-proxy", "insecure"}
	errs := make([]error, len(overlays))
	var wg sync.WaitGroup
	for i, overlay := range overlays {
		in, _ := admin(t)
		o := options(t, overlay)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = in.Install(context.Background(), o)
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		var he *HeldError
		switch {
		case err == nil && winner < 0:
			winner = i
		case errors.As(err, &he):
			if he.Holder == "" || he.Since.IsZero() || !strings.Contains(err.Error(), "held by") {
				t.Errorf("%s: %v does not name the holder and since when", overlays[i], err)
			}
		default:
			t.Errorf("%s: %v", overlays[i], err)
		}
	}
	if winner < 0 {
		t.Fatalf("no install ran: %v", errs)
	}
	in, _ := admin(t)
	inv, err := in.ReadInventory(context.Background())
	if err != nil || inv.Overlay != overlays[winner] || !inv.Complete {
		t.Fatalf("inventory %+v, %v; want %s complete", inv, err, overlays[winner])
	}
	mustReady(t, in, inv, options(t, overlays[winner]), istiodKey)
	if _, err := in.Client.Kube.CoordinationV1().Leases(InventoryNamespace).Get(context.Background(), LeaseName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the lease outlived the install: %v", err)
	}
}

// A lease a live run renews stops install and uninstall at once, with no
// write; one whose holder was killed (not renewed for longer than its
// duration) is taken over.
func TestLeaseOfAnotherRun(t *testing.T) {
	ctx := context.Background()
	t.Run("held", func(t *testing.T) {
		writeLease(t, "other-host/pid-1/abcd", time.Now())
		in, counter := admin(t)
		_, err := in.Install(ctx, options(t, "oauth2-proxy"))
		var he *HeldError
		if !errors.As(err, &he) || he.Holder != "other-host/pid-1/abcd" || !strings.Contains(err.Error(), "since") {
			t.Fatalf("install while another run holds the lease: %v", err)
		}
		if w := counter.Writes(); w != 0 {
			t.Errorf("%d writes (%s)", w, counter)
		}
	})
	t.Run("killed", func(t *testing.T) {
		t.Cleanup(func() { purge(t) })
		writeLease(t, "killed-host/pid-2/dead", time.Now().Add(-2*LeaseDuration))
		in, _ := admin(t)
		o := options(t, "insecure")
		if _, err := in.Install(ctx, o); err != nil {
			t.Fatalf("install after the holder was killed: %v", err)
		}
		inv, err := in.ReadInventory(ctx)
		if err != nil || !inv.Complete {
			t.Fatalf("inventory %+v, %v", inv, err)
		}
	})
}

// A user who may do everything the installation needs but use leases gets
// told so, and nothing is written.
func TestLeaseRBAC(t *testing.T) {
	ctx := context.Background()
	adm, _ := admin(t)
	role := []byte(`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"all-but-leases"},
"rules":[{"apiGroups":["","apps","rbac.authorization.k8s.io","apiextensions.k8s.io","admissionregistration.k8s.io","policy","autoscaling",
"networking.k8s.io","networking.istio.io","security.istio.io","telemetry.istio.io","extensions.istio.io"],"resources":["*"],"verbs":["*"]}]}`)
	binding := []byte(`{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"installer-all-but-leases"},
"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"all-but-leases"},
"subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"installer"}]}`)
	rbac := adm.Client.Kube.RbacV1()
	t.Cleanup(func() {
		_ = rbac.ClusterRoleBindings().Delete(ctx, "installer-all-but-leases", metav1.DeleteOptions{})
		_ = rbac.ClusterRoles().Delete(ctx, "all-but-leases", metav1.DeleteOptions{})
	})
	if _, err := rbac.ClusterRoles().Patch(ctx, "all-but-leases", types.ApplyPatchType, role, metav1.PatchOptions{FieldManager: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoleBindings().Patch(ctx, "installer-all-but-leases", types.ApplyPatchType, binding, metav1.PatchOptions{FieldManager: "test"}); err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := cluster.UserKubeconfig("installer")
	if err != nil {
		t.Fatal(err)
	}
	in, counter := installer(t, kubeconfig)
	_, err = in.Install(ctx, options(t, "oauth2-proxy"))
	if err == nil || !strings.Contains(err.Error(), "Lease/kube-system/kfistio: permission denied") || !strings.Contains(err.Error(), "leases.coordination.k8s.io") {
		t.Fatalf("install without access to leases: %v", err)
	}
	if w := counter.Writes(); w != 0 {
		t.Errorf("%d writes (%s)", w, counter)
	}
}

// The inventory is written only over the version that was read; a change of
// another writer that leaves what it records (a label) is read again and
// kept.
func TestInventoryPrecondition(t *testing.T) {
	ctx := context.Background()
	in, counter := admin(t)
	kc := in.Client.Kube
	t.Cleanup(func() {
		_ = kc.CoreV1().ConfigMaps(InventoryNamespace).Delete(ctx, InventoryName, metav1.DeleteOptions{})
	})
	first := &Inventory{Overlay: "oauth2-proxy"}
	if err := writeInventory(ctx, kc, first, nil); err != nil {
		t.Fatal(err)
	}
	if err := writeInventory(ctx, kc, &Inventory{Overlay: "insecure"}, nil); err == nil || !strings.Contains(err.Error(), "changed since this run read it") {
		t.Errorf("second creation: %v", err)
	}
	read := *first
	first.Overlay = "gke"
	if err := writeInventory(ctx, kc, first, &read); err != nil {
		t.Fatal(err)
	}
	if err := writeInventory(ctx, kc, &Inventory{Overlay: "insecure"}, &read); err == nil || !strings.Contains(err.Error(), "changed since this run read it") {
		t.Errorf("write over a version that changed: %v", err)
	}
	inv, err := readInventory(ctx, kc)
	if err != nil || inv.Overlay != "gke" {
		t.Fatalf("inventory %+v, %v", inv, err)
	}
	// Another writer labels the ConfigMap: the next write is refused once,
	// then made over the labelled version, keeping the label; so is the
	// delete.
	cm := inv.cm.DeepCopy()
	cm.Labels["backup.example.com/include"] = "true"
	if _, err := kc.CoreV1().ConfigMaps(InventoryNamespace).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	before := counter.Conflicts()["update"]
	next := *inv
	next.Overlay = "insecure"
	if err := writeInventory(ctx, kc, &next, inv); err != nil {
		t.Fatalf("write after a label changed: %v", err)
	}
	if got := counter.Conflicts()["update"] - before; got != 1 {
		t.Errorf("%d conflicts, want the one the label caused", got)
	}
	if next.cm.Labels["backup.example.com/include"] != "true" {
		t.Errorf("the other writer's label is gone: %v", next.cm.Labels)
	}
	cm = next.cm.DeepCopy()
	cm.Annotations = map[string]string{"example.com/seen": "yes"}
	if _, err := kc.CoreV1().ConfigMaps(InventoryNamespace).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := deleteInventory(ctx, kc, &next); err != nil {
		t.Fatalf("delete after an annotation changed: %v", err)
	}
	if inv, err := readInventory(ctx, kc); inv != nil || err != nil {
		t.Errorf("inventory still there: %+v, %v", inv, err)
	}
	if counter.Conflicts()["delete"] != 1 {
		t.Errorf("conflicts %v, want one delete", counter.Conflicts())
	}
}

// holdLeaseEnv makes the test binary a run that takes the lease of the
// cluster of the kubeconfig it names, says so, and holds it until killed.
const holdLeaseEnv = "KFISTIO_TEST_HOLD_LEASE"

func holdLease(kubeconfig string) int {
	c, err := kube.Connect(context.Background(), kube.Options{Kubeconfig: kubeconfig})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := acquireLease(context.Background(), c.Kube, newHolder()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("held")
	select {}
}

// A run killed with SIGKILL while it holds the lease: the next run fails at
// once naming it, and runs once the lease has expired.
func TestKilledHolder(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() { purge(t) })
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdLeaseEnv+"="+cluster.Kubeconfig)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "held\n" {
		_ = cmd.Process.Kill()
		t.Fatalf("the holder says %q, %v", line, err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	in, _ := admin(t)
	o := options(t, "insecure")
	_, err = in.Install(ctx, o)
	var he *HeldError
	if !errors.As(err, &he) || !strings.Contains(he.Holder, fmt.Sprintf("pid-%d", cmd.Process.Pid)) {
		t.Fatalf("install right after the holder was killed: %v", err)
	}
	time.Sleep(time.Until(he.ExpiresAt) + time.Second)
	if _, err := in.Install(ctx, o); err != nil {
		t.Fatalf("install once the killed run's lease expired: %v", err)
	}
}

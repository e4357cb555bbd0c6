package install

import (
	"context"
	"os"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/testcluster"
)

// cluster is the real control plane every test of this package shares, with
// the real istiod running whenever an installation holds it; the tests run
// one after another and each leaves the cluster as it found it.
var cluster *testcluster.Cluster

func TestMain(m *testing.M) {
	if kubeconfig := os.Getenv(holdLeaseEnv); kubeconfig != "" {
		os.Exit(holdLease(kubeconfig))
	}
	os.Exit(testcluster.Main(m, []testcluster.Node{{Name: "node-a"}, {Name: "node-b"}}, func(c *testcluster.Cluster) error {
		cluster = c
		return c.RunIstiod()
	}))
}

// installer connects to the test cluster as kubeconfig's user, counting
// requests.
func installer(t *testing.T, kubeconfig string) (*Installer, *kube.RequestCounter) {
	t.Helper()
	counter := &kube.RequestCounter{}
	c, err := kube.Connect(context.Background(), kube.Options{Kubeconfig: kubeconfig, WrapTransport: counter.Wrap})
	if err != nil {
		t.Fatal(err)
	}
	return &Installer{Client: c}, counter
}

func admin(t *testing.T) (*Installer, *kube.RequestCounter) {
	return installer(t, cluster.Kubeconfig)
}

// objects builds the default installation of overlay from the embedded tree.
func objects(t *testing.T, overlay string) (build.Installation, []*unstructured.Unstructured) {
	t.Helper()
	tree, err := build.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	in := build.DefaultInstallation(overlay)
	objs, err := tree.InstallationObjects(in)
	if err != nil {
		t.Fatal(err)
	}
	return in, objs
}

func options(t *testing.T, overlay string) Options {
	in, objs := objects(t, overlay)
	labels, err := build.EmbeddedNamespaceLabels(in)
	if err != nil {
		t.Fatal(err)
	}
	return Options{Installation: in, Objects: objs, NamespaceLabels: labels, Timeout: 2 * time.Minute, Version: "test"}
}

// purge removes everything an install left, so the next test starts clean:
// with the inventory, what an uninstall --purge removes; without it (a test
// ended with a plain uninstall), the CRDs it kept and istio-system.
func purge(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	in, _ := admin(t)
	_, err := in.Uninstall(ctx, UninstallOptions{Purge: true, Confirm: true, Timeout: 2 * time.Minute})
	if err != nil && err != ErrNotInstalled {
		t.Fatalf("purge: %v", err)
	}
	crds := in.Client.Dynamic.Resource(crdResource)
	kept, err := crds.List(ctx, metav1.ListOptions{LabelSelector: ManagedLabel + "=true"})
	if err != nil {
		t.Fatalf("purge: %v", err)
	}
	var gone []Ref
	for _, c := range kept.Items {
		if err := crds.Delete(ctx, c.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatalf("purge: %v", err)
		}
		gone = append(gone, RefOf(&c))
	}
	if err := in.Client.Kube.CoreV1().Namespaces().Delete(ctx, revision.Namespace, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("purge: %v", err)
	}
	if err := in.WaitGone(ctx, gone, 2*time.Minute); err != nil {
		t.Fatalf("purge: %v", err)
	}
	waitNamespaceGone(t, revision.Namespace)
}

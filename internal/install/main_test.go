package install

import (
	"context"
	"os"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/kube"
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
	return Options{Installation: in, Objects: objs, Timeout: 2 * time.Minute, Version: "test"}
}

// purge removes everything an install left, so the next test starts clean.
func purge(t *testing.T) {
	t.Helper()
	in, _ := admin(t)
	_, err := in.Uninstall(context.Background(), UninstallOptions{Purge: true, Confirm: true, Timeout: 2 * time.Minute})
	if err != nil && err != ErrNotInstalled {
		t.Fatalf("purge: %v", err)
	}
}

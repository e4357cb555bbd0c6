// Command testcluster runs the local control plane of the cluster tests until
// interrupted, for trying kfistio by hand: a real API server, controller
// manager and scheduler, fake nodes whose kubelets kwok plays, and, with
// -istiod, the real istiod of its release for each installed istiod
// Deployment; with -previous, Kubeflow's Istio tree of the previous release
// (testcluster.PreviousKubeflow) applied as its users apply it, with kubectl:
//
//	go run ./hack/testcluster -dir /tmp/cluster -istiod &
//	go run ./cmd/kfistio install --kubeconfig /tmp/cluster/admin.kubeconfig
//
//	go run ./hack/testcluster -dir /tmp/cluster -istiod -previous &
//	go run ./cmd/kfistio upgrade start --kubeconfig /tmp/cluster/admin.kubeconfig
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/testcluster"
)

func main() {
	dir := flag.String("dir", "", "directory for the cluster's files (default: a new temporary directory)")
	nodes := flag.Int("nodes", 2, "number of fake nodes")
	istiod := flag.Bool("istiod", false, "run the real istiod (pilot-discovery of its release) for each installed istiod Deployment")
	previous := flag.Bool("previous", false, "apply Kubeflow's Istio tree of release "+testcluster.PreviousRelease+" with kubectl, as its users do")
	delay := flag.Duration("delay", 0, "also serve the API server through a TCP proxy on loopback that delays each direction by this much, as a remote cluster; its kubeconfig is printed second")
	flag.Parse()
	if err := run(*dir, *nodes, *istiod, *previous, *delay); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(dir string, nodes int, istiod, previous bool, delay time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if dir == "" {
		d, err := os.MkdirTemp("", "kfistio-cluster-")
		if err != nil {
			return err
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	c, err := testcluster.Start(ctx, dir)
	if err != nil {
		return err
	}
	defer func() { _ = c.Stop() }()
	var ns []testcluster.Node
	for i := 0; i < nodes; i++ {
		ns = append(ns, testcluster.Node{Name: fmt.Sprintf("node-%d", i)})
	}
	if err := c.AddNodes(ctx, ns...); err != nil {
		return err
	}
	if istiod {
		if err := c.RunIstiod(); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "istiod runs once istio-system/istiod is installed; its log: %s\n", filepath.Join(c.Dir, "istiod.log"))
	}
	if previous {
		if err := applyPrevious(c); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "Kubeflow's Istio %s applied with kubectl\n", testcluster.PreviousRelease)
	}
	fmt.Println(c.Kubeconfig)
	if delay > 0 {
		p, err := c.DelayProxy(delay)
		if err != nil {
			return err
		}
		defer p.Close()
		fmt.Println(p.Kubeconfig)
	}
	fmt.Fprintln(os.Stderr, "cluster up; interrupt to stop")
	<-ctx.Done()
	return nil
}

// applyPrevious applies Kubeflow's Istio tree of the previous release with
// kubectl, server-side, the CRDs first.
func applyPrevious(c *testcluster.Cluster) error {
	crds, rest, err := testcluster.PreviousKubeflow("")
	if err != nil {
		return err
	}
	for _, part := range [][]*unstructured.Unstructured{crds, rest} {
		b, err := object.Marshal(part)
		if err != nil {
			return err
		}
		f := filepath.Join(c.Dir, "previous.yaml")
		if err := os.WriteFile(f, b, 0o600); err != nil {
			return err
		}
		if _, err := c.Kubectl("apply", "--server-side", "-f", f); err != nil {
			return err
		}
		if _, err := c.Kubectl("wait", "--for", "condition=established", "--timeout", "60s", "crd", "--all"); err != nil {
			return err
		}
	}
	return nil
}

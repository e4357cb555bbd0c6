// Command testcluster runs the local control plane of the cluster tests until
// interrupted, for trying kfistio by hand: a real API server, controller
// manager and scheduler, fake nodes whose kubelets kwok plays, and, with
// -istiod, the real istiod of the pinned release for the installed istiod
// Deployment:
//
//	go run ./hack/testcluster -dir /tmp/cluster -istiod &
//	go run ./cmd/kfistio install --kubeconfig /tmp/cluster/admin.kubeconfig
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/kubeflow/kfistio/internal/testcluster"
)

func main() {
	dir := flag.String("dir", "", "directory for the cluster's files (default: a new temporary directory)")
	nodes := flag.Int("nodes", 2, "number of fake nodes")
	istiod := flag.Bool("istiod", false, "run the real istiod (pilot-discovery) for the installed Deployment istio-system/istiod")
	flag.Parse()
	if err := run(*dir, *nodes, *istiod); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(dir string, nodes int, istiod bool) error {
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
	fmt.Println(c.Kubeconfig)
	fmt.Fprintln(os.Stderr, "cluster up; interrupt to stop")
	<-ctx.Done()
	return nil
}

// Command testcluster runs the local control plane of the cluster tests until
// interrupted, for trying kfistio by hand:
//
//	go run ./hack/testcluster -dir /tmp/cluster &
//	go run ./cmd/kfistio install --kubeconfig /tmp/cluster/admin.kubeconfig
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kubeflow/kfistio/internal/testcluster"
)

func main() {
	dir := flag.String("dir", "", "directory for the cluster's files (default: a new temporary directory)")
	nodes := flag.Int("nodes", 2, "number of fake nodes")
	flag.Parse()
	if err := run(*dir, *nodes); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(dir string, nodes int) error {
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
	fmt.Println(c.Kubeconfig)
	fmt.Fprintln(os.Stderr, "cluster up; interrupt to stop")
	<-ctx.Done()
	return nil
}

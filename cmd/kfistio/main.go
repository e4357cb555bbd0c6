// Command kfistio generates, builds, verifies and installs the Kubeflow Istio
// distribution.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/kubeflow/kfistio/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], cli.Streams{In: os.Stdin, Out: os.Stdout, Err: os.Stderr})
	stop()
	os.Exit(code)
}

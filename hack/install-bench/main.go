// Command install-bench measures one install of the default installation on
// a fresh local control plane, two ways:
//
//  1. kfistio install (staged server-side apply, waits), then the same
//     install again;
//  2. the documented way: kubectl apply --server-side of the built
//     installation in a retry loop until the CRDs are there, then
//     kubectl wait / kubectl rollout status.
//
// It prints the wall time to ready and the API requests by verb of each.
// kfistio's requests are counted by a wrapping transport, kubectl's from its
// -v=6 request log. Run it with hack/install-bench.sh.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/testcluster"
)

func main() {
	retry := flag.Duration("retry-sleep", 20*time.Second, "sleep between attempts of the kubectl apply loop (the documented loop sleeps 20s)")
	flag.Parse()
	if err := run(*retry); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(retry time.Duration) error {
	ctx := context.Background()
	tree, err := build.Embedded()
	if err != nil {
		return err
	}
	inst := build.DefaultInstallation(build.DefaultOverlay)
	res, err := tree.BuildInstallation(inst)
	if err != nil {
		return err
	}
	objs, err := res.Objects()
	if err != nil {
		return err
	}
	yaml, err := res.YAML()
	if err != nil {
		return err
	}
	fmt.Printf("installation %s: %d objects\n\n", inst.Name(), len(objs))
	fmt.Printf("%-34s %10s  %s\n", "", "to ready", "API requests by verb")

	err = withCluster(ctx, func(c *testcluster.Cluster) error {
		for _, label := range []string{"kfistio install", "kfistio install (again)"} {
			counter := &kube.RequestCounter{}
			start := time.Now()
			client, err := kube.Connect(ctx, kube.Options{Kubeconfig: c.Kubeconfig, WrapTransport: counter.Wrap})
			if err != nil {
				return err
			}
			in := &install.Installer{Client: client}
			if _, err := in.Install(ctx, install.Options{Installation: inst, Objects: objs, Timeout: 5 * time.Minute}); err != nil {
				return err
			}
			fmt.Printf("%-34s %9.2fs  %s (writes: %d)\n", label, time.Since(start).Seconds(), counter, counter.Writes())
		}
		return nil
	})
	if err != nil {
		return err
	}
	return withCluster(ctx, func(c *testcluster.Cluster) error {
		bin, err := testcluster.BinDir()
		if err != nil {
			return err
		}
		file := filepath.Join(c.Dir, "installation.yaml")
		if err := os.WriteFile(file, yaml, 0o600); err != nil {
			return err
		}
		kubectl := func(args ...string) (string, error) {
			cmd := exec.CommandContext(ctx, filepath.Join(bin, "kubectl"), append([]string{"--kubeconfig=" + c.Kubeconfig, "-v=6"}, args...)...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			return out.String(), err
		}
		var log strings.Builder
		start := time.Now()
		// The rest of Kubeflow creates the kubeflow namespace, which
		// kubeflow-gateway lives in.
		out, err := kubectl("create", "namespace", "kubeflow")
		log.WriteString(out)
		if err != nil {
			return fmt.Errorf("kubectl create namespace: %w\n%s", err, out)
		}
		attempts := 0
		for {
			attempts++
			out, err := kubectl("apply", "--server-side", "-f", file)
			log.WriteString(out)
			if err == nil {
				break
			}
			if attempts == 10 {
				return fmt.Errorf("kubectl apply failed 10 times: %w\n%s", err, tail(out))
			}
			time.Sleep(retry)
		}
		for _, args := range [][]string{
			{"wait", "--for=condition=Established", "crd", "--all", "--timeout=5m"},
			{"rollout", "status", "-n", "kube-system", "daemonset/istio-cni-node", "--timeout=5m"},
			{"wait", "--for=condition=Available", "-n", "istio-system", "deployment", "--all", "--timeout=5m"},
		} {
			out, err := kubectl(args...)
			log.WriteString(out)
			if err != nil {
				return fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
			}
		}
		fmt.Printf("%-34s %9.2fs  %s (%d apply attempts, %s apart)\n", "kubectl apply loop + kubectl wait", time.Since(start).Seconds(), countKubectl(log.String()), attempts, retry)
		return nil
	})
}

// withCluster runs fn on a fresh control plane with two fake nodes.
func withCluster(ctx context.Context, fn func(*testcluster.Cluster) error) error {
	dir, err := os.MkdirTemp("", "kfistio-bench-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	c, err := testcluster.Start(ctx, dir)
	if err != nil {
		return err
	}
	defer func() { _ = c.Stop() }()
	if err := c.AddNodes(ctx, testcluster.Node{Name: "node-a"}, testcluster.Node{Name: "node-b"}); err != nil {
		return err
	}
	return fn(c)
}

// kubectl -v=6 logs each response with its verb and URL.
var response = regexp.MustCompile(`verb="(\w+)" url="([^"]+)"`)

// countKubectl counts the requests of a kubectl -v=6 log by verb, named as
// kube.RequestCounter names them.
func countKubectl(log string) string {
	counts := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		m := response.FindStringSubmatch(sc.Text())
		if m == nil || !strings.Contains(sc.Text(), "Response") {
			continue
		}
		v := strings.ToLower(m[1])
		switch v {
		case "post":
			v = "create"
		case "put":
			v = "update"
		case "get":
			if strings.Contains(m[2], "watch=true") {
				v = "watch"
			}
		}
		if strings.Contains(m[2], "dryRun=All") {
			v += " (dry run)"
		}
		counts[v]++
	}
	verbs := make([]string, 0, len(counts))
	for v := range counts {
		verbs = append(verbs, v)
	}
	sort.Strings(verbs)
	var parts []string
	for _, v := range verbs {
		parts = append(parts, fmt.Sprintf("%s: %d", v, counts[v]))
	}
	return strings.Join(parts, ", ")
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return strings.Join(lines, "\n")
}

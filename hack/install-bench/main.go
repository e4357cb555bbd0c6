// Command install-bench measures the default installation on fresh local
// control planes with the real istiod, at several latencies: the API server
// is reached through a TCP proxy on loopback that delays each direction.
// For each latency it prints, with the API requests by verb:
//
//  1. kfistio install to ready, the same install again (nothing changed),
//     kfistio status and kfistio diff;
//  2. the README's kubectl steps (kubectl apply --server-side -k of each
//     directory, a failed apply retried as a user would, then kubectl wait
//     and rollout status), and the same steps again;
//
// and the ratio of kfistio's time to kubectl's. kfistio's requests are
// counted by a wrapping transport, kubectl's from its -v=6 request log. Run
// it with hack/install-bench.sh.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/testcluster"
)

func main() {
	retry := flag.Duration("retry-sleep", 2*time.Second, "sleep before a failed kubectl apply is run again (the CRDs or istiod's webhook are not there yet)")
	delays := flag.String("delays", "0s,10ms,25ms", "latencies to measure, each way, comma-separated")
	concurrency := flag.Int("concurrency", kube.DefaultConcurrency, "kfistio's requests in flight")
	manifests := flag.String("manifests", "manifests", "the kustomize tree kubectl applies")
	flag.Parse()
	var ds []time.Duration
	for _, s := range strings.Split(*delays, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			fmt.Fprintln(os.Stderr, "Error: -delays:", err)
			os.Exit(2)
		}
		ds = append(ds, d)
	}
	b := &bench{retry: *retry, concurrency: *concurrency, manifests: *manifests}
	if err := b.run(ds); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

type bench struct {
	retry       time.Duration
	concurrency int
	manifests   string
	inst        build.Installation
}

// result is one measured step.
type result struct {
	what     string
	took     time.Duration
	requests string
}

func (b *bench) run(delays []time.Duration) error {
	tree, err := build.Embedded()
	if err != nil {
		return err
	}
	b.inst = build.DefaultInstallation(build.DefaultOverlay)
	objs, err := tree.InstallationObjects(b.inst)
	if err != nil {
		return err
	}
	fmt.Printf("installation %s: %d objects; kfistio --concurrency %d; kubectl retries a failed apply after %s\n\n", b.inst.Name(), len(objs), b.concurrency, b.retry)
	for _, d := range delays {
		var kf, kc []result
		err := withCluster(d, func(kubeconfig string) error {
			kf, err = b.kfistio(kubeconfig, objs)
			return err
		})
		if err != nil {
			return fmt.Errorf("kfistio at %s: %w", d, err)
		}
		err = withCluster(d, func(kubeconfig string) error {
			kc, err = b.kubectl(kubeconfig)
			return err
		})
		if err != nil {
			return fmt.Errorf("kubectl at %s: %w", d, err)
		}
		fmt.Printf("latency %s each way\n", d)
		for i, r := range kf {
			ratio := ""
			if i < len(kc) {
				ratio = fmt.Sprintf("%.2fx", r.took.Seconds()/kc[i].took.Seconds())
			}
			fmt.Printf("  %-28s %8.2fs %6s  %s\n", r.what, r.took.Seconds(), ratio, r.requests)
		}
		for _, r := range kc {
			fmt.Printf("  %-28s %8.2fs %6s  %s\n", r.what, r.took.Seconds(), "", r.requests)
		}
		fmt.Println()
	}
	return nil
}

func (b *bench) connect(ctx context.Context, kubeconfig string) (*install.Installer, *kube.RequestCounter, error) {
	counter := &kube.RequestCounter{}
	c, err := kube.Connect(ctx, kube.Options{Kubeconfig: kubeconfig, WrapTransport: counter.Wrap, Concurrency: b.concurrency})
	if err != nil {
		return nil, nil, err
	}
	return &install.Installer{Client: c}, counter, nil
}

func (b *bench) kfistio(kubeconfig string, objs []*unstructured.Unstructured) ([]result, error) {
	ctx := context.Background()
	var out []result
	step := func(what string, fn func(*install.Installer) error) error {
		start := time.Now()
		in, counter, err := b.connect(ctx, kubeconfig)
		if err != nil {
			return err
		}
		if err := fn(in); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, result{what, time.Since(start), fmt.Sprintf("%s (writes: %d)", counter, counter.Writes())})
		return nil
	}
	o := install.Options{Installation: b.inst, Objects: objs, Timeout: 5 * time.Minute, Version: "bench"}
	for _, what := range []string{"kfistio install", "kfistio install (unchanged)"} {
		if err := step(what, func(in *install.Installer) error { _, err := in.Install(ctx, o); return err }); err != nil {
			return nil, err
		}
	}
	err := step("kfistio status", func(in *install.Installer) error {
		inv, err := in.ReadInventory(ctx)
		if err != nil {
			return err
		}
		st, err := in.Status(ctx, inv, objs)
		if err == nil && (!st.Ready() || len(st.Drift) > 0) {
			err = fmt.Errorf("not ready or drifted right after install: %+v", st)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	err = step("kfistio diff", func(in *install.Installer) error {
		d, err := in.Diff(ctx, objs)
		if err == nil && len(d) > 0 {
			err = fmt.Errorf("%d differences right after install", len(d))
		}
		return err
	})
	return out, err
}

// kubectlSteps are the README's, from manifests/: the CRDs and the
// namespace, the wait for the CRDs, the default overlay, the rest of
// Kubeflow's Istio, then the waits for readiness. The kubeflow namespace,
// which kubeflow-gateway lives in, comes with the rest of Kubeflow.
var kubectlSteps = [][]string{
	{"create", "namespace", "kubeflow"},
	{"apply", "--server-side", "-k", "istio-crds/base"},
	{"apply", "--server-side", "-k", "istio-namespace/base"},
	{"wait", "--for", "condition=established", "crd", "--all", "--timeout=60s"},
	{"apply", "--server-side", "-k", "istio-install/overlays/oauth2-proxy"},
	{"apply", "--server-side", "-k", "cluster-local-gateway/base"},
	{"apply", "--server-side", "-k", "kubeflow-istio-resources/base"},
	{"rollout", "status", "-n", "kube-system", "daemonset/istio-cni-node", "--timeout=5m"},
	{"wait", "--for=condition=Available", "-n", "istio-system", "deployment", "--all", "--timeout=5m"},
}

func (b *bench) kubectl(kubeconfig string) ([]result, error) {
	bin, err := testcluster.BinDir()
	if err != nil {
		return nil, err
	}
	run := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(bin, "kubectl"), append([]string{"--kubeconfig=" + kubeconfig, "-v=6"}, args...)...)
		cmd.Dir = b.manifests
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	var out []result
	for _, what := range []string{"kubectl steps", "kubectl steps (unchanged)"} {
		var log strings.Builder
		start := time.Now()
		retries := 0
		for i, args := range kubectlSteps {
			if i == 0 && what != "kubectl steps" {
				continue
			}
			for attempt := 1; ; attempt++ {
				o, err := run(args...)
				log.WriteString(o)
				if err == nil {
					break
				}
				// istiod's validation webhook refuses Istio resources until
				// it serves: try again, as the user would.
				if args[0] != "apply" || attempt == 30 {
					return nil, fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, tail(o))
				}
				retries++
				time.Sleep(b.retry)
			}
		}
		out = append(out, result{what, time.Since(start), fmt.Sprintf("%s (%d applies retried)", countKubectl(log.String()), retries)})
	}
	return out, nil
}

// withCluster runs fn on a fresh control plane with two fake nodes and the
// real istiod, reached through a proxy that delays each direction by delay
// (none at 0).
func withCluster(delay time.Duration, fn func(kubeconfig string) error) error {
	dir, err := os.MkdirTemp("", "kfistio-bench-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	c, err := testcluster.Start(context.Background(), dir)
	if err != nil {
		return err
	}
	defer func() { _ = c.Stop() }()
	if err := c.AddNodes(context.Background(), testcluster.Node{Name: "node-a"}, testcluster.Node{Name: "node-b"}); err != nil {
		return err
	}
	if err := c.RunIstiod(); err != nil {
		return err
	}
	if delay == 0 {
		return fn(c.Kubeconfig)
	}
	p, err := c.DelayProxy(delay)
	if err != nil {
		return err
	}
	defer p.Close()
	return fn(p.Kubeconfig)
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
		u, err := url.Parse(m[2])
		if err != nil {
			continue
		}
		counts[kube.Verb(m[1], u)]++
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

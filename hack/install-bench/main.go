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

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	// detail are lines printed under it.
	detail []string
}

// stepTimes records when each step of an install ended, from its start.
type stepTimes struct {
	start time.Time
	lines []string
}

func (s *stepTimes) record(e install.Event) {
	if e.Done {
		s.lines = append(s.lines, fmt.Sprintf("%6.2fs  %s", time.Since(s.start).Seconds(), e.Step))
	}
}

// podTimes are when each pod of istio-system and kube-system was first
// seen, and first seen ready, polled every 100 ms.
type podTimes struct {
	// Written by the poller, read once it is stopped.
	seen, ready map[string]time.Time
	cancel      context.CancelFunc
	done        chan struct{}
}

// watchPods polls with a client of its own, whose requests the install's
// are not counted with.
func watchPods(ctx context.Context, kubeconfig string) (*podTimes, error) {
	c, err := kube.Connect(ctx, kube.Options{Kubeconfig: kubeconfig})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &podTimes{seen: map[string]time.Time{}, ready: map[string]time.Time{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			for _, ns := range []string{"istio-system", "kube-system"} {
				list, err := c.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
				if err != nil {
					continue
				}
				now := time.Now()
				for _, pod := range list.Items {
					name := ns + "/" + pod.Name
					if _, ok := p.seen[name]; !ok {
						p.seen[name] = now
					}
					for _, c := range pod.Status.Conditions {
						if _, ok := p.ready[name]; !ok && c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
							p.ready[name] = now
						}
					}
				}
			}
			if _, ok := p.seen[caBundles]; !ok && bundlesWritten(ctx, c) {
				p.seen[caBundles] = time.Now()
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	return p, nil
}

// caBundles is when istiod had written the CA bundle of every webhook, in
// podTimes.seen.
const caBundles = "CA bundles"

// bundlesWritten reports whether istiod's webhooks exist, each with a CA
// bundle.
func bundlesWritten(ctx context.Context, c *kube.Client) bool {
	sel := metav1.ListOptions{LabelSelector: "app in (istiod,sidecar-injector)"}
	mw, err := c.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, sel)
	if err != nil || len(mw.Items) == 0 {
		return false
	}
	vw, err := c.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, sel)
	if err != nil || len(vw.Items) == 0 {
		return false
	}
	for _, w := range mw.Items {
		for _, h := range w.Webhooks {
			if len(h.ClientConfig.CABundle) == 0 {
				return false
			}
		}
	}
	for _, w := range vw.Items {
		for _, h := range w.Webhooks {
			if len(h.ClientConfig.CABundle) == 0 {
				return false
			}
		}
	}
	return true
}

func (p *podTimes) stop() {
	p.cancel()
	<-p.done
}

// floor is what no installer can shorten, of an install that took took:
// istiod's start-up, from its pod first seen to the CA bundles of its
// webhooks written (the gateways' pods need its injector), then the
// gateway pods', from first seen to ready.
func (p *podTimes) floor(took time.Duration) []string {
	first := func(prefix string) (time.Time, time.Time) {
		var seen, ready time.Time
		for name, t := range p.seen {
			if !strings.HasPrefix(name, prefix) {
				continue
			}
			if seen.IsZero() || t.Before(seen) {
				seen = t
			}
			if r := p.ready[name]; r.After(ready) {
				ready = r
			}
		}
		return seen, ready
	}
	istiod, _ := first("istio-system/istiod-")
	bundles := p.seen[caBundles]
	var gateways time.Duration
	for _, g := range []string{"istio-system/cluster-local-gateway-", "istio-system/istio-ingressgateway-"} {
		if seen, ready := first(g); !seen.IsZero() && ready.After(seen) {
			gateways = max(gateways, ready.Sub(seen))
		}
	}
	if istiod.IsZero() || bundles.IsZero() {
		return []string{"istiod's start-up was not seen"}
	}
	start := bundles.Sub(istiod)
	floor := start + gateways
	return []string{
		fmt.Sprintf("istiod's start-up, its pod first seen to its CA bundles written: %.2fs; gateway pods, first seen to ready: %.2fs", start.Seconds(), gateways.Seconds()),
		fmt.Sprintf("floor: %.2fs of %.2fs; the rest, %.2fs, is requests and the waits' polls", floor.Seconds(), took.Seconds(), (took - floor).Seconds()),
	}
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
			for _, d := range r.detail {
				fmt.Printf("      %s\n", d)
			}
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
		out = append(out, result{what: what, took: time.Since(start), requests: fmt.Sprintf("%s (writes: %d)", counter, counter.Writes())})
		return nil
	}
	o := install.Options{Installation: b.inst, Objects: objs, Timeout: 5 * time.Minute, Version: "bench"}
	for _, what := range []string{"kfistio install", "kfistio install (unchanged)"} {
		first := what == "kfistio install"
		var steps *stepTimes
		var pods *podTimes
		if first {
			var err error
			if pods, err = watchPods(ctx, kubeconfig); err != nil {
				return nil, err
			}
		}
		err := step(what, func(in *install.Installer) error {
			if first {
				steps = &stepTimes{start: time.Now()}
				in.Progress = steps.record
			}
			_, err := in.Install(ctx, o)
			return err
		})
		if err != nil {
			if pods != nil {
				pods.stop()
			}
			return nil, err
		}
		if first {
			pods.stop()
			out[len(out)-1].detail = append(steps.lines, pods.floor(out[len(out)-1].took)...)
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
		out = append(out, result{what: what, took: time.Since(start), requests: fmt.Sprintf("%s (%d applies retried)", countKubectl(log.String()), retries)})
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

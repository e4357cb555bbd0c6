// Command scale-bench measures kfistio and istiod as a Kubeflow cluster grows
// by profiles, on the local control plane with the real istiod: kwok runs
// the pods, istiod's webhook injects them. Each profile is a namespace
// labelled for injection with three Services and three single-pod
// Deployments, as Kubeflow's profile controller and pipelines make them.
//
// For each number of profiles it prints the wall time and peak memory of
// kfistio doctor (on loopback and through a TCP proxy that delays each
// direction, as a remote cluster), status, diff and an unchanged install;
// istiod's resident memory; and what one profile's sidecar receives over
// xDS (clusters, listeners, routes: counts and bytes), with the default
// installation and with the sidecar-egress component. Run it with
//
//	go run ./hack/scale-bench -profiles 0,100,300,1000
//
// after hack/build-controlplane.sh and hack/build-istiod.sh. 1000 profiles
// take about fifteen minutes to build here (kwok starts about five pods a
// second); the benchmark is not part of the tests.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"golang.org/x/sync/errgroup"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"istio.io/istio/pilot/pkg/model"
	v3 "istio.io/istio/pilot/pkg/xds/v3"
	"istio.io/istio/pkg/adsc"
	istiolog "istio.io/istio/pkg/log"

	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/testcluster"
)

func main() {
	profiles := flag.String("profiles", "0,100,300,1000", "numbers of profiles to measure at, ascending, comma-separated")
	delay := flag.Duration("delay", 25*time.Millisecond, "latency of the remote-cluster measurement, each way")
	nodes := flag.Int("nodes", 40, "fake nodes (110 pods each)")
	compare := flag.String("compare", "", "another kfistio binary whose doctor is measured too, on loopback (an earlier build)")
	keep := flag.Bool("keep", false, "keep the cluster running after the table, until interrupted, and print its kubeconfig")
	flag.Parse()
	var ns []int
	for _, s := range strings.Split(*profiles, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 || len(ns) > 0 && n < ns[len(ns)-1] {
			fmt.Fprintf(os.Stderr, "Error: -profiles: %q is not an ascending list of numbers\n", *profiles)
			os.Exit(2)
		}
		ns = append(ns, n)
	}
	// The xDS client logs every response.
	if scope := istiolog.FindScope("adsc"); scope != nil {
		scope.SetOutputLevel(istiolog.WarnLevel)
	}
	if err := run(ns, *delay, *nodes, *compare, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

// bench is the cluster under measurement.
type bench struct {
	c       *testcluster.Cluster
	kc      kubernetes.Interface
	kfistio string
	compare string
	remote  string // kubeconfig through the delaying proxy
}

// row is the measurement at one number of profiles.
type row struct {
	profiles              int
	doctor, doctorRemote  measure
	doctorCompare         measure
	status, diff, install measure
	istiodRSS             int64
	xds, egress           xds
}

type measure struct {
	took time.Duration
	rss  int64 // bytes
}

type xds struct {
	clusters, listeners, routes int
	bytes                       int
}

func run(profiles []int, delay time.Duration, nodes int, compare string, keep bool) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "kfistio-scale-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	b := &bench{kfistio: filepath.Join(dir, "kfistio"), compare: compare}
	step("building kfistio")
	if out, err := exec.Command("go", "build", "-o", b.kfistio, "./cmd/kfistio").CombinedOutput(); err != nil {
		return fmt.Errorf("build kfistio: %v\n%s", err, out)
	}
	step("starting the control plane with %d nodes", nodes)
	if err := os.Mkdir(filepath.Join(dir, "cluster"), 0o700); err != nil {
		return err
	}
	if b.c, err = testcluster.Start(ctx, filepath.Join(dir, "cluster")); err != nil {
		return err
	}
	defer func() { _ = b.c.Stop() }()
	var list []testcluster.Node
	for i := range nodes {
		list = append(list, testcluster.Node{Name: fmt.Sprintf("node-%02d", i)})
	}
	if err := b.c.AddNodes(ctx, list...); err != nil {
		return err
	}
	if err := b.c.RunIstiod(); err != nil {
		return err
	}
	// Building profiles is many small writes: no client-side throttling.
	cfg := rest.CopyConfig(b.c.Config)
	cfg.QPS, cfg.Burst = 500, 1000
	if b.kc, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	p, err := b.c.DelayProxy(delay)
	if err != nil {
		return err
	}
	defer p.Close()
	b.remote = p.Kubeconfig
	step("installing the default installation")
	if _, err := b.kfistioRun(b.c.Kubeconfig, "install"); err != nil {
		return err
	}
	var rows []row
	have := 0
	for _, n := range profiles {
		step("growing to %d profiles", n)
		if err := b.grow(ctx, have, n); err != nil {
			return err
		}
		have = n
		r, err := b.measure(ctx, n)
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}
	fmt.Printf("\n| profiles | doctor | doctor at %s | status | diff | install (unchanged) | istiod RSS | one sidecar's xDS: clusters / listeners / routes, bytes | with sidecar-egress |\n|---|---|---|---|---|---|---|---|---|\n", delay)
	for _, r := range rows {
		fmt.Printf("| %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.profiles, r.doctor, r.doctorRemote, r.status, r.diff, r.install,
			mib(r.istiodRSS), r.xds, r.egress)
	}
	if compare != "" {
		fmt.Printf("\ndoctor of %s, loopback:\n", compare)
		for _, r := range rows {
			fmt.Printf("  %d profiles: %s\n", r.profiles, r.doctorCompare)
		}
	}
	if keep {
		fmt.Printf("\ncluster kept until interrupted: --kubeconfig %s (%s each way: %s)\n", b.c.Kubeconfig, delay, b.remote)
		stop, cancel := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer cancel()
		<-stop.Done()
	}
	return nil
}

func step(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func (m measure) String() string { return fmt.Sprintf("%.2f s, %s", m.took.Seconds(), mib(m.rss)) }

func (x xds) String() string {
	if x.clusters == 0 {
		return "-"
	}
	return fmt.Sprintf("%d / %d / %d, %d KB", x.clusters, x.listeners, x.routes, x.bytes/1000)
}

func mib(n int64) string { return fmt.Sprintf("%d MiB", n>>20) }

// kfistioRun runs kfistio with args against kubeconfig and measures it.
// doctor's exit status 1 (findings) counts as a run.
func (b *bench) kfistioRun(kubeconfig string, args ...string) (measure, error) {
	return b.timed(b.kfistio, kubeconfig, args...)
}

// timed runs the kfistio binary bin with args against kubeconfig and
// measures it.
func (b *bench) timed(bin, kubeconfig string, args ...string) (measure, error) {
	cmd := exec.Command(bin, append(args, "--kubeconfig", kubeconfig)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if ee, ok := err.(*exec.ExitError); ok && args[0] == "doctor" && ee.ExitCode() == 1 {
		err = nil
	}
	if err != nil {
		return measure{}, fmt.Errorf("kfistio %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	m := measure{took: took}
	if ru != nil {
		m.rss = ru.Maxrss << 10
	}
	return m, nil
}

// measure takes the row of n profiles.
func (b *bench) measure(ctx context.Context, n int) (row, error) {
	r := row{profiles: n}
	var err error
	for _, m := range []struct {
		to   *measure
		conf string
		args []string
	}{
		{&r.doctor, b.c.Kubeconfig, []string{"doctor", "-o", "json"}},
		{&r.doctorRemote, b.remote, []string{"doctor", "-o", "json"}},
		{&r.status, b.c.Kubeconfig, []string{"status"}},
		{&r.diff, b.c.Kubeconfig, []string{"diff"}},
		{&r.install, b.c.Kubeconfig, []string{"install"}},
	} {
		if *m.to, err = b.kfistioRun(m.conf, m.args...); err != nil {
			return r, err
		}
	}
	if b.compare != "" {
		if r.doctorCompare, err = b.timed(b.compare, b.c.Kubeconfig, "doctor", "-o", "json"); err != nil {
			return r, err
		}
	}
	if r.istiodRSS, err = b.istiodRSS(); err != nil {
		return r, err
	}
	if n == 0 {
		return r, nil
	}
	if r.xds, err = b.sidecarXDS(ctx); err != nil {
		return r, err
	}
	if _, err := b.kfistioRun(b.c.Kubeconfig, "install", "--component", "sidecar-egress"); err != nil {
		return r, err
	}
	if r.egress, err = b.sidecarXDS(ctx); err != nil {
		return r, err
	}
	_, err = b.kfistioRun(b.c.Kubeconfig, "install")
	return r, err
}

// profileName is the namespace of profile i.
func profileName(i int) string { return fmt.Sprintf("profile-%04d", i) }

// profileApps are the Deployments and Services of every profile.
var profileApps = []string{"ml-pipeline-ui-artifact", "ml-pipeline-visualizationserver", "notebook"}

// grow creates profiles from up to to, and waits until all their pods run.
func (b *bench) grow(ctx context.Context, from, to int) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := from; i < to; i++ {
		g.Go(func() error { return b.profile(gctx, profileName(i)) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	want := to * len(profileApps)
	deadline := time.Now().Add(time.Duration(want)*time.Second + 5*time.Minute)
	for {
		running, err := b.runningProfilePods(ctx)
		if err != nil {
			return err
		}
		if running >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d profile pods running", running, want)
		}
		step("%d of %d profile pods running", running, want)
		time.Sleep(10 * time.Second)
	}
}

func (b *bench) runningProfilePods(ctx context.Context) (int, error) {
	pods, err := kube.ListAll[*corev1.Pod](ctx, func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return b.kc.CoreV1().Pods("").List(ctx, o)
	}, metav1.ListOptions{})
	n := 0
	for _, p := range pods {
		if strings.HasPrefix(p.Namespace, "profile-") && p.Status.Phase == corev1.PodRunning {
			n++
		}
	}
	return n, err
}

// profile creates the namespace ns with its Services and Deployments.
func (b *bench) profile(ctx context.Context, ns string) error {
	namespace := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{
		"istio-injection": "enabled", "app.kubernetes.io/part-of": "kubeflow-profile",
		"pod-security.kubernetes.io/enforce": "restricted",
	}}}
	if _, err := b.kc.CoreV1().Namespaces().Create(ctx, namespace, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create Namespace/%s: %w", ns, err)
	}
	for _, app := range profileApps {
		labels := map[string]string{"app": app}
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: ns},
			Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8888)}}},
		}
		if _, err := b.kc.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create Service/%s/%s: %w", ns, app, err)
		}
		one := int32(1)
		no := false
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: ns},
			Spec: appsv1.DeploymentSpec{
				Replicas: &one,
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(1000)),
							SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
						Containers: []corev1.Container{{
							Name: app, Image: "ghcr.io/kubeflow/" + app + ":v1",
							Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8888}},
							SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: &no,
								Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
						}},
					},
				},
			},
		}
		if _, err := b.kc.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create Deployment/%s/%s: %w", ns, app, err)
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// istiodRSS is the resident memory of the istiod process of the cluster.
func (b *bench) istiodRSS() (int64, error) {
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		return 0, err
	}
	for _, p := range procs {
		cmdline, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(cmdline), "pilot-discovery") || !strings.Contains(string(cmdline), b.c.Dir) {
			continue
		}
		f, err := os.Open(filepath.Join(filepath.Dir(p), "status"))
		if err != nil {
			continue
		}
		s := bufio.NewScanner(f)
		for s.Scan() {
			if kb, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
				_ = f.Close()
				v, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(kb), "kB")), 10, 64)
				return v << 10, err
			}
		}
		_ = f.Close()
	}
	return 0, fmt.Errorf("no pilot-discovery process of the cluster in %s", b.c.Dir)
}

// sidecarXDS is what istiod sends the sidecar of the first pod of the first
// profile: its clusters, listeners and routes.
func (b *bench) sidecarXDS(ctx context.Context) (xds, error) {
	ns := profileName(0)
	pods, err := b.kc.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + profileApps[0]})
	if err != nil || len(pods.Items) == 0 {
		return xds{}, fmt.Errorf("the pod of %s/%s: %v", ns, profileApps[0], err)
	}
	pod := &pods.Items[0]
	meta, err := testcluster.ProxyMeta(ctx, b.kc, pod)
	if err != nil {
		return xds{}, err
	}
	addr, err := b.c.IstiodAddress(ctx)
	if err != nil {
		return xds{}, err
	}
	// istiod pushes the changed Sidecar within a second or so.
	time.Sleep(5 * time.Second)
	a, err := adsc.New(addr, &adsc.ADSConfig{
		Config:                   adsc.Config{Namespace: ns, Workload: pod.Name, NodeType: model.SidecarProxy, IP: pod.Status.PodIP, Meta: meta},
		InitialDiscoveryRequests: []*discovery.DiscoveryRequest{{TypeUrl: v3.ClusterType}, {TypeUrl: v3.ListenerType}},
	})
	if err != nil {
		return xds{}, err
	}
	defer a.Close()
	if err := a.Run(); err != nil {
		return xds{}, err
	}
	if _, err := a.Wait(time.Minute, v3.ClusterType, v3.ListenerType, v3.RouteType); err != nil {
		return xds{}, fmt.Errorf("xDS of %s/%s: %w", ns, pod.Name, err)
	}
	var x xds
	for typ, to := range map[string]*int{v3.ClusterType: &x.clusters, v3.ListenerType: &x.listeners, v3.RouteType: &x.routes} {
		resp := a.Received[typ]
		if resp == nil {
			continue
		}
		*to = len(resp.Resources)
		for _, r := range resp.Resources {
			x.bytes += len(r.Value)
		}
	}
	return x, nil
}

package testcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// The istiods the cluster runs: the Deployments of IstiodNamespace whose pods
// are labelled app=istiod and have a container "discovery". IstiodName is the
// Deployment and the Service of the default (non-revisioned) istiod.
const (
	IstiodNamespace  = "istio-system"
	IstiodName       = "istiod"
	istiodApp        = "istiod"
	istiodContainer  = "discovery"
	istiodBinaryName = "pilot-discovery"
)

// pilot-discovery's listeners, by flag, with the port the Deployment's pod
// listens on when the flag is not among its arguments.
var istiodListeners = []struct {
	flag string
	port int
}{
	{"httpAddr", 8080},
	{"httpsAddr", 15017},
	{"grpcAddr", 15010},
	{"secureGRPCAddr", 15012},
	{"monitoringAddr", 15014},
}

// RunIstiod makes the cluster run the real istiod of every istiod Deployment
// installed in istio-system, side by side: the default one (istiod) and
// revisions (istiod-1-29-1). It plays the kubelet of the oldest running pod of
// each, and the kube-proxy of the Services that select those pods.
//
//   - The binary is the pilot-discovery of the Istio release in the image tag
//     of the container "discovery": _output/bin/pilot-discovery for the
//     pinned release (internal/upstream.Release), _output/bin/istio-R/
//     pilot-discovery for another release R (hack/build-istiod.sh builds
//     both, R being the previous release, 1.26.1). A release without a
//     binary is not run: the harness says so in the Deployment's log.
//   - The process runs as a pod of the Deployment: with the arguments and the
//     environment of the pod's container "discovery" (field references
//     resolved from the pod), with the volumes the container mounts written
//     under a root directory that is its working directory (istiod reads
//     ./var/run/secrets/..., as in its container, whose working directory is
//     /), and with the API credentials the pod mounts (a token of its
//     ServiceAccount), so the RBAC of the tree is what istiod gets.
//   - Its listeners bind the pod's IP, a loopback address of the cluster's
//     slot, on the ports of the container.
//   - Each port of every Service of istio-system whose selector selects a
//     running istiod pod (istiod, istiod-1-29-1, tag Services such as
//     istiod-revision-tag-default) is forwarded from the Service's ClusterIP
//     to that pod, as kube-proxy would: the API server calls webhooks through
//     the ClusterIP, and EndpointSlices refuse the loopback pod IPs. A
//     Service that selects the pods of several Deployments goes to the first
//     Deployment by name.
//   - istiod's HTTP requests to services of the cluster (JWKS of
//     RequestAuthentications) go through an HTTP proxy that serves what
//     ServeInCluster registers and refuses the rest, so nothing leaves the
//     machine, not even a DNS query.
//   - When a pod goes away (uninstall, a rollout) its process stops and its
//     forwards go, and a new pod gets a new process. Stop stops them all
//     with the cluster.
//
// The output of the istiod of Deployment D goes to D.log in the cluster's
// directory: istiod.log, istiod-1-29-1.log.
func (c *Cluster) RunIstiod() error {
	bin, err := BinDir()
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(bin, istiodBinaryName)); err != nil {
		return fmt.Errorf("istiod is not built (%s missing in %s): run hack/build-istiod.sh", istiodBinaryName, bin)
	}
	kc, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	if c.istiod != nil {
		return nil
	}
	proxy, err := newClusterProxy(c.slot.hostPort(istiodProxyPort))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &istiodRunner{c: c, bin: bin, kc: kc, proxy: proxy, cancel: cancel, done: make(chan struct{}),
		procs: map[string]*istiodProc{}, forwards: map[string]*forward{}, noted: map[string]string{}}
	c.istiod = r
	go r.loop(ctx)
	return nil
}

// StopIstiod stops every istiod process and starts none until the returned
// function is called, as when istiod's node fails: its pods stay Running, its
// Services answer nothing, and the API server's calls to its webhooks are
// refused.
func (c *Cluster) StopIstiod() (restart func()) {
	r := c.istiod
	set := func(down bool) {
		r.mu.Lock()
		r.down = down
		r.mu.Unlock()
		r.settle()
	}
	set(true)
	return func() { set(false) }
}

// ServeInCluster answers istiod's HTTP requests to hostPort (for example
// dex.auth.svc.cluster.local:5556) with h. Requests to hosts nobody serves
// get 502 Bad Gateway.
func (c *Cluster) ServeInCluster(hostPort string, h http.Handler) {
	if c.istiod != nil {
		c.istiod.proxy.serve(hostPort, h)
	}
}

// LogMark is where the log of each istiod stood at a moment; the zero
// LogMark is where they begin.
type LogMark struct {
	// sizes of the logs, by Deployment; a log not there was empty.
	sizes map[string]int
}

// IstiodLogMark returns where the log of every istiod stands now, for
// IstiodLogSince, IstiodLogOf and IstiodErrors. It first makes the istiods
// match the cluster, so that what an istiod whose pod is gone logs while it
// stops (after an uninstall, say) comes before the mark.
func (c *Cluster) IstiodLogMark() LogMark {
	if c.istiod != nil {
		c.istiod.settle()
	}
	m := LogMark{sizes: map[string]int{}}
	for _, d := range c.istiodDeployments() {
		if fi, err := os.Stat(c.istiodLog(d)); err == nil {
			m.sizes[d] = int(fi.Size())
		}
	}
	return m
}

// IstiodLogSince returns what every istiod logged after mark, the part of
// each log headed by "== DEPLOYMENT".
func (c *Cluster) IstiodLogSince(mark LogMark) string {
	var b strings.Builder
	for _, d := range c.istiodDeployments() {
		if s := c.IstiodLogOf(d, mark); s != "" {
			fmt.Fprintf(&b, "== %s\n%s", d, s)
		}
	}
	return b.String()
}

// IstiodLogOf returns what the istiod of Deployment deployment logged after
// mark.
func (c *Cluster) IstiodLogOf(deployment string, mark LogMark) string {
	b, _ := os.ReadFile(c.istiodLog(deployment))
	if n := mark.sizes[deployment]; n < len(b) {
		return string(b[n:])
	}
	return ""
}

// istiodLogLevel matches the level column of Istio's log lines.
var istiodLogLevel = regexp.MustCompile(`^\S+\t(error|fatal)\t`)

// IstiodErrors returns the lines every istiod logged at level error or fatal
// after mark (errorLines), each prefixed with its Deployment's name and ": ".
func (c *Cluster) IstiodErrors(mark LogMark) []string {
	var out []string
	for _, d := range c.istiodDeployments() {
		for _, l := range errorLines(c.IstiodLogOf(d, mark)) {
			out = append(out, d+": "+l)
		}
	}
	return out
}

// harnessColumn is the column of the harness's notes in an istiod's log,
// where istiod writes its level; stoppingNote and startingNote begin its
// notes that an istiod is stopped because its pod is gone, and that one
// starts.
const (
	harnessColumn = "\tharness\t"
	stoppingNote  = "kubelet: stopping "
	startingNote  = "kubelet: starting "
)

// errorLines returns the lines of an istiod's log at level error or fatal,
// but those logged between the harness's note that it stops that istiod
// (its pod is gone: an upgrade finished, a Deployment was deleted) and the
// next start: an istiod shutting down logs the requests its cancelled
// context cut short (its leader election's last renewal, say), as it would
// in a pod that the kubelet stops.
func errorLines(log string) []string {
	var out []string
	stopping := false
	for _, l := range strings.Split(log, "\n") {
		switch {
		case strings.Contains(l, harnessColumn+stoppingNote):
			stopping = true
		case strings.Contains(l, harnessColumn+startingNote):
			stopping = false
		case !stopping && istiodLogLevel.MatchString(l):
			out = append(out, l)
		}
	}
	return out
}

// istiodLog is the log file of the istiod of a Deployment.
func (c *Cluster) istiodLog(deployment string) string {
	return filepath.Join(c.Dir, deployment+".log")
}

// istiodDeployments are the Deployments that have an istiod log, by name.
func (c *Cluster) istiodDeployments() []string {
	if c.istiod == nil {
		return nil
	}
	c.istiod.logMu.Lock()
	defer c.istiod.logMu.Unlock()
	return slices.Sorted(maps.Keys(c.istiod.noted))
}

// IstiodAddress returns the address the plaintext xDS (grpcAddr) of the
// default istiod listens on, through its Service istiod, once it runs.
func (c *Cluster) IstiodAddress(ctx context.Context) (string, error) {
	return c.ServiceAddress(ctx, IstiodNamespace, IstiodName, "grpc-xds")
}

// ServiceAddress returns ClusterIP:port of the port called port of the
// Service ns/name: for example the plaintext xDS (grpc-xds) or the
// monitoring (http-monitoring) of the istiod that Service istiod-1-29-1
// selects.
func (c *Cluster) ServiceAddress(ctx context.Context, ns, name, port string) (string, error) {
	kc, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return "", err
	}
	svc, err := kc.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("get Service/%s/%s: %w", ns, name, err)
	}
	for _, p := range svc.Spec.Ports {
		if p.Name == port {
			return net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(p.Port))), nil
		}
	}
	return "", fmt.Errorf("Service/%s/%s has no port %s", ns, name, port)
}

// WaitIstiod waits until the default istiod (Deployment istiod) runs and
// answers its readiness probe.
func (c *Cluster) WaitIstiod(ctx context.Context) error {
	return c.WaitIstiodOf(ctx, IstiodName)
}

// WaitIstiodOf waits until the istiod of Deployment deployment of
// istio-system runs and answers its readiness probe.
func (c *Cluster) WaitIstiodOf(ctx context.Context, deployment string) error {
	if c.istiod == nil {
		return errors.New("the cluster does not run istiod: call RunIstiod")
	}
	for {
		if url := c.istiod.readyURL(deployment); url != "" {
			if resp, err := http.Get(url); err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("istiod of Deployment/%s/%s not ready: %w\n%s", IstiodNamespace, deployment, ctx.Err(), tail(c.istiodLog(deployment)))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// istiodProxyPort is where the HTTP proxy for istiod's requests listens, on
// the slot address.
const istiodProxyPort = 3128

type istiodRunner struct {
	c      *Cluster
	bin    string
	kc     kubernetes.Interface
	proxy  *clusterProxy
	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex
	// down stops every istiod and starts none (StopIstiod).
	down bool
	// procs are the running istiods, by Deployment.
	procs map[string]*istiodProc
	// forwards by ClusterIP:port.
	forwards map[string]*forward

	logMu sync.Mutex
	// noted is the last line the harness wrote into the log of each
	// Deployment that has one.
	noted map[string]string
}

// istiodProc is the process of one istiod pod.
type istiodProc struct {
	*process
	pod     *corev1.Pod
	httpURL string
}

func (r *istiodRunner) readyURL(deployment string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.procs[deployment]; p != nil {
		return p.httpURL + "/ready"
	}
	return ""
}

// stop stops the loop, the processes and the forwards.
func (r *istiodRunner) stop() error {
	r.cancel()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for d, p := range r.procs {
		errs = append(errs, p.stop())
		delete(r.procs, d)
	}
	for k, f := range r.forwards {
		f.close()
		delete(r.forwards, k)
	}
	r.proxy.close()
	return errors.Join(errs...)
}

func (r *istiodRunner) loop(ctx context.Context) {
	defer close(r.done)
	for {
		if err := r.sync(ctx); err != nil && ctx.Err() == nil {
			r.note(IstiodName, "kubelet: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// settle syncs now, rather than at the loop's next turn.
func (r *istiodRunner) settle() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.sync(ctx); err != nil {
		r.note(IstiodName, "kubelet: %v", err)
	}
}

// note writes a line of the harness into the log of the istiod of a
// Deployment, where a failing test shows it next to istiod's own lines; a
// line that repeats the last one is left out.
func (r *istiodRunner) note(deployment, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.logMu.Lock()
	defer r.logMu.Unlock()
	if last, ok := r.noted[deployment]; ok && last == msg {
		return
	}
	r.noted[deployment] = msg
	f, err := os.OpenFile(r.c.istiodLog(deployment), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	fmt.Fprintf(f, "%s%s%s\n", time.Now().UTC().Format(time.RFC3339Nano), harnessColumn, msg)
}

// sync makes the processes match the cluster: one for the oldest running
// pod of each istiod Deployment, none for a Deployment without one. One sync
// runs at a time.
func (r *istiodRunner) sync(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	pods, terminating, err := r.istiodPods(ctx)
	if err != nil {
		return err
	}
	if r.down {
		pods = nil
	}
	for d, p := range r.procs {
		exited := false
		select {
		case <-p.done:
			r.note(d, "kubelet: %s exited: %v; restarting it", istiodBinaryName, p.err)
			exited = true
		default:
		}
		pod := pods[d]
		gone := pod == nil || pod.UID != p.pod.UID
		if exited || gone {
			delete(r.procs, d)
		}
		if !gone {
			continue
		}
		if !exited {
			r.note(d, stoppingNote+"%s of Pod/%s/%s, whose pod is gone", istiodBinaryName, p.pod.Namespace, p.pod.Name)
			if err := p.stop(); err != nil {
				r.note(d, "kubelet: %v", err)
			}
		}
		if err := r.release(ctx, p.pod); err != nil {
			r.note(d, "kubelet: %v", err)
		}
	}
	// A pod being deleted whose process is gone is released, whatever
	// stopped its process.
	for _, pod := range terminating {
		if !slices.ContainsFunc(slices.Collect(maps.Values(r.procs)), func(p *istiodProc) bool { return p.pod.UID == pod.UID }) {
			if err := r.release(ctx, pod); err != nil {
				r.note(IstiodName, "kubelet: %v", err)
			}
		}
	}
	for d, pod := range pods {
		if r.procs[d] != nil {
			continue
		}
		if err := r.start(ctx, d, pod); err != nil {
			r.note(d, "kubelet: run Pod/%s/%s: %v", pod.Namespace, pod.Name, err)
		}
	}
	return r.syncForwards(ctx)
}

// istiodPods returns the oldest running pod of each istiod Deployment, by
// Deployment name, and the istiod pods being deleted that carry
// kubeletFinalizer.
func (r *istiodRunner) istiodPods(ctx context.Context) (map[string]*corev1.Pod, []*corev1.Pod, error) {
	ds, err := r.kc.AppsV1().Deployments(IstiodNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("list Deployments of %s: %w", IstiodNamespace, err)
	}
	pods, err := r.kc.CoreV1().Pods(IstiodNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + istiodApp})
	if err != nil {
		return nil, nil, fmt.Errorf("list Pods of %s: %w", IstiodNamespace, err)
	}
	var terminating []*corev1.Pod
	for i := range pods.Items {
		if p := &pods.Items[i]; p.DeletionTimestamp != nil && slices.Contains(p.Finalizers, kubeletFinalizer) {
			terminating = append(terminating, p)
		}
	}
	out := map[string]*corev1.Pod{}
	for _, d := range ds.Items {
		tpl := &d.Spec.Template
		if tpl.Labels["app"] != istiodApp || object.Container(&tpl.Spec, istiodContainer) == nil {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil {
			return nil, nil, fmt.Errorf("Deployment/%s/%s: %w", d.Namespace, d.Name, err)
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || !sel.Matches(labels.Set(p.Labels)) {
				continue
			}
			if o := out[d.Name]; o == nil || older(p, o) {
				out[d.Name] = p
			}
		}
	}
	return out, terminating, nil
}

// older reports whether a was created before b, or at the same time with a
// name that sorts first.
func older(a, b *corev1.Pod) bool {
	if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
		return c < 0
	}
	return a.Name < b.Name
}

// start runs the istiod of Deployment deployment as pod.
func (r *istiodRunner) start(ctx context.Context, deployment string, pod *corev1.Pod) error {
	ctr := object.Container(&pod.Spec, istiodContainer)
	if ctr == nil {
		return fmt.Errorf("no container %s", istiodContainer)
	}
	release, bin, err := istiodBinary(r.bin, ctr.Image)
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(pod.UID))
	root := filepath.Join(r.c.Dir, "istiod", hex.EncodeToString(sum[:4]))
	if err := os.RemoveAll(root); err != nil {
		return err
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	if err := r.mountVolumes(ctx, pod, ctr, root); err != nil {
		return err
	}
	kubeconfig, err := serviceAccountKubeconfig(root, r.c.Config.Host, pod.Namespace)
	if err != nil {
		return err
	}
	env, err := ContainerEnv(ctx, r.kc, pod, ctr)
	if err != nil {
		return err
	}
	args, httpAddr := listenerArgs(ctr.Args, pod.Status.PodIP)
	args = append(args, "--kubeconfig="+kubeconfig, "--ctrlz_address="+pod.Status.PodIP)
	p := &process{name: istiodBinaryName, bin: bin, args: args, log: r.c.istiodLog(deployment), dir: root,
		env: append(env, "HTTP_PROXY=http://"+r.proxy.addr, "HOME="+root)}
	r.note(deployment, startingNote+"%s of Istio %s (%s) as Pod/%s/%s on %s", istiodBinaryName, release, bin, pod.Namespace, pod.Name, pod.Status.PodIP)
	if err := p.start(r.c.Dir); err != nil {
		return err
	}
	if err := r.hold(ctx, pod); err != nil {
		return errors.Join(err, p.stop())
	}
	r.procs[deployment] = &istiodProc{process: p, pod: pod, httpURL: "http://" + httpAddr}
	return nil
}

// kubeletFinalizer keeps the pod of a running istiod process until the
// process has stopped, as a kubelet keeps a pod until its containers have:
// istiod's token, bound to its pod, stays valid while it shuts down (and
// releases its leader leases).
const kubeletFinalizer = "kfistio.kubeflow.org/test-kubelet"

// hold adds kubeletFinalizer to pod.
func (r *istiodRunner) hold(ctx context.Context, pod *corev1.Pod) error {
	patch := fmt.Sprintf(`{"metadata":{"finalizers":[%q]}}`, kubeletFinalizer)
	if _, err := r.kc.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("hold Pod/%s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// release removes kubeletFinalizer from pod, once its process has stopped.
func (r *istiodRunner) release(ctx context.Context, pod *corev1.Pod) error {
	cur, err := r.kc.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || (err == nil && cur.UID != pod.UID) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("release Pod/%s/%s: %w", pod.Namespace, pod.Name, err)
	}
	i := slices.Index(cur.Finalizers, kubeletFinalizer)
	if i < 0 {
		return nil
	}
	patch := fmt.Sprintf(`[{"op":"test","path":"/metadata/finalizers/%d","value":%q},{"op":"remove","path":"/metadata/finalizers/%d"}]`, i, kubeletFinalizer, i)
	if _, err := r.kc.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.JSONPatchType, []byte(patch), metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("release Pod/%s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// istiodBinary returns the Istio release of an istiod image, its tag
// (without the -distroless of that variant), and the directory under bin of
// the pilot-discovery of that release: bin for the pinned release,
// bin/istio-RELEASE for another.
func istiodBinary(bin, image string) (release, dir string, err error) {
	ref, _, _ := strings.Cut(image, "@")
	_, tag := object.SplitImage(ref)
	if tag == "" {
		return "", "", fmt.Errorf("image %s has no tag, so no Istio release", image)
	}
	release = strings.TrimSuffix(tag, "-distroless")
	dir = bin
	if release != upstream.Release {
		dir = filepath.Join(bin, "istio-"+release)
	}
	if _, err := os.Stat(filepath.Join(dir, istiodBinaryName)); err != nil {
		return "", "", fmt.Errorf("no %s of Istio %s (image %s) in %s: hack/build-istiod.sh builds those of %s and of the previous release", istiodBinaryName, release, image, dir, upstream.Release)
	}
	return release, dir, nil
}

// listenerArgs returns the container's arguments followed by flags that bind
// each of pilot-discovery's listeners to the pod's IP (on the port the
// container asked for, or pilot-discovery's default), and the address of its
// HTTP listener. A container's wildcard listeners live in the pod's network
// namespace; here, that is the pod's IP.
func listenerArgs(args []string, podIP string) ([]string, string) {
	out := append([]string{}, args...)
	var httpAddr string
	for _, l := range istiodListeners {
		port := strconv.Itoa(l.port)
		for i, a := range args {
			v, ok := strings.CutPrefix(a, "--"+l.flag+"=")
			if !ok && a == "--"+l.flag && i+1 < len(args) {
				v, ok = args[i+1], true
			}
			if ok {
				if _, p, err := net.SplitHostPort(v); err == nil {
					port = p
				}
			}
		}
		addr := net.JoinHostPort(podIP, port)
		out = append(out, "--"+l.flag+"="+addr)
		if l.flag == "httpAddr" {
			httpAddr = addr
		}
	}
	return out, httpAddr
}

// ProxyMeta is the xDS node metadata of pod's proxy: the pod's name, labels
// and annotations and the ISTIO_META_ variables of its container
// istio-proxy, as pilot-agent builds it.
func ProxyMeta(ctx context.Context, kc kubernetes.Interface, pod *corev1.Pod) (*structpb.Struct, error) {
	meta := map[string]any{
		"NAME": pod.Name, "NAMESPACE": pod.Namespace, "SERVICE_ACCOUNT": pod.Spec.ServiceAccountName,
		"ISTIO_VERSION": upstream.Release, "LABELS": anyMap(pod.Labels), "ANNOTATIONS": anyMap(pod.Annotations),
	}
	for _, ctr := range slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers) {
		if ctr.Name != "istio-proxy" {
			continue
		}
		env, err := ContainerEnv(ctx, kc, pod, &ctr)
		if err != nil {
			return nil, err
		}
		for _, e := range env {
			if k, v, _ := strings.Cut(e, "="); strings.HasPrefix(k, "ISTIO_META_") {
				meta[strings.TrimPrefix(k, "ISTIO_META_")] = v
			}
		}
	}
	return structpb.NewStruct(meta)
}

func anyMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// ContainerEnv resolves the env of a container of pod as the kubelet would,
// from the pod, ConfigMaps and Secrets, as NAME=value. A CPU limit the
// container does not set is the node's allocatable CPU: here, this
// machine's; a memory limit it does not set, the node's allocatable memory:
// here, the fake nodes'.
func ContainerEnv(ctx context.Context, kc kubernetes.Interface, pod *corev1.Pod, ctr *corev1.Container) ([]string, error) {
	var env []string
	for _, e := range ctr.Env {
		v := e.Value
		if from := e.ValueFrom; from != nil {
			var err error
			switch {
			case from.FieldRef != nil:
				v, err = podField(pod, from.FieldRef.FieldPath)
			case from.ResourceFieldRef != nil:
				v, err = resourceField(ctr, from.ResourceFieldRef)
			case from.ConfigMapKeyRef != nil:
				var data map[string][]byte
				data, err = sourceData(ctx, kc, pod.Namespace, from.ConfigMapKeyRef.Name, false, from.ConfigMapKeyRef.Optional)
				v = string(data[from.ConfigMapKeyRef.Key])
			case from.SecretKeyRef != nil:
				var data map[string][]byte
				data, err = sourceData(ctx, kc, pod.Namespace, from.SecretKeyRef.Name, true, from.SecretKeyRef.Optional)
				v = string(data[from.SecretKeyRef.Key])
			}
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
		}
		env = append(env, e.Name+"="+v)
	}
	return env, nil
}

func podField(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "status.podIP":
		return pod.Status.PodIP, nil
	case "status.hostIP":
		return pod.Status.HostIP, nil
	}
	if k, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return pod.Labels[strings.TrimSuffix(k, "']")], nil
	}
	if k, ok := strings.CutPrefix(path, "metadata.annotations['"); ok {
		return pod.Annotations[strings.TrimSuffix(k, "']")], nil
	}
	return "", fmt.Errorf("field %s is not supported", path)
}

func resourceField(ctr *corev1.Container, ref *corev1.ResourceFieldSelector) (string, error) {
	name, limit := strings.CutPrefix(ref.Resource, "limits.")
	if !limit {
		name, _ = strings.CutPrefix(ref.Resource, "requests.")
	}
	list := ctr.Resources.Requests
	if limit {
		list = ctr.Resources.Limits
	}
	q, set := list[corev1.ResourceName(name)]
	if !set && limit && name == "memory" {
		q, set = nodeMemory, true
	}
	switch {
	case set && name == "cpu":
		div := ref.Divisor
		if div.IsZero() {
			return strconv.FormatInt(q.Value(), 10), nil
		}
		return strconv.FormatInt((q.MilliValue()+div.MilliValue()-1)/div.MilliValue(), 10), nil
	case set:
		return strconv.FormatInt(q.Value(), 10), nil
	case name == "cpu":
		return strconv.Itoa(runtime.NumCPU()), nil
	}
	return "", fmt.Errorf("resource %s without a value is not supported", ref.Resource)
}

// sourceData returns the data of the ConfigMap (or, with secret, the Secret)
// name in ns; nil when it does not exist and optional is set.
func sourceData(ctx context.Context, kc kubernetes.Interface, ns, name string, secret bool, optional *bool) (map[string][]byte, error) {
	data := map[string][]byte{}
	var err error
	if secret {
		var s *corev1.Secret
		if s, err = kc.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			data = s.Data
		}
	} else {
		var cm *corev1.ConfigMap
		if cm, err = kc.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			for k, v := range cm.Data {
				data[k] = []byte(v)
			}
			for k, v := range cm.BinaryData {
				data[k] = v
			}
		}
	}
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return nil, nil
	}
	return data, err
}

// mountVolumes writes what each volume the container mounts holds under
// root, at its mount path.
func (r *istiodRunner) mountVolumes(ctx context.Context, pod *corev1.Pod, ctr *corev1.Container, root string) error {
	for _, m := range ctr.VolumeMounts {
		i := slices.IndexFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 {
			return fmt.Errorf("volume %s is not in the pod", m.Name)
		}
		dir := filepath.Join(root, m.MountPath)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		files, err := r.volumeFiles(ctx, pod, &pod.Spec.Volumes[i])
		if err != nil {
			return fmt.Errorf("volume %s: %w", m.Name, err)
		}
		for name, data := range files {
			p := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				return err
			}
			if err := os.WriteFile(p, data, 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

// volumeFiles returns the files of a volume, by path inside it.
func (r *istiodRunner) volumeFiles(ctx context.Context, pod *corev1.Pod, v *corev1.Volume) (map[string][]byte, error) {
	files := map[string][]byte{}
	switch {
	case v.EmptyDir != nil:
	case v.ConfigMap != nil:
		return files, r.addSource(ctx, pod.Namespace, v.ConfigMap.Name, false, v.ConfigMap.Items, v.ConfigMap.Optional, files)
	case v.Secret != nil:
		return files, r.addSource(ctx, pod.Namespace, v.Secret.SecretName, true, v.Secret.Items, v.Secret.Optional, files)
	case v.DownwardAPI != nil:
		return files, downwardFiles(pod, v.DownwardAPI.Items, files)
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			var err error
			switch {
			case s.ServiceAccountToken != nil:
				var tok string
				tok, err = r.token(ctx, pod, s.ServiceAccountToken.Audience, s.ServiceAccountToken.ExpirationSeconds)
				files[s.ServiceAccountToken.Path] = []byte(tok)
			case s.ConfigMap != nil:
				err = r.addSource(ctx, pod.Namespace, s.ConfigMap.Name, false, s.ConfigMap.Items, s.ConfigMap.Optional, files)
			case s.Secret != nil:
				err = r.addSource(ctx, pod.Namespace, s.Secret.Name, true, s.Secret.Items, s.Secret.Optional, files)
			case s.DownwardAPI != nil:
				err = downwardFiles(pod, s.DownwardAPI.Items, files)
			default:
				err = errors.New("projected source not supported")
			}
			if err != nil {
				return nil, err
			}
		}
	default:
		return nil, errors.New("volume type not supported")
	}
	return files, nil
}

// addSource adds the files of a ConfigMap or Secret volume source.
func (r *istiodRunner) addSource(ctx context.Context, ns, name string, secret bool, items []corev1.KeyToPath, optional *bool, files map[string][]byte) error {
	data, err := sourceData(ctx, r.kc, ns, name, secret, optional)
	addKeys(data, items, files)
	return err
}

// downwardFiles adds the files of downward API items.
func downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, files map[string][]byte) error {
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = podField(pod, it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			i := slices.IndexFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == it.ResourceFieldRef.ContainerName })
			if i < 0 {
				return fmt.Errorf("%s: no container %s", it.Path, it.ResourceFieldRef.ContainerName)
			}
			v, err = resourceField(&pod.Spec.Containers[i], it.ResourceFieldRef)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", it.Path, err)
		}
		files[it.Path] = []byte(v)
	}
	return nil
}

// addKeys adds the keys of data as files: all of them, or the items listed.
func addKeys(data map[string][]byte, items []corev1.KeyToPath, files map[string][]byte) {
	if len(items) == 0 {
		for k, v := range data {
			files[k] = v
		}
		return
	}
	for _, it := range items {
		if v, ok := data[it.Key]; ok {
			files[it.Path] = v
		}
	}
}

// token requests a token of the pod's ServiceAccount bound to the pod, as
// the kubelet does for projected tokens; an empty audience is the API
// server's.
func (r *istiodRunner) token(ctx context.Context, pod *corev1.Pod, audience string, seconds *int64) (string, error) {
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: seconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if audience != "" {
		req.Spec.Audiences = []string{audience}
	}
	tr, err := r.kc.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token of ServiceAccount/%s/%s: %w", pod.Namespace, pod.Spec.ServiceAccountName, err)
	}
	return tr.Status.Token, nil
}

// serviceAccountKubeconfig writes a kubeconfig that uses the service account
// token and CA the pod mounts at /var/run/secrets/kubernetes.io/serviceaccount
// (its kube-api-access volume), since client-go's in-cluster configuration
// reads them only at their absolute paths.
func serviceAccountKubeconfig(root, server, namespace string) (string, error) {
	dir := filepath.Join(root, "var/run/secrets/kubernetes.io/serviceaccount")
	for _, f := range []string{"token", "ca.crt"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return "", fmt.Errorf("the pod mounts no service account token: %w", err)
		}
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["cluster"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: filepath.Join(dir, "ca.crt")}
	cfg.AuthInfos["serviceaccount"] = &clientcmdapi.AuthInfo{TokenFile: filepath.Join(dir, "token")}
	cfg.Contexts["cluster"] = &clientcmdapi.Context{Cluster: "cluster", AuthInfo: "serviceaccount", Namespace: namespace}
	cfg.CurrentContext = "cluster"
	path := filepath.Join(root, "kubeconfig")
	return path, clientcmd.WriteToFile(*cfg, path)
}

// syncForwards forwards each port of every Service of IstiodNamespace that
// selects the pod of a running istiod from the Service's ClusterIP to that
// pod; a Service that selects several goes to the first Deployment by name.
func (r *istiodRunner) syncForwards(ctx context.Context) error {
	want := map[string]string{}
	if len(r.procs) > 0 {
		svcs, err := r.kc.CoreV1().Services(IstiodNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("list Services of %s: %w", IstiodNamespace, err)
		}
		deployments := slices.Sorted(maps.Keys(r.procs))
		for _, svc := range svcs.Items {
			if len(svc.Spec.Selector) == 0 || svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
				continue
			}
			sel := labels.SelectorFromSet(svc.Spec.Selector)
			i := slices.IndexFunc(deployments, func(d string) bool { return sel.Matches(labels.Set(r.procs[d].pod.Labels)) })
			if i < 0 {
				continue
			}
			podIP := r.procs[deployments[i]].pod.Status.PodIP
			for _, p := range svc.Spec.Ports {
				target := p.TargetPort.IntValue()
				if target == 0 {
					target = int(p.Port)
				}
				want[net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(p.Port)))] = net.JoinHostPort(podIP, strconv.Itoa(target))
			}
		}
	}
	for from, f := range r.forwards {
		if want[from] != f.to {
			f.close()
			delete(r.forwards, from)
		}
	}
	var errs []error
	for from, to := range want {
		if _, ok := r.forwards[from]; ok {
			continue
		}
		f, err := newForward(from, to)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r.forwards[from] = f
	}
	return errors.Join(errs...)
}

// clusterProxy is the HTTP proxy istiod's requests to cluster services go
// through.
type clusterProxy struct {
	addr string
	srv  *http.Server
	mu   sync.Mutex
	// hosts serve requests by host:port.
	hosts map[string]http.Handler
}

func newClusterProxy(addr string) (*clusterProxy, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p := &clusterProxy{addr: addr, hosts: map[string]http.Handler{}}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(l) }()
	return p, nil
}

func (p *clusterProxy) serve(hostPort string, h http.Handler) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hosts[hostPort] = h
}

func (p *clusterProxy) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	host := req.URL.Host
	if req.URL.Port() == "" {
		host = net.JoinHostPort(req.URL.Hostname(), "80")
	}
	p.mu.Lock()
	h := p.hosts[host]
	p.mu.Unlock()
	if h == nil {
		http.Error(w, "no service of the test cluster answers "+host, http.StatusBadGateway)
		return
	}
	h.ServeHTTP(w, req)
}

func (p *clusterProxy) close() { _ = p.srv.Close() }

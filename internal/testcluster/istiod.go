package testcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
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

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// The istiod the cluster runs.
const (
	IstiodNamespace  = "istio-system"
	IstiodName       = "istiod"
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

// RunIstiod makes the cluster run the real istiod, the pilot-discovery
// binary of the pinned Istio release, for the Deployment istio-system/istiod
// whenever one is installed: it plays the kubelet of that one pod and the
// kube-proxy of its Service.
//
//   - The process runs as a pod of the Deployment: with the arguments and the
//     environment of the pod's container "discovery" (field references
//     resolved from the pod), with the volumes the container mounts written
//     under a root directory that is its working directory (istiod reads
//     ./var/run/secrets/..., as in its container, whose working directory is
//     /), and with the API credentials the pod mounts (a token of its
//     ServiceAccount), so the RBAC of the tree is what istiod gets.
//   - Its listeners bind the pod's IP, a loopback address of the cluster's
//     slot, on the ports of the container.
//   - Each port of the Service istio-system/istiod is forwarded from the
//     Service's ClusterIP to the pod, as kube-proxy would: the API server
//     calls webhooks through the ClusterIP, and EndpointSlices refuse the
//     loopback pod IPs.
//   - istiod's HTTP requests to services of the cluster (JWKS of
//     RequestAuthentications) go through an HTTP proxy that serves what
//     ServeInCluster registers and refuses the rest, so nothing leaves the
//     machine, not even a DNS query.
//   - When the pod goes away (uninstall, a rollout) the process stops, and a
//     new pod gets a new process. Stop stops it with the cluster.
//
// istiod's output goes to istiod.log in the cluster's directory.
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
		forwards: map[string]*forward{}, log: filepath.Join(c.Dir, "istiod.log")}
	c.istiod = r
	go r.loop(ctx)
	return nil
}

// ServeInCluster answers istiod's HTTP requests to hostPort (for example
// dex.auth.svc.cluster.local:5556) with h. Requests to hosts nobody serves
// get 502 Bad Gateway.
func (c *Cluster) ServeInCluster(hostPort string, h http.Handler) {
	if c.istiod != nil {
		c.istiod.proxy.serve(hostPort, h)
	}
}

// IstiodLogMark returns where istiod's log stands now, for IstiodLogSince
// and IstiodErrors.
func (c *Cluster) IstiodLogMark() int {
	fi, err := os.Stat(filepath.Join(c.Dir, "istiod.log"))
	if err != nil {
		return 0
	}
	return int(fi.Size())
}

// IstiodLogSince returns what istiod logged after mark.
func (c *Cluster) IstiodLogSince(mark int) string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "istiod.log"))
	if mark > len(b) {
		return ""
	}
	return string(b[mark:])
}

// istiodLogLevel matches the level column of Istio's log lines.
var istiodLogLevel = regexp.MustCompile(`^\S+\t(error|fatal)\t`)

// IstiodErrors returns the lines istiod logged at level error or fatal after
// mark.
func (c *Cluster) IstiodErrors(mark int) []string {
	var out []string
	for _, l := range strings.Split(c.IstiodLogSince(mark), "\n") {
		if istiodLogLevel.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

// IstiodAddress returns the address istiod's plaintext xDS (grpcAddr) listens
// on, through its Service, once it runs.
func (c *Cluster) IstiodAddress(ctx context.Context) (string, error) {
	return c.serviceAddress(ctx, IstiodNamespace, IstiodName, "grpc-xds")
}

// WaitIstiod waits until istiod runs and answers its readiness probe.
func (c *Cluster) WaitIstiod(ctx context.Context) error {
	if c.istiod == nil {
		return errors.New("the cluster does not run istiod: call RunIstiod")
	}
	for {
		if url := c.istiod.readyURL(); url != "" {
			if resp, err := http.Get(url); err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("istiod not ready: %w\n%s", ctx.Err(), tail(c.istiod.log))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// serviceAddress is ClusterIP:port of the named port of a Service.
func (c *Cluster) serviceAddress(ctx context.Context, ns, name, port string) (string, error) {
	kc, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return "", err
	}
	svc, err := kc.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	for _, p := range svc.Spec.Ports {
		if p.Name == port {
			return net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(p.Port))), nil
		}
	}
	return "", fmt.Errorf("Service/%s/%s has no port %s", ns, name, port)
}

// istiodProxyPort is where the HTTP proxy for istiod's requests listens, on
// the slot address.
const istiodProxyPort = 3128

type istiodRunner struct {
	c      *Cluster
	bin    string
	kc     kubernetes.Interface
	proxy  *clusterProxy
	log    string
	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex
	// The process and the pod it runs as (name and UID), and its pod IP.
	proc    *process
	podUID  string
	podIP   string
	httpURL string
	// forwards by ClusterIP:port.
	forwards map[string]*forward
}

func (r *istiodRunner) readyURL() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return ""
	}
	return r.httpURL + "/ready"
}

// stop stops the loop, the process and the forwards.
func (r *istiodRunner) stop() error {
	r.cancel()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.stopProcess()
	for k, f := range r.forwards {
		f.close()
		delete(r.forwards, k)
	}
	r.proxy.close()
	return err
}

func (r *istiodRunner) loop(ctx context.Context) {
	defer close(r.done)
	for {
		if err := r.sync(ctx); err != nil && ctx.Err() == nil {
			r.note("kubelet: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// note writes a line of the harness into istiod's log, where a failing test
// shows it next to istiod's own lines.
func (r *istiodRunner) note(format string, args ...any) {
	f, err := os.OpenFile(r.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	fmt.Fprintf(f, "%s\tharness\t%s\n", time.Now().UTC().Format(time.RFC3339Nano), fmt.Sprintf(format, args...))
}

// sync makes the process match the cluster: one process for the oldest
// running pod of the Deployment, none without one.
func (r *istiodRunner) sync(ctx context.Context) error {
	pod, err := r.istiodPod(ctx)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		select {
		case <-r.proc.done:
			r.note("kubelet: %s exited: %v; restarting it", istiodBinaryName, r.proc.err)
			r.proc = nil
		default:
		}
	}
	if r.proc != nil && (pod == nil || string(pod.UID) != r.podUID) {
		if err := r.stopProcess(); err != nil {
			return err
		}
	}
	if pod != nil && r.proc == nil {
		if err := r.startProcess(ctx, pod); err != nil {
			return fmt.Errorf("run Pod/%s/%s: %w", pod.Namespace, pod.Name, err)
		}
	}
	return r.syncForwards(ctx)
}

// istiodPod returns the oldest running pod of the Deployment, or nil.
func (r *istiodRunner) istiodPod(ctx context.Context) (*corev1.Pod, error) {
	d, err := r.kc.AppsV1().Deployments(IstiodNamespace).Get(ctx, IstiodName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return nil, err
	}
	pods, err := r.kc.CoreV1().Pods(IstiodNamespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, err
	}
	var running []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			running = append(running, p)
		}
	}
	if len(running) == 0 {
		return nil, nil
	}
	slices.SortFunc(running, func(a, b corev1.Pod) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return &running[0], nil
}

func (r *istiodRunner) stopProcess() error {
	if r.proc == nil {
		return nil
	}
	p := r.proc
	r.proc, r.podUID, r.podIP, r.httpURL = nil, "", "", ""
	return p.stop()
}

// startProcess runs pilot-discovery as pod.
func (r *istiodRunner) startProcess(ctx context.Context, pod *corev1.Pod) error {
	var ctr *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == istiodContainer {
			ctr = &pod.Spec.Containers[i]
		}
	}
	if ctr == nil {
		return fmt.Errorf("no container %s", istiodContainer)
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
	p := &process{name: istiodBinaryName, bin: r.bin, args: args, log: r.log, dir: root,
		env: append(env, "HTTP_PROXY=http://"+r.proxy.addr, "HOME="+root)}
	r.note("kubelet: starting %s as Pod/%s/%s on %s", istiodBinaryName, pod.Namespace, pod.Name, pod.Status.PodIP)
	if err := p.start(r.c.Dir); err != nil {
		return err
	}
	r.proc, r.podUID, r.podIP, r.httpURL = p, string(pod.UID), pod.Status.PodIP, "http://"+httpAddr
	return nil
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

// ContainerEnv resolves the env of a container of pod as the kubelet would,
// from the pod, ConfigMaps and Secrets, as NAME=value. A CPU limit the
// container does not set is the node's allocatable CPU: here, this
// machine's.
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

// syncForwards forwards each port of istiod's Service from its ClusterIP to
// the pod.
func (r *istiodRunner) syncForwards(ctx context.Context) error {
	want := map[string]string{}
	if r.proc != nil {
		svc, err := r.kc.CoreV1().Services(IstiodNamespace).Get(ctx, IstiodName, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		if err == nil && svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
			for _, p := range svc.Spec.Ports {
				target := p.TargetPort.IntValue()
				if target == 0 {
					target = int(p.Port)
				}
				want[net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(p.Port)))] = net.JoinHostPort(r.podIP, strconv.Itoa(target))
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

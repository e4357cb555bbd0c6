// Package testcluster starts a real, local Kubernetes control plane for tests:
// etcd, kube-apiserver, kube-controller-manager and kube-scheduler, with kwok
// acting as the kubelet of fake nodes, so that Deployments become Available
// and DaemonSets roll out. Everything listens on loopback addresses of the
// cluster's slot (slot.go); Service IPs and pod IPs are loopback addresses
// too, so nothing ever dials out.
//
// With RunIstiod the cluster also runs the real istiod of each istiod
// Deployment installed in istio-system, side by side (the default one and
// revisions), each with the pilot-discovery of the Istio release its image
// names, and forwards the Services that select them (istiod.go).
//
// The binaries come from hack/build-controlplane.sh and
// hack/build-istiod.sh (in _output/bin).
package testcluster

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// The programs of a cluster, in start order.
var binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}

// KwokNodeAnnotation marks the nodes kwok plays the kubelet of.
const KwokNodeAnnotation = "kwok.x-k8s.io/node"

// BinDir finds the control-plane binaries: $KFISTIO_BIN_DIR, or _output/bin
// of the repository that holds the working directory.
func BinDir() (string, error) {
	dir := os.Getenv("KFISTIO_BIN_DIR")
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, "_output", "bin")
	}
	var missing []string
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			missing = append(missing, b)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "..", "kwok-stages")); err != nil {
		missing = append(missing, "kwok-stages")
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("the local control plane is not built (%s missing in %s): run hack/build-controlplane.sh", strings.Join(missing, ", "), dir)
	}
	return dir, nil
}

// repoRoot is the root of the repository that holds the working directory:
// the first directory above it with go.mod and tools/controlplane.
func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(d, "tools", "controlplane")); err == nil {
				return d, nil
			}
		}
		if filepath.Dir(d) == d {
			return "", errors.New("cannot find the repository root (with tools/controlplane) above " + wd)
		}
	}
}

// Cluster is a running control plane.
type Cluster struct {
	// Dir holds certificates, data, logs and the kubeconfig.
	Dir string
	// Kubeconfig is an admin (system:masters) kubeconfig file.
	Kubeconfig string
	// Config is the same as a rest.Config.
	Config *rest.Config
	procs  []*process
	slot   *slot
	istiod *istiodRunner
}

type process struct {
	name, bin string
	args      []string
	// env, when set, is the whole environment; dir, when set, the working
	// directory.
	env []string
	dir string
	cmd *exec.Cmd
	log string
	// done is closed when the process has exited, with its error in err.
	done chan struct{}
	err  error
}

// Start starts a cluster whose files live in dir (a test's TempDir).
func Start(ctx context.Context, dir string) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	s, err := claimSlot()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, Kubeconfig: filepath.Join(dir, "admin.kubeconfig"), slot: s}
	if err := c.start(ctx, bin); err != nil {
		_ = c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context, bin string) error {
	p, err := newPKI(c.Dir)
	if err != nil {
		return err
	}
	s := c.slot
	local := []net.IP{net.ParseIP(s.host()), net.ParseIP(s.kubernetesServiceIP())}
	dns := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	if err := p.issue(c.Dir, "apiserver", pkix.Name{CommonName: "kube-apiserver"}, local, dns, x509.ExtKeyUsageServerAuth); err != nil {
		return err
	}
	if err := p.issue(c.Dir, "admin", pkix.Name{CommonName: "kfistio-test-admin", Organization: []string{"system:masters"}}, nil, nil, x509.ExtKeyUsageClientAuth); err != nil {
		return err
	}
	if err := serviceAccountKey(c.Dir); err != nil {
		return err
	}
	f := func(name string) string { return filepath.Join(c.Dir, name) }
	if err := c.writeKubeconfig(); err != nil {
		return err
	}
	etcdURL := "http://" + s.hostPort(etcdClientPort)
	peerURL := "http://" + s.hostPort(etcdPeerPort)
	if err := c.run(bin, "etcd",
		"--name=default", "--data-dir="+f("etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL, "--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return err
	}
	if err := c.run(bin, "kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address="+s.host(), "--advertise-address="+s.host(), fmt.Sprintf("--secure-port=%d", apiServerPort),
		"--endpoint-reconciler-type=none", "--service-cluster-ip-range="+s.serviceCIDR(),
		"--client-ca-file="+f("ca.crt"), "--tls-cert-file="+f("apiserver.crt"), "--tls-private-key-file="+f("apiserver.key"),
		"--cert-dir="+f("apiserver-certs"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+f("sa.pub"), "--service-account-signing-key-file="+f("sa.key"),
		"--authorization-mode=RBAC", "--allow-privileged=true", "--profiling=false"); err != nil {
		return err
	}
	if err := c.waitReady(ctx); err != nil {
		return err
	}
	if err := c.run(bin, "kube-controller-manager",
		"--kubeconfig="+c.Kubeconfig, "--leader-elect=false", "--use-service-account-credentials=false",
		"--service-account-private-key-file="+f("sa.key"), "--root-ca-file="+f("ca.crt"),
		"--bind-address="+s.host(), "--secure-port=0", "--profiling=false"); err != nil {
		return err
	}
	if err := c.run(bin, "kube-scheduler",
		"--kubeconfig="+c.Kubeconfig, "--leader-elect=false",
		"--bind-address="+s.host(), "--secure-port=0", "--profiling=false"); err != nil {
		return err
	}
	stages, err := stageConfig(bin, c.Dir)
	if err != nil {
		return err
	}
	return c.run(bin, "kwok",
		"--kubeconfig="+c.Kubeconfig, "--config="+stages,
		"--manage-all-nodes=false", "--manage-nodes-with-annotation-selector="+KwokNodeAnnotation+"=fake",
		"--cidr="+s.podCIDR(), "--node-ip="+s.host(), "--server-address="+s.hostPort(kwokPort),
		// Nodes renew leases, as kubelets do; without them the node lifecycle
		// controller marks the nodes, and their pods, not ready after 40s.
		"--node-lease-duration-seconds=40")
}

// stageConfig joins kwok's lifecycle stages into one config file.
func stageConfig(bin, dir string) (string, error) {
	files, err := filepath.Glob(filepath.Join(bin, "..", "kwok-stages", "*.yaml"))
	if err != nil || len(files) == 0 {
		return "", fmt.Errorf("no kwok stages in %s: run hack/build-controlplane.sh", filepath.Join(bin, "..", "kwok-stages"))
	}
	var b bytes.Buffer
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		b.WriteString("---\n")
		b.Write(data)
		b.WriteString("\n")
	}
	path := filepath.Join(dir, "kwok.yaml")
	return path, os.WriteFile(path, b.Bytes(), 0o600)
}

func (c *Cluster) writeKubeconfig() error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{
		Server:               "https://" + c.slot.hostPort(apiServerPort),
		CertificateAuthority: filepath.Join(c.Dir, "ca.crt"),
	}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificate: filepath.Join(c.Dir, "admin.crt"),
		ClientKey:         filepath.Join(c.Dir, "admin.key"),
	}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	cfg.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*cfg, c.Kubeconfig); err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return err
	}
	c.Config = rc
	return nil
}

func (c *Cluster) run(bin, name string, args ...string) error {
	p := &process{name: name, bin: bin, args: args, log: filepath.Join(c.Dir, name+".log")}
	if err := p.start(c.Dir); err != nil {
		return err
	}
	c.procs = append(c.procs, p)
	return nil
}

func (p *process) start(dir string) error {
	out, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(p.bin, p.name), p.args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Dir, cmd.Env = dir, p.env
	if p.dir != "" {
		cmd.Dir = p.dir
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func() { p.err = cmd.Wait(); _ = out.Close(); close(p.done) }()
	return nil
}

// waitReady waits until the API server's /readyz answers ok.
func (c *Cluster) waitReady(ctx context.Context) error {
	kc, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		for _, p := range c.procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited: %w\n%s", p.name, p.err, tail(p.log))
			default:
			}
		}
		body, err := kc.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && string(body) == "ok" {
			return nil
		}
		if last = err; last == nil {
			last = fmt.Errorf("/readyz answered %q", body)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver not ready after 60s: %w\n%s", last, tail(filepath.Join(c.Dir, "kube-apiserver.log")))
}

// Stop stops the programs in reverse start order (the API server before
// etcd) and waits for them.
func (c *Cluster) Stop() error {
	var errs []error
	if c.istiod != nil {
		errs = append(errs, c.istiod.stop())
		c.istiod = nil
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		errs = append(errs, c.procs[i].stop())
	}
	c.procs = nil
	c.slot.release()
	return errors.Join(errs...)
}

// stop ends the process with SIGTERM, or SIGKILL when it does not stop.
func (p *process) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop on SIGTERM", p.name)
	}
}

// StopAPIServer kills kube-apiserver alone, to test what clients do when it
// goes away.
func (c *Cluster) StopAPIServer() {
	for _, p := range c.procs {
		if p.name == "kube-apiserver" {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// StartAPIServer starts kube-apiserver again after StopAPIServer and waits
// until it is ready.
func (c *Cluster) StartAPIServer(ctx context.Context) error {
	for _, p := range c.procs {
		if p.name == "kube-apiserver" {
			if err := p.start(c.Dir); err != nil {
				return err
			}
		}
	}
	return c.waitReady(ctx)
}

// UserKubeconfig writes a kubeconfig for a user of the cluster's CA with the
// given name and groups, who has only the permissions RBAC grants them.
func (c *Cluster) UserKubeconfig(name string, groups ...string) (string, error) {
	p, err := loadPKI(c.Dir)
	if err != nil {
		return "", err
	}
	if err := p.issue(c.Dir, "user-"+name, pkix.Name{CommonName: name, Organization: groups}, nil, nil, x509.ExtKeyUsageClientAuth); err != nil {
		return "", err
	}
	cfg, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		return "", err
	}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificate: filepath.Join(c.Dir, "user-"+name+".crt"),
		ClientKey:         filepath.Join(c.Dir, "user-"+name+".key"),
	}
	path := filepath.Join(c.Dir, "user-"+name+".kubeconfig")
	return path, clientcmd.WriteToFile(*cfg, path)
}

// Node describes a fake node.
type Node struct {
	Name       string
	Labels     map[string]string
	ProviderID string
}

// nodeMemory is the capacity and allocatable memory of the fake nodes.
var nodeMemory = resource.MustParse("256Gi")

// AddNodes creates fake nodes that kwok makes Ready.
func (c *Cluster) AddNodes(ctx context.Context, nodes ...Node) error {
	kc, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: nodeMemory,
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	for _, n := range nodes {
		labels := map[string]string{"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "type": "kwok"}
		for k, v := range n.Labels {
			labels[k] = v
		}
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels, Annotations: map[string]string{KwokNodeAnnotation: "fake"}},
			Spec:       corev1.NodeSpec{ProviderID: n.ProviderID},
			Status:     corev1.NodeStatus{Capacity: capacity, Allocatable: capacity},
		}
		if _, err := kc.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create Node/%s: %w", n.Name, err)
		}
	}
	return nil
}

// Logs returns the end of each program's log, for a failing test.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, p := range c.procs {
		fmt.Fprintf(&b, "== %s\n%s\n", p.name, tail(p.log))
	}
	return b.String()
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// Main runs the tests of a package against one cluster with nodes, started
// before and stopped after them; setup, if set, runs once the cluster is up.
// It returns the exit code for os.Exit. When the cluster cannot start (the
// binaries are not built) the tests fail, saying how to build them; when a
// test fails, the logs of the control plane are printed.
func Main(m *testing.M, nodes []Node, setup func(*Cluster) error) int {
	dir, err := os.MkdirTemp("", "kfistio-cluster-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Start(ctx, dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster tests cannot run:", err)
		return 1
	}
	defer func() { _ = c.Stop() }()
	if err := c.AddNodes(ctx, nodes...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if setup != nil {
		if err := setup(c); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintln(os.Stderr, c.Logs())
	}
	return code
}

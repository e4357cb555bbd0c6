package kube

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeconfig writes a kubeconfig with one context, "test", for server.
func kubeconfig(t *testing.T, server string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: server, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "config")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// closedPort returns a loopback address that nothing listens on, and that
// nothing else can take while the test runs: a socket is bound to it and
// never listens, so connections to it are refused.
func closedPort(t *testing.T) string {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}

func TestConnectErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	unreachable := "https://" + closedPort(t)
	cases := []struct {
		name string
		opts Options
		env  map[string]string
		want []string
	}{
		{"missing file", Options{Kubeconfig: "/nonexistent/config"}, nil, []string{"kubeconfig /nonexistent/config", "no such file"}},
		{"no configuration", Options{}, map[string]string{"KUBECONFIG": "", "HOME": t.TempDir()}, []string{"no Kubernetes configuration found", "--kubeconfig"}},
		{"wrong context", Options{Kubeconfig: kubeconfig(t, unreachable), Context: "prod"}, nil, []string{`context "prod" is not in the kubeconfig`, "test"}},
		{"unreachable", Options{Kubeconfig: kubeconfig(t, unreachable)}, nil, []string{"cannot reach the Kubernetes API server at " + unreachable, "connection refused", `context "test"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			_, err := Connect(ctx, c.opts)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

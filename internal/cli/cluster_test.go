package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/kubeflow/kfistio/internal/testcluster"
)

var gkeCluster *testcluster.Cluster

// TestMain starts a control plane whose nodes look like GKE's, running the
// real istiod once it is installed.
func TestMain(m *testing.M) {
	var nodes []testcluster.Node
	for i := 0; i < 2; i++ {
		nodes = append(nodes, testcluster.Node{Name: fmt.Sprintf("gke-kubeflow-pool-%d", i),
			Labels:     map[string]string{"cloud.google.com/gke-nodepool": "default-pool"},
			ProviderID: fmt.Sprintf("gce://kubeflow/us-central1-a/gke-kubeflow-pool-%d", i)})
	}
	os.Exit(testcluster.Main(m, nodes, func(c *testcluster.Cluster) error {
		gkeCluster = c
		return c.RunIstiod()
	}))
}

// cluster is the control plane of the package's tests.
func cluster(*testing.T) *testcluster.Cluster { return gkeCluster }

// On nodes that look like GKE's, install picks the gke overlay and says why;
// progress goes to stderr and the change set to stdout; status, diff and
// uninstall work on what it installed.
func TestInstallOnGKE(t *testing.T) {
	c := cluster(t)
	kc := "--kubeconfig=" + c.Kubeconfig
	code, out, errOut := run(t, "install", kc, "--timeout=2m")
	if code != 0 {
		t.Fatalf("install: exit %d\n%s", code, errOut)
	}
	if !strings.Contains(errOut, "Detected GKE: node gke-kubeflow-pool-0 has the GKE label cloud.google.com/gke-nodepool=default-pool") ||
		!strings.Contains(errOut, "Using the gke overlay") || !strings.Contains(errOut, "✓ Waiting for gateways ready") {
		t.Errorf("stderr:\n%s", errOut)
	}
	if !strings.Contains(out, "DaemonSet/kube-system/istio-cni-node created\n") || strings.Contains(out, "✓") {
		t.Errorf("stdout:\n%s", out)
	}

	code, out, _ = run(t, "install", kc, "--overlay=gke", "-o", "json")
	var cs []struct{ Object, Action string }
	if code != 0 || json.Unmarshal([]byte(out), &cs) != nil || len(cs) == 0 {
		t.Fatalf("second install: exit %d\n%s", code, out)
	}
	for _, c := range cs {
		if c.Action != "unchanged" {
			t.Errorf("second install: %s %s", c.Object, c.Action)
		}
	}

	code, out, _ = run(t, "status", kc)
	if code != 0 || !strings.Contains(out, "Overlay:  gke+cluster-local-gateway+kubeflow-istio-resources") ||
		!strings.Contains(out, "✓ DaemonSet/kube-system/istio-cni-node") || !strings.Contains(out, "Drift:    none") {
		t.Errorf("status: exit %d\n%s", code, out)
	}

	if code, out, errOut := run(t, "diff", kc, "--overlay=gke"); code != 0 || out != "" || !strings.Contains(errOut, "No differences") {
		t.Errorf("diff against gke: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = run(t, "diff", kc, "--overlay=oauth2-proxy")
	if code != 1 || !strings.Contains(out, "-          path: /home/kubernetes/bin") || !strings.Contains(out, "+          path: /opt/cni/bin") {
		t.Errorf("diff against oauth2-proxy: exit %d\n%s", code, out)
	}

	code, _, errOut = run(t, "uninstall", kc, "--purge")
	if code != 0 {
		t.Fatalf("uninstall --purge with no user resources: exit %d\n%s", code, errOut)
	}
	code, _, errOut = run(t, "status", kc)
	if code != 1 || !strings.Contains(errOut, "no kfistio installation on this cluster") {
		t.Errorf("status after uninstall: exit %d\n%s", code, errOut)
	}
}

func TestClusterCommandErrors(t *testing.T) {
	c := cluster(t)
	cases := map[string]struct {
		args []string
		want []string
	}{
		"unknown overlay":      {[]string{"install", "--kubeconfig=" + c.Kubeconfig, "--overlay=sidecarless"}, []string{`unknown overlay "sidecarless"`, "oauth2-proxy, gke, insecure, ambient"}},
		"bad gateway choice":   {[]string{"install", "--kubeconfig=" + c.Kubeconfig, "--cluster-local-gateway=strict"}, []string{"--cluster-local-gateway", "base, m2m-auth or none"}},
		"wrong context":        {[]string{"install", "--kubeconfig=" + c.Kubeconfig, "--context=prod"}, []string{`context "prod" is not in the kubeconfig`}},
		"missing kubeconfig":   {[]string{"status", "--kubeconfig=/nonexistent/kubeconfig"}, []string{"kubeconfig /nonexistent/kubeconfig"}},
		"bad output":           {[]string{"install", "--kubeconfig=" + c.Kubeconfig, "-o", "yaml"}, []string{"unknown output format"}},
		"nothing to uninstall": {[]string{"uninstall", "--kubeconfig=" + c.Kubeconfig}, []string{"no kfistio installation on this cluster"}},
	}
	for name, tc := range cases {
		code, out, errOut := run(t, tc.args...)
		if code != 1 || out != "" {
			t.Errorf("%s: exit %d, stdout %q", name, code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%s: stderr %q does not say %q", name, errOut, w)
			}
		}
	}
}

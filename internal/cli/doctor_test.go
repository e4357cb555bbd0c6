package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const workloads = "../doctor/testdata/workloads"

func TestDoctorFiles(t *testing.T) {
	code, out, _ := run(t, "doctor", "-f", filepath.Join(workloads, "init-egress.yaml"))
	if code != 1 || !strings.Contains(out, "KF002 warning container clone") {
		t.Errorf("warning finding: exit %d\n%s", code, out)
	}
	if code, _, _ := run(t, "doctor", "-f", filepath.Join(workloads, "init-egress.yaml"), "--fail-on", "error"); code != 0 {
		t.Errorf("--fail-on error with warnings only: exit %d", code)
	}
	code, out, _ = run(t, "doctor", "-f", filepath.Join(workloads, "init-egress.yaml"), "--component", "sidecar-egress")
	if code != 1 || !strings.Contains(out, "KF002 error") || !strings.Contains(out, "Sidecar/istio-system/default limits egress") {
		t.Errorf("with the egress Sidecar: exit %d\n%s", code, out)
	}
	if code, out, _ := run(t, "doctor", "-f", filepath.Join(workloads, "pss.yaml")); code != 0 || !strings.Contains(out, "No findings in 1 checked") {
		t.Errorf("clean file: exit %d\n%s", code, out)
	}
	code, out, _ = run(t, "doctor", "-f", filepath.Join(workloads, "pss.yaml"), "--overlay", "insecure", "-o", "json")
	var rep struct {
		Findings []struct{ ID, Severity string }
	}
	if code != 1 || json.Unmarshal([]byte(out), &rep) != nil || len(rep.Findings) != 1 || rep.Findings[0].ID != "KF005" {
		t.Errorf("insecure overlay: exit %d\n%s", code, out)
	}
}

func TestDoctorFix(t *testing.T) {
	in := filepath.Join(workloads, "inferenceservice.yaml")
	code, out, errOut := run(t, "doctor", "-f", in, "--fix")
	want, err := os.ReadFile(filepath.Join(workloads, "inferenceservice.fixed.golden.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 || out != string(want) || !strings.Contains(errOut, "KF003") {
		t.Errorf("--fix: exit %d, stderr %s\nstdout:\n%s", code, errOut, out)
	}
	// Fixes that cannot be applied keep the exit status.
	code, _, _ = run(t, "doctor", "-f", filepath.Join(workloads, "uid1337.yaml"), "--fix")
	if code != 1 {
		t.Errorf("--fix with an unfixable finding: exit %d", code)
	}
}

func TestDoctorCannotRun(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("kind: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := map[string][]string{
		"malformed YAML":      {"doctor", "-f", bad},
		"missing file":        {"doctor", "-f", "/nonexistent.yaml"},
		"unknown overlay":     {"doctor", "-f", filepath.Join(workloads, "pss.yaml"), "--overlay", "sidecarless"},
		"fix without files":   {"doctor", "--fix"},
		"bad severity":        {"doctor", "-f", bad, "--fail-on", "fatal"},
		"unreachable cluster": {"doctor", "--kubeconfig", "/nonexistent/kubeconfig"},
	}
	for name, args := range cases {
		if code, _, errOut := run(t, args...); code != 2 || !strings.Contains(errOut, "Error:") {
			t.Errorf("%s: exit %d, stderr %q", name, code, errOut)
		}
	}
}

func TestDoctorCluster(t *testing.T) {
	c := cluster(t)
	code, out, _ := run(t, "doctor", "--kubeconfig", c.Kubeconfig)
	if code != 1 || !strings.Contains(out, "KF100") {
		t.Errorf("cluster without istiod: exit %d\n%s", code, out)
	}
}

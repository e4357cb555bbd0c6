package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strings"
	"testing"
)

const (
	workloads = "../doctor/testdata/workloads"
	corpus    = "../doctor/testdata/corpus"
)

type doctorJSON struct {
	Findings []struct{ ID, Severity, Object string }
	Checked  int
	Notes    []string
	Errors   []string
}

func decodeReport(t *testing.T, out string) doctorJSON {
	t.Helper()
	var rep doctorJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not a JSON report: %v\n%s", err, out)
	}
	return rep
}

func TestDoctorFiles(t *testing.T) {
	egress := filepath.Join(workloads, "init-egress.yaml")
	// A download through a native sidecar under ALLOW_ANY works: a tip.
	code, out, _ := run(t, "doctor", "-f", egress)
	if code != 0 || !strings.Contains(out, "KF002 info    container clone") {
		t.Errorf("tip: exit %d\n%s", code, out)
	}
	if code, _, _ := run(t, "doctor", "-f", egress, "--fail-on", "info"); code != 1 {
		t.Errorf("--fail-on info with a tip: exit %d", code)
	}
	// The egress component leaves public hosts to the passthrough cluster.
	if code, out, _ = run(t, "doctor", "-f", egress, "--component", "sidecar-egress"); code != 0 || !strings.Contains(out, "KF002 info") {
		t.Errorf("with the egress Sidecar: exit %d\n%s", code, out)
	}
	// Without native sidecars the clone cannot reach anything.
	if code, out, _ = run(t, "doctor", "-f", egress, "--native-sidecars=false"); code != 1 || !strings.Contains(out, `istiod ENABLE_NATIVE_SIDECARS="false"`) {
		t.Errorf("without native sidecars: exit %d\n%s", code, out)
	}
	// A REGISTRY_ONLY mesh in the input refuses the KServe download.
	code, out, _ = run(t, "doctor", "-f", filepath.Join(corpus, "kserve/sklearn.yaml"), "-f", "../doctor/testdata/settings/registry-only.yaml")
	if code != 1 || !strings.Contains(out, "KF003 error") || !strings.Contains(out, "Sidecar/istio-system/default sets outboundTrafficPolicy REGISTRY_ONLY") {
		t.Errorf("REGISTRY_ONLY: exit %d\n%s", code, out)
	}
	if code, out, _ := run(t, "doctor", "-f", filepath.Join(workloads, "pss.yaml")); code != 0 || !strings.Contains(out, "No findings in 1 checked") {
		t.Errorf("clean file: exit %d\n%s", code, out)
	}
	code, out, _ = run(t, "doctor", "-f", filepath.Join(workloads, "pss.yaml"), "--overlay", "insecure", "-o", "json")
	if rep := decodeReport(t, out); code != 1 || len(rep.Findings) != 1 || rep.Findings[0].ID != "KF005" {
		t.Errorf("insecure overlay: exit %d\n%s", code, out)
	}
	code, out, _ = run(t, "doctor", "-f", filepath.Join(corpus, "kserve/iris-input.json"), "-o", "json")
	if rep := decodeReport(t, out); code != 0 || !strings.Contains(out, `"findings": []`) || len(rep.Notes) != 1 {
		t.Errorf("no workloads: exit %d\n%s", code, out)
	}
}

// Istio's findings with --suppress: a suppression hides its code, an unknown
// code is a note, a malformed value is an error; -o json stays JSON.
func TestDoctorSuppress(t *testing.T) {
	in := "../doctor/testdata/analysis/unreachable-rule.yaml"
	code, out, _ := run(t, "doctor", "-f", in, "-o", "json")
	if rep := decodeReport(t, out); code != 1 || len(rep.Findings) != 1 || rep.Findings[0].ID != "IST0130" {
		t.Errorf("IST0130: exit %d\n%s", code, out)
	}
	code, out, _ = run(t, "doctor", "-f", in, "-o", "json", "--suppress", "IST0130=VirtualService kubeflow/*", "--suppress", "IST9999=Pod a/b")
	if rep := decodeReport(t, out); code != 0 || len(rep.Findings) != 0 || len(rep.Notes) != 1 || !strings.Contains(rep.Notes[0], "IST9999") {
		t.Errorf("suppressed, and an unknown code: exit %d\n%s", code, out)
	}
	code, out, _ = run(t, "doctor", "-f", in, "-o", "json", "--suppress", "IST0130")
	if rep := decodeReport(t, out); code != 2 || len(rep.Errors) != 1 || !strings.Contains(rep.Errors[0], "want CODE=RESOURCE") {
		t.Errorf("malformed suppression: exit %d\n%s", code, out)
	}
}

func TestDoctorFix(t *testing.T) {
	in := filepath.Join(workloads, "inferenceservice.yaml")
	// The KServe download is a tip: --fix applies it only when asked for.
	code, out, errOut := run(t, "doctor", "-f", in, "--fix")
	orig, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 || out != string(orig) || !strings.Contains(errOut, "KF003") {
		t.Errorf("--fix of a tip: exit %d, stderr %s\nstdout:\n%s", code, errOut, out)
	}
	want, err := os.ReadFile(filepath.Join(workloads, "inferenceservice.fixed.golden.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut = run(t, "doctor", "-f", in, "--fix", "--fail-on", "info")
	if code != 0 || out != string(want) || !strings.Contains(errOut, "      fixed\n") {
		t.Errorf("--fix --fail-on info: exit %d, stderr %s\nstdout:\n%s", code, errOut, out)
	}
	// Fixes that cannot be applied keep the exit status.
	code, _, errOut = run(t, "doctor", "-f", filepath.Join(corpus, "k8s-examples/elasticsearch-rc.yaml"), "--native-sidecars=false", "--fix")
	if code != 1 || !strings.Contains(errOut, "fix: by hand: it is privileged") {
		t.Errorf("--fix of a privileged init container: exit %d\n%s", code, errOut)
	}
	// Several files, the first without a final newline, make one valid
	// stream.
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	if err := os.WriteFile(a, []byte(strings.TrimSuffix(string(orig), "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ = run(t, "doctor", "-f", a, "-f", filepath.Join(workloads, "init-egress.yaml"), "--fix", "--fail-on", "info")
	if code != 0 || !strings.Contains(out, "pvc://models/sklearn\n---\n# Source: ../doctor/testdata/workloads/init-egress.yaml\n") {
		t.Errorf("two files: exit %d\n%s", code, out)
	}
	stream := filepath.Join(dir, "stream.yaml")
	if err := os.WriteFile(stream, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := run(t, "doctor", "-f", stream, "--fail-on", "info", "-o", "json"); code != 0 || decodeReport(t, out).Checked != 5 {
		t.Errorf("the fixed stream: exit %d\n%s", code, out)
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
		if code, out, errOut := run(t, args...); code != 2 || !strings.Contains(out+errOut, "rror") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", name, code, out, errOut)
		}
		// The same as JSON where the report goes (standard error with --fix).
		code, out, errOut := run(t, append(args, "-o", "json")...)
		if args[1] == "--fix" {
			out = strings.TrimSuffix(errOut, "Error: --fix works on manifests: pass them with -f\n")
		}
		if rep := decodeReport(t, out); code != 2 || len(rep.Errors) == 0 || rep.Findings == nil {
			t.Errorf("%s -o json: exit %d\n%s", name, code, out)
		}
	}
	// What can be read is still checked.
	code, out, _ := run(t, "doctor", "-f", bad, "-f", filepath.Join(workloads, "pss.yaml"), "--overlay", "insecure", "-o", "json")
	if rep := decodeReport(t, out); code != 2 || len(rep.Errors) != 1 || len(rep.Findings) != 1 || len(rep.Errors[0]) > 200 {
		t.Errorf("a bad file next to a good one: exit %d\n%s", code, out)
	}
}

func TestDoctorCluster(t *testing.T) {
	c := cluster(t)
	code, out, _ := run(t, "doctor", "--kubeconfig", c.Kubeconfig)
	if code != 1 || !strings.Contains(out, "KF100") {
		t.Errorf("cluster without istiod: exit %d\n%s", code, out)
	}
}

// While doctor checks a cluster, Go collects at clusterGCPercent, unless
// GOGC says otherwise; afterwards the previous setting is back.
func TestCollectSooner(t *testing.T) {
	gogc := func() uint64 {
		s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	before := gogc()
	for _, tc := range []struct {
		env  string
		want uint64
	}{{"", clusterGCPercent}, {"200", before}} {
		t.Setenv("GOGC", tc.env)
		restore := collectSooner()
		if got := gogc(); got != tc.want {
			t.Errorf("GOGC=%q: doctor collects at %d%%, want %d%%", tc.env, got, tc.want)
		}
		restore()
		if got := gogc(); got != before {
			t.Errorf("GOGC=%q: after doctor, %d%%, want %d%% again", tc.env, got, before)
		}
	}
}

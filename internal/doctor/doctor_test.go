package doctor

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/podsecurity"
)

var update = flag.Bool("update", false, "rewrite the golden files of --fix")

const fixtures = "testdata/workloads"

// options are what `kfistio doctor -f` assumes for overlay.
func options(t *testing.T, overlay string) WorkloadOptions {
	t.Helper()
	tree, err := build.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := tree.InstallationObjects(build.DefaultInstallation(overlay))
	if err != nil {
		t.Fatal(err)
	}
	in, err := inject.New(objs)
	if err != nil {
		t.Fatal(err)
	}
	return WorkloadOptions{Injector: in, Levels: podsecurity.NamespaceLevels(objs), EgressRestricted: EgressRestriction(objs)}
}

func read(t *testing.T, name string) []*File {
	t.Helper()
	files, err := ReadFiles([]string{filepath.Join(fixtures, name)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// summary is "Object ID severity container" per finding, sorted.
func summary(r *Report) []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, strings.TrimSpace(strings.Join([]string{f.Object, f.ID, string(f.Severity), f.Container}, " ")))
	}
	sort.Strings(out)
	return out
}

// Each workload finding shows on the workload that has the problem, and not
// on its fixed twin in the same file.
func TestWorkloadFindings(t *testing.T) {
	cases := []struct {
		file, overlay string
		restricted    string
		want          []string
		skipped       int
	}{
		{"init-before-proxy.yaml", "oauth2-proxy", "", []string{
			"Deployment/kubeflow/fetch-config KF001 error fetch",
			"Deployment/kubeflow/fetch-config KF001 warning render",
			"Deployment/kubeflow/fetch-config-as-proxy KF004 info fetch",
		}, 0},
		{"init-egress.yaml", "oauth2-proxy", "", []string{"Deployment/kubeflow/docs KF002 warning clone"}, 0},
		{"init-egress.yaml", "oauth2-proxy", "a mesh-wide Sidecar limits egress", []string{"Deployment/kubeflow/docs KF002 error clone"}, 0},
		{"inferenceservice.yaml", "gke", "", []string{"InferenceService/kubeflow-user-example-com/sklearn-iris KF003 warning storage-initializer"}, 0},
		{"notebook.yaml", "oauth2-proxy", "", []string{"Notebook/kubeflow-user-example-com/my-notebook KF002 warning get-datasets"}, 1},
		{"uid1337.yaml", "oauth2-proxy", "", []string{"StatefulSet/kubeflow/cache KF004 warning cache"}, 0},
		{"pss.yaml", "oauth2-proxy", "", nil, 0},
		{"pss.yaml", "insecure", "", []string{"Deployment/team-a/api KF005 error"}, 0},
	}
	for _, c := range cases {
		t.Run(c.file+" "+c.overlay+" "+c.restricted, func(t *testing.T) {
			o := options(t, c.overlay)
			if c.restricted != "" {
				o.EgressRestricted = c.restricted
			}
			r := CheckWorkloads(read(t, c.file), o)
			if got := summary(r); !slices.Equal(got, c.want) {
				t.Errorf("findings:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
			}
			if len(r.Skipped) != c.skipped {
				t.Errorf("skipped %v, want %d", r.Skipped, c.skipped)
			}
			for _, f := range r.Findings {
				if f.Reason == "" || f.Fix == "" || f.Source == "" {
					t.Errorf("finding without reason, fix or source: %+v", f)
				}
			}
		})
	}
}

// --fix changes only what the fixes need; the golden files show the result,
// and a second look finds the fixed problems gone.
func TestFix(t *testing.T) {
	for _, name := range []string{"init-before-proxy.yaml", "init-egress.yaml", "inferenceservice.yaml", "notebook.yaml"} {
		t.Run(name, func(t *testing.T) {
			files := read(t, name)
			o := options(t, "oauth2-proxy")
			r := CheckWorkloads(files, o)
			fixed, err := Fix(files, r.Findings)
			if err != nil {
				t.Fatal(err)
			}
			got := fixed[files[0]]
			golden := filepath.Join(fixtures, strings.TrimSuffix(name, ".yaml")+".fixed.golden.yaml")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("fixed %s differs from %s (go test -update rewrites it):\n%s", name, golden, got)
			}
			keptOrReplaced(t, files[0].Data, got)
			again, err := parseFile(name, got)
			if err != nil {
				t.Fatalf("the fixed file does not parse: %v", err)
			}
			for _, f := range CheckWorkloads([]*File{again}, o).Findings {
				if f.Fixable() {
					t.Errorf("after the fix: %s %s %s", f.Object, f.ID, f.Container)
				}
			}
		})
	}
}

// keptOrReplaced checks that every line of before is in after, in order,
// except lines whose value a fix replaced (same key, other value).
func keptOrReplaced(t *testing.T, before, after []byte) {
	t.Helper()
	a := strings.Split(string(after), "\n")
	j := 0
	for _, l := range strings.Split(string(before), "\n") {
		for j < len(a) && a[j] != l && !sameKey(a[j], l) {
			j++
		}
		if j == len(a) {
			t.Fatalf("line %q of the input is gone from the fixed output", l)
		}
		j++
	}
}

func sameKey(a, b string) bool {
	ka, _, okA := strings.Cut(a, ":")
	kb, _, okB := strings.Cut(b, ":")
	return okA && okB && ka == kb
}

func TestFixRefusesWhatItCannotPlace(t *testing.T) {
	src := []byte(`apiVersion: v1
kind: Pod
metadata:
  name: p
  namespace: kubeflow
spec:
  initContainers:
  - name: clone
    image: alpine/git
    args: ["clone", "https://github.com/kubeflow/examples"]
    securityContext: {}
  containers:
  - name: app
    image: app
`)
	f, err := parseFile("flow.yaml", src)
	if err != nil {
		t.Fatal(err)
	}
	r := CheckWorkloads([]*File{f}, options(t, "oauth2-proxy"))
	if len(r.Findings) != 1 || r.Findings[0].ID != InitEgress {
		t.Fatalf("findings %v", summary(r))
	}
	_, err = Fix([]*File{f}, r.Findings)
	if err == nil || !strings.Contains(err.Error(), "apply the fix by hand") || !strings.Contains(err.Error(), "flow.yaml, document 1") {
		t.Fatalf("fix of a flow-style securityContext: %v", err)
	}
}

func TestReadFilesErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("kind: Pod\n---\nspec: [unclosed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFiles([]string{bad}, nil); err == nil || !strings.Contains(err.Error(), "bad.yaml: document 2") {
		t.Errorf("malformed YAML: %v", err)
	}
	if _, err := ReadFiles([]string{filepath.Join(dir, "missing.yaml")}, nil); err == nil {
		t.Error("missing file: no error")
	}
	files, err := ReadFiles([]string{"-"}, strings.NewReader("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n"))
	if err != nil || len(files) != 1 || len(files[0].Docs) != 1 {
		t.Errorf("stdin: %v %v", files, err)
	}
}

func TestNetworkEvidence(t *testing.T) {
	cases := map[string]struct{ outside, inside []string }{
		"https://github.com/kubeflow/website":            {[]string{"github.com"}, nil},
		"http://minio-service.kubeflow:9000/health":      {nil, []string{"minio-service.kubeflow"}},
		"http://ml-pipeline.kubeflow.svc:8888":           {nil, []string{"ml-pipeline.kubeflow.svc"}},
		"http://a.b.svc.cluster.local/x":                 {nil, []string{"a.b.svc.cluster.local"}},
		"gs://bucket/model":                              {[]string{"gs://bucket"}, nil},
		"git@github.com:kubeflow/manifests.git":          {[]string{"github.com"}, nil},
		"--data-dir=/data --workers=4":                   {nil, nil},
		"https://storage.googleapis.com/bucket/model.pt": {[]string{"storage.googleapis.com"}, nil},
	}
	for arg, want := range cases {
		e := network(&corev1.Container{Args: []string{arg}})
		if !slices.Equal(e.outside, want.outside) || !slices.Equal(e.inside, want.inside) {
			t.Errorf("%s: outside %v inside %v, want %v %v", arg, e.outside, e.inside, want.outside, want.inside)
		}
	}
}

func TestNativeSidecarVersions(t *testing.T) {
	for v, want := range map[string]Severity{"v1.27.9": Error, "v1.28.3-gke.100": Warning, "v1.29.0": "", "v1.37.2": ""} {
		f := nativeSidecarFinding(v, "true")
		got := Severity("")
		if f != nil {
			got = f.Severity
		}
		if got != want {
			t.Errorf("%s: %q, want %q", v, got, want)
		}
	}
	if nativeSidecarFinding("v1.27.0", "false") != nil {
		t.Error("a finding although native sidecars are off")
	}
}

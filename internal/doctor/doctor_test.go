package doctor

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kubeflow/kfistio/internal/build"
)

var update = flag.Bool("update", false, "rewrite the golden files of --fix")

const fixtures = "testdata/workloads"

// setting is an installation doctor -f can assume: an overlay, its opt-in
// components, and istiod's native sidecars.
type setting struct {
	overlay    string
	components []string
	native     *bool
}

var (
	optionsMu    sync.Mutex
	optionsCache = map[string]WorkloadOptions{}
)

// options are what `kfistio doctor -f` assumes for s; the builds are cached
// (they are read only).
func options(t testing.TB, s setting) WorkloadOptions {
	t.Helper()
	key := s.overlay + "+" + strings.Join(s.components, "+")
	if s.native != nil && !*s.native {
		key += "+no-native"
	}
	optionsMu.Lock()
	defer optionsMu.Unlock()
	if o, ok := optionsCache[key]; ok {
		return o
	}
	tree, err := build.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	inst := build.DefaultInstallation(s.overlay)
	inst.Components = s.components
	objs, labels, err := tree.InstallationParts(inst)
	if err != nil {
		t.Fatal(err)
	}
	o, err := InstallationOptions(append(objs, labels...), s.native)
	if err != nil {
		t.Fatal(err)
	}
	optionsCache[key] = o
	return o
}

func overlay(name string) setting { return setting{overlay: name} }

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

func wantFindings(t *testing.T, r *Report, want []string) {
	t.Helper()
	if got := summary(r); !slices.Equal(got, want) {
		t.Errorf("findings:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	for _, f := range r.Findings {
		if f.Reason == "" || f.Fix == "" || f.Source == "" {
			t.Errorf("finding without reason, fix or source: %+v", f)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// Each workload finding shows on the workload that has the problem, and not
// on its fixed twin in the same file.
func TestWorkloadFindings(t *testing.T) {
	cases := []struct {
		file string
		s    setting
		want []string
	}{
		{"init-before-proxy.yaml", overlay("oauth2-proxy"), []string{
			"Deployment/kubeflow/fetch-config KF001 error fetch",
			"Deployment/kubeflow/fetch-config KF001 warning render",
			"Deployment/kubeflow/fetch-config-as-proxy KF004 info fetch",
		}},
		{"init-egress.yaml", overlay("oauth2-proxy"), []string{"Deployment/kubeflow/docs KF002 info clone"}},
		// The egress Sidecar leaves public hosts to the passthrough cluster.
		{"init-egress.yaml", setting{overlay: "oauth2-proxy", components: []string{"sidecar-egress"}}, []string{"Deployment/kubeflow/docs KF002 info clone"}},
		{"init-egress.yaml", setting{overlay: "oauth2-proxy", native: ptr(false)}, []string{
			"Deployment/kubeflow/docs KF001 error clone",
			"Job/kubeflow-user-example-com/load-data KF001 error wait-for-minio",
		}},
		{"inferenceservice.yaml", overlay("gke"), []string{"InferenceService/kubeflow-user-example-com/sklearn-iris KF003 info predictor/storage-initializer"}},
		{"notebook.yaml", overlay("oauth2-proxy"), []string{"Notebook/kubeflow-user-example-com/my-notebook KF002 info get-datasets"}},
		{"uid1337.yaml", overlay("oauth2-proxy"), []string{"StatefulSet/kubeflow/cache KF004 info cache"}},
		{"pss.yaml", overlay("oauth2-proxy"), nil},
		{"pss.yaml", overlay("insecure"), []string{"Deployment/team-a/api KF005 error"}},
	}
	for _, c := range cases {
		name := c.file + " " + c.s.overlay + " " + strings.Join(c.s.components, "+")
		if c.s.native != nil {
			name += " no-native"
		}
		t.Run(name, func(t *testing.T) {
			wantFindings(t, CheckWorkloads(read(t, c.file), options(t, c.s)), c.want)
		})
	}
}

// --fix changes only what the fixes need; the golden files show the result,
// and a second look finds the fixed problems gone.
func TestFix(t *testing.T) {
	for _, name := range []string{"init-before-proxy.yaml", "init-egress.yaml", "inferenceservice.yaml", "notebook.yaml"} {
		t.Run(name, func(t *testing.T) {
			files := read(t, name)
			o := options(t, overlay("oauth2-proxy"))
			r := CheckWorkloads(files, o)
			got := r.Fix(files, Info)[files[0]]
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
			for _, f := range r.Findings {
				if f.Fixable() && !f.Fixed {
					t.Errorf("not fixed: %s %s %s: %s", f.Object, f.ID, f.Container, f.NotFixed)
				}
			}
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
		"http://127.0.0.1:8080/ready":                    {nil, nil},
		"http://10.0.0.12/models":                        {nil, nil},
		"oci+fetch://ghcr.io/org/model:v1":               {[]string{"ghcr.io"}, nil},
	}
	for arg, want := range cases {
		e := network(&corev1.Container{Args: []string{arg}})
		var outside, inside []string
		for _, d := range e.dests {
			if d.inCluster {
				inside = append(inside, d.shown)
			} else {
				outside = append(outside, d.shown)
			}
		}
		if !slices.Equal(outside, want.outside) || !slices.Equal(inside, want.inside) {
			t.Errorf("%s: outside %v inside %v, want %v %v", arg, outside, inside, want.outside, want.inside)
		}
	}
}

func TestNativeSidecarVersions(t *testing.T) {
	for v, want := range map[string]Severity{"v1.27.9": Error, "v1.28.3-gke.100": Warning, "v1.29.0": "", "v1.37.2": ""} {
		f := nativeSidecarFinding(v, "true", "istiod")
		got := Severity("")
		if f != nil {
			got = f.Severity
		}
		if got != want {
			t.Errorf("%s: %q, want %q", v, got, want)
		}
	}
	if nativeSidecarFinding("v1.27.0", "false", "istiod") != nil {
		t.Error("a finding although native sidecars are off")
	}
}

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubeflow/kfistio/internal/testutil"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// run runs the real root command and returns the exit code and both streams.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(context.Background(), args, Streams{In: strings.NewReader(""), Out: &out, Err: &errOut})
	return code, out.String(), errOut.String()
}

func TestHelp(t *testing.T) {
	code, out, _ := run(t, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, cmd := range []string{"sync", "build", "verify", "version"} {
		if !strings.Contains(out, cmd) {
			t.Errorf("help does not list %s:\n%s", cmd, out)
		}
	}
	for _, cmd := range []string{"sync", "build", "verify", "version"} {
		code, out, _ := run(t, cmd, "--help")
		if code != 0 || !strings.Contains(out, "Examples:") {
			t.Errorf("%s --help: exit %d, no examples:\n%s", cmd, code, out)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, "version")
	if code != 0 || !strings.Contains(out, "Istio "+upstream.Release) || !strings.Contains(out, upstream.ModuleVersion) {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	code, out, _ = run(t, "version", "-o", "json")
	var v versionInfo
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.IstioRelease != upstream.Release {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	if code, _, errOut := run(t, "version", "-o", "xml"); code != 1 || !strings.Contains(errOut, "unknown output format") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestBuild(t *testing.T) {
	code, out, errOut := run(t, "build", "oauth2-proxy")
	if code != 0 || !strings.HasPrefix(out, "apiVersion:") || errOut != "" {
		t.Fatalf("exit %d, stderr %q, stdout starts %.40q", code, errOut, out)
	}
	if !strings.Contains(out, "name: istio-cni-node") {
		t.Errorf("the oauth2-proxy overlay has no CNI DaemonSet")
	}
}

func TestBuildErrors(t *testing.T) {
	cases := map[string]struct {
		args []string
		want []string
	}{
		"unknown overlay": {[]string{"build", "sidecarless"}, []string{`unknown overlay or directory "sidecarless"`, "oauth2-proxy", "gke", "insecure", "cluster-local-gateway/overlays/m2m-auth"}},
		"no argument":     {[]string{"build"}, []string{"expects an overlay name or a directory"}},
		"missing tree":    {[]string{"build", "gke", "--manifests", "/nonexistent/manifests"}, []string{"manifests directory", "/nonexistent/manifests"}},
	}
	for name, c := range cases {
		code, out, errOut := run(t, c.args...)
		if code != 1 || out != "" {
			t.Errorf("%s: exit %d, stdout %q", name, code, out)
		}
		for _, w := range c.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%s: stderr %q does not say %q", name, errOut, w)
			}
		}
		if strings.Count(errOut, "Error:") != 1 {
			t.Errorf("%s: the error is not printed exactly once: %q", name, errOut)
		}
	}
}

func TestBuildBrokenKustomization(t *testing.T) {
	dir := copyRepo(t)
	k := filepath.Join(dir, "manifests", "istio-install", "overlays", "gke", "kustomization.yaml")
	if err := os.WriteFile(k, []byte("resources:\n- ../../does-not-exist\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := run(t, "build", "gke", "--manifests", filepath.Join(dir, "manifests"))
	if code != 1 || !strings.Contains(errOut, "istio-install/overlays/gke") || !strings.Contains(errOut, "does-not-exist") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestSyncCheck(t *testing.T) {
	dir := copyRepo(t)
	code, out, errOut := run(t, "sync", "--check", "--dir", dir)
	if code != 0 || out != "" {
		t.Fatalf("clean tree: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// A hand edit in a generated file.
	f := filepath.Join(dir, "manifests", "istio-install", "base", "install.yaml")
	b, _ := os.ReadFile(f)
	if err := os.WriteFile(f, bytes.Replace(b, []byte("ENABLE_NATIVE_SIDECARS"), []byte("HAND_EDIT"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = run(t, "sync", "--check", "--dir", dir)
	if code != 1 || !strings.Contains(out, "+++ b/manifests/istio-install/base/install.yaml") || !strings.Contains(out, "-        - name: HAND_EDIT") {
		t.Fatalf("drift: exit %d, stdout:\n%s", code, out)
	}
	if !strings.Contains(errOut, "run kfistio sync") {
		t.Errorf("stderr does not say what to do: %q", errOut)
	}
	after, _ := os.ReadFile(f)
	if !bytes.Contains(after, []byte("HAND_EDIT")) {
		t.Fatal("sync --check wrote the file")
	}
	// sync repairs it; a second sync changes nothing.
	if code, _, errOut := run(t, "sync", "--dir", dir); code != 0 || !strings.Contains(errOut, "1 changed") {
		t.Fatalf("sync: exit %d: %s", code, errOut)
	}
	if code, _, errOut := run(t, "sync", "--dir", dir); code != 0 || !strings.Contains(errOut, "0 changed") {
		t.Fatalf("second sync: exit %d: %s", code, errOut)
	}
}

func TestSyncOutsideTheRepository(t *testing.T) {
	code, _, errOut := run(t, "sync", "--dir", t.TempDir())
	if code != 1 || !strings.Contains(errOut, "upstream/profile.yaml not found") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

func TestVerify(t *testing.T) {
	code, out, _ := run(t, "verify", "gke", "-o", "json")
	var rep struct {
		Passed  bool `json:"passed"`
		Targets []struct {
			Name string `json:"name"`
		} `json:"targets"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || !rep.Passed || len(rep.Targets) != 2 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	dir := copyRepo(t)
	p := filepath.Join(dir, "manifests", "istio-install", "base", "kustomization.yaml")
	b, _ := os.ReadFile(p)
	if err := os.WriteFile(p, bytes.Replace(b, []byte("- path: patches/istiod.yaml\n"), nil, 1), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ = run(t, "verify", "gke", "--manifests", filepath.Join(dir, "manifests"))
	if code != 1 || !strings.Contains(out, "✗ F10") || !strings.Contains(out, "ENABLE_DEBUG_ON_HTTP") {
		t.Fatalf("broken tree: exit %d:\n%s", code, out)
	}
	if code, _, errOut := run(t, "verify", "-o", "yaml"); code != 1 || !strings.Contains(errOut, "unknown output format") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

// copyRepo copies upstream/ and manifests/ of the repository into one
// temporary directory and returns it.
func copyRepo(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"upstream", "manifests"} {
		if err := os.Rename(testutil.CopyDir(t, filepath.Join("../..", d)), filepath.Join(root, d)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

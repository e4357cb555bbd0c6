package doctor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Pods that differ only by name and namespace share one injection, and
// each workload still gets its own findings; a pod that differs in anything
// else (here the native-sidecar annotation) is injected on its own.
func TestInjectionShared(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(fixtures, "init-before-proxy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(b), "---")
	copies := []string{first,
		strings.Replace(first, "namespace: kubeflow", "namespace: kubeflow-user-example-com", 1),
		strings.Replace(strings.Replace(first, "namespace: kubeflow", "namespace: team-c", 1), `nativeSidecar: "false"`, `nativeSidecar: "true"`, 1),
	}
	path := filepath.Join(t.TempDir(), "copies.yaml")
	if err := os.WriteFile(path, []byte(strings.Join(copies, "---\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	files, err := ReadFiles([]string{path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantFindings(t, CheckWorkloads(files, options(t, overlay("oauth2-proxy"))), []string{
		"Deployment/kubeflow-user-example-com/fetch-config KF001 error fetch",
		"Deployment/kubeflow-user-example-com/fetch-config KF001 warning render",
		"Deployment/kubeflow/fetch-config KF001 error fetch",
		"Deployment/kubeflow/fetch-config KF001 warning render",
	})
}

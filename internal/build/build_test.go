package build

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubeflow/kfistio/internal/testutil"
)

const manifestsDir = "../../manifests"

// The directories the distribution documents; each must build on its own.
var documentedDirs = []string{
	CRDsDir, NamespaceDir, InstallBaseDir,
	"istio-install/overlays/oauth2-proxy", "istio-install/overlays/gke", "istio-install/overlays/insecure",
	"istio-install/overlays/ambient", "istio-install/overlays/ambient-gke",
	"istio-install/overlays/ambient-oauth2-proxy", "istio-install/overlays/ambient-oauth2-proxy-gke", InsecureLabelsDir, AmbientLabelsDir,
	ClusterLocalGateway, ClusterLocalM2MAuth, KubeflowResourcesDir, ExampleDir, ExampleDir + "/ambient",
}

func embedded(t *testing.T) *Tree {
	t.Helper()
	tree, err := Embedded()
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func TestEveryDirectoryBuilds(t *testing.T) {
	tree := embedded(t)
	dirs, err := tree.Dirs()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range documentedDirs {
		found := false
		for _, d := range dirs {
			found = found || d == want
		}
		if !found {
			t.Errorf("%s is not a directory of the tree (have %v)", want, dirs)
		}
	}
	for _, d := range dirs {
		if _, err := tree.Build(d); err != nil {
			t.Errorf("%v", err)
		}
	}
}

// TestSameAsKubectlKustomize compares every build with `kubectl kustomize`
// of the same directory, byte for byte. Without kubectl on PATH it is
// skipped, unless KFISTIO_REQUIRE_KUBECTL is set (as in CI).
func TestSameAsKubectlKustomize(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		if os.Getenv("KFISTIO_REQUIRE_KUBECTL") != "" {
			t.Fatal("kubectl is not on PATH and KFISTIO_REQUIRE_KUBECTL is set")
		}
		t.Skip("kubectl is not on PATH")
	}
	tree := embedded(t)
	for _, d := range documentedDirs {
		res, err := tree.Build(d)
		if err != nil {
			t.Fatal(err)
		}
		ours, err := res.YAML()
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := exec.Command(kubectl, "kustomize", filepath.Join(manifestsDir, d)).Output()
		if err != nil {
			t.Fatalf("kubectl kustomize %s: %v", d, err)
		}
		if !bytes.Equal(ours, theirs) {
			t.Errorf("%s: kfistio build and kubectl kustomize differ (%d and %d bytes)", d, len(ours), len(theirs))
		}
	}
}

func TestEmbeddedTreeIsTheRepositoryTree(t *testing.T) {
	disk, err := Dir(manifestsDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range documentedDirs {
		a, err := embedded(t).Build(d)
		if err != nil {
			t.Fatal(err)
		}
		b, err := disk.Build(d)
		if err != nil {
			t.Fatal(err)
		}
		ya, _ := a.YAML()
		yb, _ := b.YAML()
		if !bytes.Equal(ya, yb) {
			t.Errorf("%s: the embedded tree differs from manifests/ on disk: rebuild kfistio", d)
		}
	}
}

func TestInstallationsBuildWithoutClashes(t *testing.T) {
	tree := embedded(t)
	for _, o := range OverlayNames() {
		for _, in := range []Installation{DefaultInstallation(o), {Overlay: o, M2MAuth: true, KubeflowResources: true}, {Overlay: o},
			{Overlay: o, ClusterLocalGateway: true, Components: []string{"sidecar-egress"}}} {
			res, err := tree.BuildInstallation(in)
			if err != nil {
				t.Errorf("%v", err)
				continue
			}
			objs, err := res.Objects()
			if err != nil {
				t.Fatal(err)
			}
			kinds := map[string]bool{}
			for _, obj := range objs {
				kinds[obj.GetKind()] = true
			}
			for _, k := range []string{"CustomResourceDefinition", "Namespace", "Deployment"} {
				if !kinds[k] {
					t.Errorf("installation %s has no %s", in.Name(), k)
				}
			}
		}
	}
	if _, err := tree.BuildInstallation(Installation{Overlay: "nope"}); err == nil || !strings.Contains(err.Error(), "oauth2-proxy") {
		t.Errorf("unknown overlay: got %v, want an error that lists the overlays", err)
	}
	if _, err := tree.BuildInstallation(Installation{Overlay: "gke", Components: []string{"egress"}}); err == nil || !strings.Contains(err.Error(), "sidecar-egress") {
		t.Errorf("unknown component: got %v, want an error that lists the components", err)
	}
}

func TestClashingPartsFailTheInstallation(t *testing.T) {
	dir := testutil.CopyDir(t, manifestsDir)
	// A second istio-system Namespace, as the ambient overlays of earlier
	// hand-kept trees carried.
	ns, err := os.ReadFile(filepath.Join(dir, NamespaceDir, "namespace.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, KubeflowResourcesDir, "namespace.yaml"), ns, 0o644); err != nil {
		t.Fatal(err)
	}
	k := filepath.Join(dir, KubeflowResourcesDir, "kustomization.yaml")
	b, _ := os.ReadFile(k)
	if err := os.WriteFile(k, append(b, []byte("- namespace.yaml\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	tree, err := Dir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tree.Build(KubeflowResourcesDir); err != nil {
		t.Fatalf("the directory alone should still build: %v", err)
	}
	_, err = tree.BuildInstallation(DefaultInstallation(DefaultOverlay))
	if err == nil || !strings.Contains(err.Error(), "Namespace") || !strings.Contains(err.Error(), "istio-system") {
		t.Fatalf("got %v, want an error naming the clashing Namespace istio-system", err)
	}
}

func TestBrokenKustomizationNamesThePath(t *testing.T) {
	dir := testutil.CopyDir(t, manifestsDir)
	if err := os.WriteFile(filepath.Join(dir, ClusterLocalGateway, "gateway.yaml"), []byte("kind: [unclosed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree, err := Dir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tree.Build(ClusterLocalGateway)
	if err == nil || !strings.Contains(err.Error(), ClusterLocalGateway) || !strings.Contains(err.Error(), "gateway.yaml") {
		t.Fatalf("got %v, want an error naming %s and gateway.yaml", err, ClusterLocalGateway)
	}
}

func TestResolve(t *testing.T) {
	tree := embedded(t)
	if _, dir, err := Resolve(tree, "gke"); err != nil || dir != "istio-install/overlays/gke" {
		t.Errorf("Resolve(gke) = %q, %v", dir, err)
	}
	if _, dir, err := Resolve(tree, "cluster-local-gateway/overlays/m2m-auth/"); err != nil || dir != ClusterLocalM2MAuth {
		t.Errorf("Resolve(m2m-auth dir) = %q, %v", dir, err)
	}
	onDisk, dir, err := Resolve(tree, filepath.Join(manifestsDir, "istio-install/overlays/gke"))
	if err != nil || dir != "." || onDisk == tree {
		t.Errorf("Resolve(directory on disk) = %q, %v", dir, err)
	} else if _, err := onDisk.Build(dir); err != nil {
		t.Errorf("build of a directory on disk: %v", err)
	}
	_, _, err = Resolve(tree, "ambient-typo")
	if err == nil {
		t.Fatal("unknown name: no error")
	}
	for _, want := range append(OverlayNames(), ClusterLocalM2MAuth) {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not list %s", err, want)
		}
	}
	if _, _, err := Resolve(tree, t.TempDir()); err == nil || !strings.Contains(err.Error(), "no kustomization.yaml") {
		t.Errorf("directory without kustomization: got %v", err)
	}
}

func TestDirNeedsADirectory(t *testing.T) {
	if _, err := Dir(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "manifests directory") {
		t.Errorf("missing directory: got %v", err)
	}
}

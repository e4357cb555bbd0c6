package build

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/testutil"
)

// kubeflowExample is a Kubeflow-like example kustomization: the tree in
// place of common/istio, with one install overlay line, next to stand-ins of
// the Kubeflow directories that define objects near Istio's (testdata/kubeflow).
const kubeflowExample = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../common/istio/istio-crds/base
- ../common/istio/istio-namespace/base
- ../common/istio/%OVERLAY%
- ../common/oauth2-proxy/overlays/m2m-dex-only
- ../common/dex/base
- ../common/knative/knative-serving/base
- ../common/istio/cluster-local-gateway/base
- ../common/kubeflow-namespace/base
- ../common/istio/kubeflow-istio-resources/base
`

// kubeflowComposition lays out the Kubeflow-like tree with the example
// kustomization naming overlayDir, and returns its root.
func kubeflowComposition(t *testing.T, overlayDir string) *Tree {
	t.Helper()
	root := testutil.CopyDir(t, "testdata/kubeflow")
	if err := os.CopyFS(filepath.Join(root, "common", "istio"), os.DirFS(manifestsDir)); err != nil {
		t.Fatal(err)
	}
	example := strings.ReplaceAll(kubeflowExample, "%OVERLAY%", overlayDir)
	if err := os.MkdirAll(filepath.Join(root, "example"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "example", "kustomization.yaml"), []byte(example), 0o644); err != nil {
		t.Fatal(err)
	}
	tree, err := Dir(root)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// twice returns the objects present more than once with the same group,
// kind, namespace and name, under any API version: kustomize tells ids apart
// by version, the API server does not.
func twice(objs []*unstructured.Unstructured) []string {
	seen := map[string][]string{}
	var out []string
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		id := gvk.GroupKind().String() + "/" + o.GetNamespace() + "/" + o.GetName()
		seen[id] = append(seen[id], gvk.Version)
		if len(seen[id]) == 2 {
			out = append(out, id)
		}
	}
	for i, id := range out {
		out[i] = id + " (versions " + strings.Join(seen[id], ", ") + ")"
	}
	return out
}

// Every install overlay swaps into the Kubeflow example by its one line:
// the build has no clash and no object twice under any API version.
func TestKubeflowComposition(t *testing.T) {
	for _, o := range Overlays {
		t.Run(o.Name, func(t *testing.T) {
			objs, err := kubeflowComposition(t, o.Path).BuildObjects("example")
			if err != nil {
				t.Fatalf("the Kubeflow example with %s does not build: %v", o.Path, err)
			}
			if d := twice(objs); len(d) > 0 {
				t.Errorf("the Kubeflow example with %s holds objects twice: %s", o.Path, strings.Join(d, "; "))
			}
		})
	}
}

// The composition test finds what it must: the opt-in oauth2-proxy policies
// next to Kubeflow's own are the same objects under other API versions, and
// a Namespace that Kubeflow defines, added to an overlay, clashes.
func TestKubeflowCompositionFindsConflicts(t *testing.T) {
	t.Run("policies under two API versions", func(t *testing.T) {
		tree := kubeflowComposition(t, "istio-install/overlays/oauth2-proxy")
		p := filepath.Join(tree.root, "common", "istio", "istio-install", "overlays", "oauth2-proxy", "kustomization.yaml")
		appendFile(t, tree, p, "- ../../components/"+OAuth2ProxyPolicies+"\n")
		objs, err := tree.BuildObjects("example")
		if err != nil {
			t.Fatal(err)
		}
		d := twice(objs)
		for _, want := range []string{
			"AuthorizationPolicy.security.istio.io/istio-system/istio-ingressgateway-oauth2-proxy",
			"AuthorizationPolicy.security.istio.io/istio-system/istio-ingressgateway-require-jwt",
			"RequestAuthentication.security.istio.io/istio-system/dex-jwt",
		} {
			if !strings.Contains(strings.Join(d, "\n"), want) {
				t.Errorf("objects twice: %v, want %s among them", d, want)
			}
		}
	})
	t.Run("a Kubeflow Namespace in an overlay", func(t *testing.T) {
		tree := kubeflowComposition(t, "istio-install/overlays/insecure")
		dir := filepath.Join(tree.root, "common", "istio", "istio-install", "overlays", "insecure")
		writeFile(t, tree, filepath.Join(dir, "ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kubeflow\n")
		k := filepath.Join(dir, "kustomization.yaml")
		writeFile(t, tree, k, strings.Replace(readFile(t, tree, k), "resources:\n", "resources:\n- ns.yaml\n", 1))
		if _, err := tree.BuildObjects("example"); err == nil || !strings.Contains(err.Error(), "kubeflow") {
			t.Fatalf("build: %v, want a clash of Namespace kubeflow", err)
		}
	})
}

func appendFile(t *testing.T, tree *Tree, p, s string) {
	t.Helper()
	writeFile(t, tree, p, readFile(t, tree, p)+s)
}

func readFile(t *testing.T, tree *Tree, p string) string {
	t.Helper()
	b, err := tree.fs.ReadFile(filepath.ToSlash(p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, tree *Tree, p, s string) {
	t.Helper()
	if err := tree.fs.WriteFile(filepath.ToSlash(p), []byte(s)); err != nil {
		t.Fatal(err)
	}
}

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/doctor"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
)

// Every install overlay, installed with `kfistio install`, runs the real
// istiod: it becomes ready and writes every webhook's CA bundle (install
// waits for both), a re-install while it runs writes nothing, doctor finds
// nothing, its webhook injects the sample workloads exactly as verify
// simulates, its validator admits every Istio object of the tree and refuses
// invalid config with and without istio.io/rev, and it logs no error.
func TestOverlaysWithIstiod(t *testing.T) {
	for _, name := range build.OverlayNames() {
		t.Run(name, func(t *testing.T) {
			in := build.DefaultInstallation(name)
			m := installMesh(t, in, objects(t, nil, in))
			m.checkCABundles(t)
			m.noWarnings(t)
			t.Run("re-install writes nothing", func(t *testing.T) {
				cs, writes, counts := m.reinstall(t)
				if n := len(cs) - cs.Count(install.Unchanged); n > 0 || writes > 0 {
					t.Errorf("re-install changed %d objects with %d writes (%s): %v", n, writes, counts, cs)
				}
			})
			// Istio's analyzers note the namespaces without injection
			// (IST0102, information); nothing else.
			t.Run("doctor finds nothing", func(t *testing.T) {
				c, _ := connect(t)
				r, err := doctor.CheckCluster(context.Background(), c, nil)
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range r.Findings {
					if f.Severity.AtLeast(doctor.Warning) || f.ID != "IST0102" {
						t.Errorf("%s %s %s: %s", f.ID, f.Severity, f.Object, f.Reason)
					}
				}
			})
			t.Run("injection equals verify's", func(t *testing.T) { report(t, m.injectionProblems(t)) })
			t.Run("validation", func(t *testing.T) { report(t, m.validationProblems(t)) })
			m.istiodErrors(t)
		})
	}
}

// checkCABundles fails for each webhook without a CA bundle.
func (m *mesh) checkCABundles(t *testing.T) {
	t.Helper()
	c, _ := connect(t)
	ctx := context.Background()
	for _, o := range m.objs {
		switch o.GetKind() {
		case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
		default:
			continue
		}
		res, err := c.Resource(o)
		if err != nil {
			t.Fatal(err)
		}
		live, err := res.Get(ctx, o.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		hooks, _, _ := unstructured.NestedSlice(live.Object, "webhooks")
		for _, h := range hooks {
			if b, _, _ := unstructured.NestedString(h.(map[string]any), "clientConfig", "caBundle"); b == "" {
				t.Errorf("%s: webhook %v has no CA bundle", object.Key(o), h.(map[string]any)["name"])
			}
		}
	}
}

// invalidVirtualService is valid for the CRD's schema but not for istiod.
const invalidVirtualService = `{"apiVersion":"networking.istio.io/v1","kind":"VirtualService",
"metadata":{"name":"invalid","namespace":"default","labels":%s},
"spec":{"hosts":["a.example.com"],"http":[{"route":[{"destination":{"host":"a.example.com"}}],"retries":{"attempts":-2}}]}}`

// validationProblems: istiod admits every Istio object of the installation
// (server-side dry runs of their apply), and refuses an invalid
// VirtualService with and without istio.io/rev.
// The warnings istiod's validator gives are logged.
func (m *mesh) validationProblems(t *testing.T) []string {
	ctx := context.Background()
	var warnings strings.Builder
	c, err := kube.Connect(ctx, kube.Options{Kubeconfig: cluster.Kubeconfig, Warnings: &warnings})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if warnings.Len() > 0 {
			t.Logf("istiod's warnings on the Istio objects of %s:\n%s", m.in.Name(), warnings.String())
		}
	}()
	var problems []string
	for _, o := range m.objs {
		if !strings.HasSuffix(o.GroupVersionKind().Group, "istio.io") {
			continue
		}
		res, err := c.Resource(o)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(o.Object)
		if _, err := res.Patch(ctx, o.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{
			FieldManager: fieldManager, Force: ptr(true), DryRun: []string{metav1.DryRunAll}}); err != nil {
			problems = append(problems, fmt.Sprintf("istiod refuses %s: %v", object.Key(o), err))
		}
	}
	for _, labels := range []string{`{}`, `{"istio.io/rev":"default"}`} {
		if err := createInvalid(ctx, c, labels); err == nil || !strings.Contains(err.Error(), "denied the request") {
			problems = append(problems, fmt.Sprintf("an invalid VirtualService with labels %s: %v, want it refused by istiod", labels, err))
		}
	}
	return problems
}

// report fails the test with each problem.
func report(t *testing.T, problems []string) {
	t.Helper()
	for _, p := range problems {
		t.Error(p)
	}
}

// createInvalid dry-runs the creation of invalidVirtualService with labels.
func createInvalid(ctx context.Context, c *kube.Client, labels string) error {
	u := &unstructured.Unstructured{}
	if err := json.Unmarshal([]byte(fmt.Sprintf(invalidVirtualService, labels)), &u.Object); err != nil {
		return err
	}
	res, err := c.Resource(u)
	if err != nil {
		return err
	}
	_, err = res.Create(ctx, u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	return err
}

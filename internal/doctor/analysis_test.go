package doctor

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
)

// withSuppressions are the default overlay's options with suppressions, on
// a copy of the cached Analysis.
func withSuppressions(t *testing.T, s ...Suppression) WorkloadOptions {
	o := options(t, overlay("oauth2-proxy"))
	a := *o.Analysis
	a.Suppressions = s
	o.Analysis = &a
	return o
}

func checkOpts(t *testing.T, o WorkloadOptions, docs ...string) *Report {
	t.Helper()
	_, r := checkWith(t, o, docs...)
	return r
}

// unreachable has a rule after a catch-all: Istio's IST0130.
var unreachable = vs("api", `["*"]`, `[`+toDashboard+`, {match: [{uri: {prefix: /api/}}], route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}]`)

func TestIstioAnalyzers(t *testing.T) {
	mesh := func(name string) string {
		return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: " + name + ", namespace: team-a}\n" +
			"spec:\n  hosts: [reviews.team-a.svc.cluster.local]\n  http: [{route: [{destination: {host: reviews.team-a.svc.cluster.local}}]}]\n"
	}
	for name, c := range map[string]struct {
		docs []string
		want []string
	}{
		"a rule after a catch-all": {[]string{unreachable}, []string{"VirtualService/kubeflow/api IST0130 warning"}},
		"... fixed":                {[]string{vs("api", `["*"]`, `[{match: [{uri: {prefix: /api/}}], route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}]`)}, nil},
		"a gateway that does not exist": {[]string{strings.Replace(unreachable, "[kubeflow-gateway]", "[kubeflow-gateway, nogw]", 1)},
			[]string{"VirtualService/kubeflow/api IST0101 error", "VirtualService/kubeflow/api IST0130 warning", "VirtualService/kubeflow/api IST0132 warning"}},
		"two VirtualServices for one host in the mesh": {[]string{mesh("a"), mesh("b")},
			[]string{"VirtualService/team-a/a IST0109 error", "VirtualService/team-a/b IST0109 error"}},
		"... one": {[]string{mesh("a")}, nil},
	} {
		t.Run(name, func(t *testing.T) {
			wantFindings(t, checkOpts(t, options(t, overlay("oauth2-proxy")), c.docs...), c.want)
		})
	}
	// Istio's code, message and page.
	f := checkOpts(t, options(t, overlay("oauth2-proxy")), unreachable).Findings[0]
	if f.Doc != "https://istio.io/v1.29/docs/reference/config/analysis/ist0130/" || !strings.Contains(f.Fix, f.Doc) ||
		!strings.Contains(f.Reason, "rule #1 not used") || f.Source != "in.yaml, document 1" {
		t.Errorf("IST0130 finding: %+v", f)
	}
}

func TestSuppressions(t *testing.T) {
	want := []string{"VirtualService/kubeflow/api IST0130 warning"}
	wantFindings(t, checkOpts(t, withSuppressions(t, Suppression{"IST0130", "VirtualService kubeflow/*"}), unreachable), nil)
	wantFindings(t, checkOpts(t, withSuppressions(t, Suppression{"IST0130", "VirtualService team-a/*"}), unreachable), want)
	wantFindings(t, checkOpts(t, withSuppressions(t, Suppression{"IST0101", "VirtualService kubeflow/api"}), unreachable), want)
	annotated := strings.Replace(unreachable, "namespace: kubeflow\n", "namespace: kubeflow\n  annotations: {galley.istio.io/analyze-suppress: \"IST0101,IST0130\"}\n", 1)
	wantFindings(t, checkOpts(t, options(t, overlay("oauth2-proxy")), annotated), nil)

	s, notes, err := ParseSuppressions([]string{"IST0130=VirtualService kubeflow/*", "IST9999=Pod a/b"})
	if err != nil || len(s) != 2 || len(notes) != 1 || !strings.Contains(notes[0], "IST9999") {
		t.Errorf("ParseSuppressions: %v, %q, %v", s, notes, err)
	}
	for _, bad := range []string{"IST0130", "=Pod a/b", "IST0130=", " = "} {
		if _, _, err := ParseSuppressions([]string{bad}); err == nil || !strings.Contains(err.Error(), "want CODE=RESOURCE") {
			t.Errorf("ParseSuppressions(%q): %v", bad, err)
		}
	}
}

// Istio kinds of a version the analyzers do not know, and Istio objects
// they cannot parse, are notes, not findings or failures.
func TestAnalyzerInputNotes(t *testing.T) {
	r := checkOpts(t, options(t, overlay("oauth2-proxy")),
		strings.Replace(unreachable, "networking.istio.io/v1", "networking.istio.io/v1alpha9", 1),
		"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bad, namespace: team-a}\nspec:\n  host: 42\n  trafficPolicy: not-a-map\n")
	notes := strings.Join(r.Notes, "\n")
	for _, want := range []string{
		"VirtualService/kubeflow/api (in.yaml, document 1): Istio 1.29.1 knows versions v1, v1alpha3, v1beta1 of networking.istio.io/VirtualService, not v1alpha9; not analyzed",
		"Istio's analyzers could not read",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes:\n%s\nwant %q", notes, want)
		}
	}
}

// Every installation of the tree is clean for Istio's analyzers: the
// EnvoyFilter that strips the session cookie has a priority (IST0151) and
// acknowledges IST0133, which Istio reports for every EnvoyFilter; without
// the acknowledgement, the finding comes back.
func TestInstallationAnalyzed(t *testing.T) {
	for _, s := range corpusSettings {
		t.Run(s.name, func(t *testing.T) {
			wantFindings(t, CheckWorkloads(nil, options(t, s.setting)), nil)
		})
	}
	tree, err := build.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	installed, err := tree.InstallationObjects(build.DefaultInstallation("oauth2-proxy"))
	if err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	for _, x := range installed {
		if x.GetKind() == "EnvoyFilter" {
			x = x.DeepCopy()
			x.SetAnnotations(nil)
			_ = unstructured.SetNestedField(x.Object, int64(0), "spec", "priority")
		}
		objs = append(objs, x)
	}
	a, err := NewAnalysis(objs)
	if err != nil {
		t.Fatal(err)
	}
	findings, _ := a.Files(nil)
	var got []string
	for _, f := range findings {
		got = append(got, f.Object+" "+f.ID)
	}
	want := "EnvoyFilter/istio-system/istio-ingressgateway-remove-auth-cookie IST0133 EnvoyFilter/istio-system/istio-ingressgateway-remove-auth-cookie IST0151"
	if strings.Join(got, " ") != want {
		t.Errorf("without the annotation and the priority: %q, want %q", got, want)
	}
}

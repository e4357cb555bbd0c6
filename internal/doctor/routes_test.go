package doctor

import (
	"path/filepath"
	"strings"
	"testing"
)

// routing reads files of testdata/routing and checks them under the default
// overlay.
func routing(t *testing.T, names ...string) *Report {
	t.Helper()
	var paths []string
	for _, n := range names {
		paths = append(paths, filepath.Join("testdata/routing", n))
	}
	files, err := ReadFiles(paths, nil)
	if err != nil {
		t.Fatal(err)
	}
	return CheckWorkloads(files, options(t, overlay("oauth2-proxy")))
}

// kubeflowPaths are the paths of Kubeflow's own VirtualServices in
// testdata/routing/kubeflow.yaml, on the ingress gateway's "*" host.
var kubeflowPaths = []string{
	"prefix / (VirtualService/kubeflow/centraldashboard)",
	"prefix /jupyter/ (VirtualService/kubeflow/jupyter-web-app-jupyter-web-app)",
	"prefix /pipeline (VirtualService/kubeflow/ml-pipeline-ui)",
	"prefix /dex/ (VirtualService/auth/dex)",
	"prefix /oauth2/ (VirtualService/oauth2-proxy/oauth2-proxy)",
	"prefix /kserve-endpoints/ (VirtualService/kserve/kserve-models-web-application)",
}

func TestRouting(t *testing.T) {
	// Kubeflow's own VirtualServices, all on "*", with the tree: nothing.
	wantFindings(t, routing(t, "kubeflow.yaml"), nil)

	// A KServe VirtualService with its own host on the same gateway proxy
	// (through Kubeflow's Gateway; Knative's selects the same pods): its
	// host loses every route of the "*" virtual host.
	r := routing(t, "kubeflow.yaml", "kserve-path-based.yaml")
	wantFindings(t, r, []string{"VirtualService/kubeflow-user-example-com/sklearn-iris KF010 warning"})
	for _, p := range kubeflowPaths {
		if !strings.Contains(r.Findings[0].Reason, p) {
			t.Errorf("KF010 does not name the lost route %s: %s", p, r.Findings[0].Reason)
		}
	}
	if !strings.Contains(r.Findings[0].Fix, `hosts ["*"]`) {
		t.Errorf("KF010's fix does not align the hosts: %s", r.Findings[0].Fix)
	}
	// Kubeflow's workaround, the hosts of Kubeflow's own: fixed.
	wantFindings(t, routing(t, "kubeflow.yaml", "kserve-path-based.fixed.yaml"), nil)

	// A VirtualService that takes the pipelines path first.
	r = routing(t, "kubeflow.yaml", "duplicate-route.yaml")
	wantFindings(t, r, []string{"VirtualService/kubeflow/ml-pipeline-ui KF011 warning"})
	if !strings.Contains(r.Findings[0].Reason, "VirtualService/kubeflow/kfp-proxy") {
		t.Errorf("KF011 does not name the route that comes first: %s", r.Findings[0].Reason)
	}
	wantFindings(t, routing(t, "kubeflow.yaml", "duplicate-route.fixed.yaml"), nil)
}

// vs is a VirtualService on Kubeflow's gateway with hosts and routes given as
// YAML flow sequences.
func vs(name, hosts, http string) string {
	return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: " + name +
		"\n  namespace: kubeflow\nspec:\n  gateways: [kubeflow-gateway]\n  hosts: " + hosts + "\n  http: " + http + "\n"
}

const toDashboard = `{route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}`

func TestRoutingCases(t *testing.T) {
	dashboard := vs("dashboard", `["*"]`, `[{match: [{uri: {prefix: /}}], route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}]`)
	for name, c := range map[string]struct {
		docs []string
		want []string
	}{
		"a host of its own with a catch-all: nothing answers 404": {
			[]string{dashboard, vs("models", `[models.example.com]`, `[`+toDashboard+`]`)}, nil},
		"a host of its own with a path": {
			[]string{dashboard, vs("models", `[models.example.com]`, `[{match: [{uri: {prefix: /serving/}}], route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}]`)},
			[]string{"VirtualService/kubeflow/models KF010 warning"}},
		"a wildcard domain over *": {
			[]string{dashboard, vs("models", `["*.example.com"]`, `[{match: [{uri: {exact: /v1}}], route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}]`)},
			[]string{"VirtualService/kubeflow/models KF010 warning"}},
		"a host the gateway does not serve is not routed there": {
			[]string{dashboard, "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: only-a, namespace: kubeflow}\nspec:\n  selector: {app: nothing}\n  servers: [{hosts: [a.example.com], port: {name: http, number: 80, protocol: HTTP}}]\n",
				strings.Replace(vs("models", `[b.example.com]`, `[{match: [{uri: {prefix: /x/}}], route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}]`), "[kubeflow-gateway]", "[only-a]", 1)},
			[]string{"VirtualService/kubeflow/models IST0132 warning"}},
		"two catch-alls on one host: the second is never used": {
			[]string{dashboard, vs("zz-dashboard", `["*"]`, `[`+toDashboard+`]`)},
			[]string{"VirtualService/kubeflow/zz-dashboard KF011 warning"}},
		"a longer path after a shorter one of another VirtualService": {
			[]string{vs("a", `["*"]`, `[{match: [{uri: {prefix: /api}}], route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}]`),
				vs("b", `["*"]`, `[{match: [{uri: {prefix: /api/v2/}}], route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}]`)},
			[]string{"VirtualService/kubeflow/b KF011 warning"}},
		"... unless the earlier route also needs a header": {
			[]string{vs("a", `["*"]`, `[{match: [{uri: {prefix: /api}, headers: {x-team: {exact: a}}}], route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}]`),
				vs("b", `["*"]`, `[{match: [{uri: {prefix: /api/v2/}}], route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}]`)},
			nil},
		"... or the shorter one is a catch-all, which istiod moves last": {
			[]string{dashboard, vs("b", `["*"]`, `[{match: [{uri: {prefix: /api/v2/}}], route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}]`)},
			nil},
		"the mesh gateway is not a gateway proxy": {
			[]string{dashboard, strings.Replace(vs("models", `[models.example.com]`, `[{match: [{uri: {prefix: /serving/}}], route: [{destination: {host: centraldashboard.kubeflow.svc.cluster.local}}]}]`), "[kubeflow-gateway]", "[mesh]", 1)},
			nil},
	} {
		t.Run(name, func(t *testing.T) {
			_, r := judge(t, overlay("oauth2-proxy"), c.docs...)
			wantFindings(t, r, c.want)
		})
	}
}

// A VirtualService bound to a Gateway that neither the input nor the
// installation holds: Istio's IST0101 and IST0132, and a note that its routes are not
// checked.
func TestRoutingMissingGateway(t *testing.T) {
	_, r := judge(t, overlay("oauth2-proxy"), strings.Replace(vs("models", `[models.example.com]`, `[`+toDashboard+`]`), "[kubeflow-gateway]", "[knative-serving/knative-ingress-gateway]", 1))
	wantFindings(t, r, []string{"VirtualService/kubeflow/models IST0101 error", "VirtualService/kubeflow/models IST0132 warning"})
	if !strings.Contains(strings.Join(r.Notes, "\n"), "Gateway knative-serving/knative-ingress-gateway is neither in the input nor in the installation") {
		t.Errorf("no note on the missing Gateway: %q", r.Notes)
	}
}

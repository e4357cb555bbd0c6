package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"istio.io/istio/pilot/pkg/model"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
)

// The selectors of the gateways' pods.
var (
	ingressGateway = map[string]string{"app": "istio-ingressgateway", "istio": "ingressgateway"}
	localGateway   = map[string]string{"app": "cluster-local-gateway", "istio": "cluster-local-gateway"}
)

// gatewayListener is the listener of the gateways' HTTP port 80, which their
// Services send to the pods' port 8080.
const gatewayListener = "0.0.0.0_8080"

// The authentication and authorization of the gateways, as istiod sends it
// to their proxies: the default overlay with the opt-in oauth2-proxy
// policies and the cluster-local gateway's m2m-auth.
func TestGatewayAuthChain(t *testing.T) {
	in := build.Installation{Overlay: build.DefaultOverlay, ClusterLocalGateway: true, M2MAuth: true, KubeflowResources: true,
		Components: []string{build.OAuth2ProxyPolicies}}
	m := installMesh(t, in, objects(t, nil, in))
	c, _ := connect(t)
	t.Run("ingress gateway", func(t *testing.T) { report(t, m.gatewayProblems(t, c, ingressGateway)) })
	t.Run("cluster-local gateway with m2m-auth", func(t *testing.T) { report(t, m.gatewayProblems(t, c, localGateway)) })
	t.Run("sidecar keepalive", func(t *testing.T) { report(t, m.keepaliveProblems(t, c)) })
	m.istiodErrors(t)
}

// gatewayProblems connects to istiod as the proxy of the gateway selected by
// sel and checks the HTTP filters of its port-80 listener against the
// installation's objects that apply to the gateway:
//   - each CUSTOM AuthorizationPolicy: an ext_authz filter that calls its
//     provider as the mesh config defines it (service and port);
//   - each RequestAuthentication: a jwt_authn provider of each issuer, with
//     the keys fetched from the issuer, not Istio's reject-all stand-in;
//   - each AuthorizationPolicy with rules: an RBAC policy of each rule, under
//     its action (CUSTOM ones in the shadow rules that pick requests for
//     external authorization);
//   - each EnvoyFilter that adds an HTTP filter: that filter.
func (m *mesh) gatewayProblems(t *testing.T, c *kube.Client, sel map[string]string) []string {
	pod := runningPod(t, c, inject.Namespace, sel)
	p := connectProxy(t, c, pod, model.Router)
	return p.eventually(t, func() []string { return m.gatewayFilterProblems(t, p) })
}

// gatewayFilterProblems checks what istiod sent the gateway p last.
func (m *mesh) gatewayFilterProblems(t *testing.T, p *proxy) []string {
	pod := p.pod
	fs, problem := p.httpFilters(t, gatewayListener)
	if problem != "" {
		return []string{problem}
	}
	var names []string
	for _, f := range fs {
		names = append(names, f.name)
	}
	var problems []string
	fail := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf(format, args...)+fmt.Sprintf(" (filters of %s: %v)", pod.Name, names))
	}
	providers := m.extAuthzProviders(t)
	rbac := rbacPolicies(fs)
	for _, o := range m.applying(pod.Labels) {
		key := object.Key(o)
		switch o.GetKind() {
		case "AuthorizationPolicy":
			action, _, _ := unstructured.NestedString(o.Object, "spec", "action")
			if action == "" {
				action = "ALLOW"
			}
			if action == "CUSTOM" {
				name, _, _ := unstructured.NestedString(o.Object, "spec", "provider", "name")
				want, ok := providers[name]
				if !ok {
					fail("%s names provider %q, which the mesh config does not define", key, name)
				} else if !slices.ContainsFunc(filtersNamed(fs, "envoy.filters.http.ext_authz"), func(cfg map[string]any) bool {
					return at(cfg, "httpService.serverUri.cluster") == want
				}) {
					fail("%s: no ext_authz filter calls %s", key, want)
				}
			}
			rules, _, _ := unstructured.NestedSlice(o.Object, "spec", "rules")
			for i := range rules {
				if r := policyRule(o.GetNamespace(), o.GetName(), i); !slices.Contains(rbac[action], r) {
					fail("%s: no %s RBAC policy %s (%s policies: %v)", key, action, r, action, rbac[action])
				}
			}
		case "RequestAuthentication":
			rules, _, _ := unstructured.NestedSlice(o.Object, "spec", "jwtRules")
			for _, r := range rules {
				issuer, _ := r.(map[string]any)["issuer"].(string)
				if p := jwtProvider(fs, issuer); p == nil {
					fail("%s: no jwt_authn provider of issuer %s", key, issuer)
				} else if jwks, _ := at(p, "localJwks.inlineString").(string); jwks == "" || jwks == model.PublicOnlyJwks {
					fail("%s: istiod has no keys of issuer %s (local JWKS %q)", key, issuer, jwks)
				}
			}
		case "EnvoyFilter":
			patches, _, _ := unstructured.NestedSlice(o.Object, "spec", "configPatches")
			for _, p := range patches {
				if at(p, "applyTo") != "HTTP_FILTER" {
					continue
				}
				if name, _ := at(p, "patch.value.name").(string); len(filtersNamed(fs, name)) == 0 {
					fail("%s: no HTTP filter %s", key, name)
				}
			}
		}
	}
	return problems
}

// applying returns the installation's security and filter objects that apply
// to a pod of istio-system (the mesh's root namespace) with podLabels.
func (m *mesh) applying(podLabels map[string]string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range m.objs {
		path := []string{"spec", "selector", "matchLabels"}
		switch o.GetKind() {
		case "AuthorizationPolicy", "RequestAuthentication":
		case "EnvoyFilter":
			path = []string{"spec", "workloadSelector", "labels"}
		default:
			continue
		}
		if o.GetNamespace() != inject.Namespace {
			continue
		}
		sel, _, _ := unstructured.NestedStringMap(o.Object, path...)
		if labels.SelectorFromSet(sel).Matches(labels.Set(podLabels)) {
			out = append(out, o)
		}
	}
	return out
}

// extAuthzProviders returns the cluster that istiod names for each HTTP
// external authorization provider of the mesh config.
func (m *mesh) extAuthzProviders(t *testing.T) map[string]string {
	t.Helper()
	mesh := m.meshConfig(t)
	out := map[string]string{}
	providers, _ := mesh["extensionProviders"].([]any)
	for _, p := range providers {
		name, _ := at(p, "name").(string)
		if svc, ok := at(p, "envoyExtAuthzHttp.service").(string); ok {
			out[name] = fmt.Sprintf("outbound|%v||%s", at(p, "envoyExtAuthzHttp.port"), svc)
		}
	}
	return out
}

// meshConfig is the installation's mesh config.
func (m *mesh) meshConfig(t *testing.T) map[string]any {
	t.Helper()
	cm := object.Index(m.objs)[object.KeyOf("ConfigMap", inject.Namespace, revision.Find(m.objs).Mesh)]
	if cm == nil {
		t.Fatal("the installation has no mesh config")
	}
	s, _, _ := unstructured.NestedString(cm.Object, "data", "mesh")
	mesh := map[string]any{}
	if err := yaml.Unmarshal([]byte(s), &mesh); err != nil {
		t.Fatal(err)
	}
	return mesh
}

// jwtProvider returns the jwt_authn provider of issuer among fs.
func jwtProvider(fs []httpFilter, issuer string) map[string]any {
	for _, cfg := range filtersNamed(fs, "envoy.filters.http.jwt_authn") {
		providers, _ := cfg["providers"].(map[string]any)
		for _, p := range providers {
			if at(p, "issuer") == issuer {
				return p.(map[string]any)
			}
		}
	}
	return nil
}

// keepaliveProblems connects as the sidecar of a pod of the kubeflow
// namespace and checks that every outbound cluster istiod sends carries the
// mesh config's TCP keepalive.
func (m *mesh) keepaliveProblems(t *testing.T, c *kube.Client) []string {
	mesh := m.meshConfig(t)
	want := map[string]any{}
	for k, v := range map[string]string{"keepaliveTime": "time", "keepaliveInterval": "interval"} {
		d, _ := at(mesh, "tcpKeepalive."+v).(string)
		want[k] = float64(parseSeconds(t, d))
	}
	want["keepaliveProbes"] = at(mesh, "tcpKeepalive.probes")
	p := m.sidecar(t, c, "kubeflow", "web-app")
	return p.eventually(t, func() []string { return keepalive(p, want) })
}

// keepalive checks the TCP keepalive of the outbound clusters istiod sent p.
func keepalive(p *proxy, want map[string]any) []string {
	var problems []string
	n := 0
	for name, cl := range p.clusters {
		if !strings.HasPrefix(name, "outbound|") {
			continue
		}
		n++
		got, _ := at(cl, "upstreamConnectionOptions.tcpKeepalive").(map[string]any)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			problems = append(problems, fmt.Sprintf("cluster %s: TCP keepalive %v, want %v from the mesh config", name, got, want))
		}
	}
	if n == 0 {
		problems = append(problems, "istiod sent the sidecar no outbound cluster")
	}
	return problems
}

func parseSeconds(t *testing.T, d string) int {
	t.Helper()
	var s int
	if _, err := fmt.Sscanf(d, "%ds", &s); err != nil {
		t.Fatalf("duration %q: %v", d, err)
	}
	return s
}

// sidecar runs the injected sample workload name in ns and connects to
// istiod as its sidecar.
func (m *mesh) sidecar(t *testing.T, c *kube.Client, ns, name string) *proxy {
	return m.sidecarAs(t, c, ns, name, name)
}

// sidecarAs is sidecar for a copy of the sample named app, with the label
// app=app on its pods, to stand for another workload.
func (m *mesh) sidecarAs(t *testing.T, c *kube.Client, ns, name, app string) *proxy {
	t.Helper()
	samples, err := inject.Samples()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(samples, func(s *unstructured.Unstructured) bool { return s.GetNamespace() == ns && s.GetName() == name })
	if i < 0 {
		t.Fatalf("no sample %s/%s", ns, name)
	}
	s := samples[i]
	if app != name {
		s.SetName(app)
		for _, path := range [][]string{{"spec", "selector", "matchLabels", "app"}, {"spec", "template", "metadata", "labels", "app"}} {
			if err := unstructured.SetNestedField(s.Object, app, path...); err != nil {
				t.Fatal(err)
			}
		}
	}
	prepareNamespace(t, c, ns, inject.SampleNamespaceLabels(m.objs, ns))
	pod, err := createPod(t, c, s)
	if err != nil {
		t.Fatal(err)
	}
	return connectProxy(t, c, runningPod(t, c, ns, pod.Labels), model.SidecarProxy)
}

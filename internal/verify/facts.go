package verify

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/podsecurity"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// check is one named check and where it applies.
type check struct {
	id, title string
	applies   func(*target) bool
	run       func(*target) []Problem
}

func always(*target) bool { return true }

func with(p part) func(*target) bool { return func(t *target) bool { return t.has(p) } }

func install(pred func(t *target) bool) func(*target) bool {
	return func(t *target) bool { return t.has(partInstall) && pred(t) }
}

// checks are the facts of the specification, in order, then the checks
// beyond them.
var checks = []check{
	{"F1", "Istio CNI: node agent, injector values, istio-validation", install(func(t *target) bool { return t.overlay.CNI }), checkCNI},
	{"F2", "native sidecars", with(partInstall), checkNativeSidecars},
	{"F3", "cluster-local-gateway", with(partGateway), checkClusterLocalGateway},
	{"F4", "no egress gateway", always, checkNoEgressGateway},
	{"F5", "no PodDisruptionBudgets", always, checkNoPDB},
	{"F6", "authorization: deny by default, ingress gateway allowed", with(partInstall), checkAuthorization},
	{"F7", "gateways and namespaces", func(t *target) bool { return t.has(partInstall | partNamespace | partKubeflow) }, checkGatewaysNamespaces},
	{"F8", "TCP keepalive in the mesh config", with(partInstall), checkKeepalive},
	{"F9", "tracing off, upstream mesh settings kept", with(partInstall), checkTracing},
	{"F10", "istiod debug endpoints off", with(partInstall), istiodEnv("ENABLE_DEBUG_ON_HTTP", "false")},
	{"F11", "seccomp RuntimeDefault", func(t *target) bool { return t.has(partInstall | partGateway) }, checkSeccomp},
	{"F12", "Pod Security Standards of every pod template", always, checkPodSecurity},
	{"F13", "oauth2-proxy external authorization", install(func(t *target) bool { return t.overlay.OAuth2Proxy }), checkOAuth2Proxy},
	{"F14", "GKE CNI binary directory", install(func(t *target) bool { return t.overlay.GKE }), checkGKE},
	{"F15", "insecure: no CNI, istio-init, privileged namespaces", install(func(t *target) bool { return !t.overlay.CNI }), checkInsecure},
	{"F16", "Kubeflow ClusterRoles for Istio", with(partKubeflow), checkClusterRoles},
	{"F17", "m2m-auth on the cluster-local gateway", with(partM2M), checkM2M},
	{"F18", "Istio " + upstream.Release + " everywhere, no other Istio version", always, checkVersions},
	{"F19", "istiod validates Istio config with and without istio.io/rev, failing closed", with(partInstall), checkValidation},
	{"F20", "istio-system NetworkPolicies: every flow of the flow table allowed or refused", func(t *target) bool { return t.has(partNamespace) && t.has(partInstall) }, checkNetworkPolicies},
	{"F21", "owns only Istio's objects: no object another Kubeflow directory defines", always, checkOwnership},
	{"AUTH", "auth objects: CUSTOM providers in the mesh config, selectors match gateway pods, JWT issuers", func(t *target) bool { return t.has(partInstall | partGateway) }, checkAuthObjects},
	{"A1", "ambient: ztunnel and the CNI node agent in ambient mode", install(func(t *target) bool { return t.overlay.Ambient }), checkZtunnel},
	{"A2", "ambient: istiod serves ambient", install(func(t *target) bool { return t.overlay.Ambient }), istiodEnv("PILOT_ENABLE_AMBIENT", "true")},
	{"A3", "ambient: pods of ambient namespaces get no sidecar", install(func(t *target) bool { return t.overlay.Ambient }), checkAmbientNamespaces},
	{"E1", "mesh-wide Sidecar limits egress to the Kubeflow namespaces", with(partEgress), checkSidecarEgress},
	{"R1", "revision: its own istiod, config and webhooks, no default control plane, gateways on it", revisioned, checkRevision},
	{"R2", "revision: its injector and the default tag inject one way each, through its istiod", revisioned, checkRevisionInjection},
	{"WEBHOOKS", "every webhook reaches istiod's pods through its Service, on the revision that writes its CA bundle", with(partInstall), checkWebhookServices},
	{"WARN", "nothing the API server warns about: AppArmor profiles by field, not by the deprecated annotation", always, checkAppArmor},
	{"INJECT", "Istio's injector on sample Kubeflow workloads", with(partInstall), checkInjection},
	{"GITOPS", "Flux and Argo CD objects apply the overlay's installation, in the order it needs", with(partGitOps), checkGitOps},
	{"LABELS", "the namespace-labels Component for GitOps puts exactly these labels", with(partLabels), checkLabelsComponent},
	{"SCHEMA", "every object fits its schema", func(t *target) bool { return !t.has(partGitOps) }, checkSchema},
}

const (
	ns              = inject.Namespace
	discovery       = inject.DiscoveryContainer
	ingressGateway  = "istio-ingressgateway"
	localGateway    = "cluster-local-gateway"
	cniNode         = "istio-cni-node"
	cniNamespace    = "kube-system"
	runtimeDefault  = string(corev1.SeccompProfileTypeRuntimeDefault)
	enforceLabel    = podsecurity.EnforceLabel
	injectionLabel  = inject.InjectionLabel
	dataplaneLabel  = inject.DataplaneLabel
	chartLabel      = "helm.sh/chart"
	versionLabel    = "app.kubernetes.io/version"
	istioReleaseHub = "gcr.io/istio-release"
)

// meshConfig returns the parsed mesh config of the target.
func (t *target) meshConfig(p *problems) (map[string]any, *unstructured.Unstructured) {
	cm := t.require(p, "ConfigMap", ns, t.names.Mesh)
	if cm == nil {
		return nil, nil
	}
	m, err := meshOf(cm)
	if err != nil {
		p.because(object.Key(cm), "data.mesh", err.Error())
		return nil, nil
	}
	return m, cm
}

// injectorValues returns the parsed values of the injector ConfigMap.
func (t *target) injectorValues(p *problems) (map[string]any, *unstructured.Unstructured) {
	cm := t.require(p, "ConfigMap", ns, t.names.Injector)
	if cm == nil {
		return nil, nil
	}
	s, _, _ := unstructured.NestedString(cm.Object, "data", "values")
	m := map[string]any{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		p.because(object.Key(cm), "data.values", err.Error())
		return nil, nil
	}
	return m, cm
}

func expectValue(p *problems, cm *unstructured.Unstructured, key string, m map[string]any, path string, want any) {
	got, _ := lookup(m, path)
	if !equalJSON(got, want) {
		p.wrong(object.Key(cm), key+": "+path, got, show(want))
	}
}

// forInjections runs fn on every injected sample, recording injection
// errors; key names the sample in problems.
func (t *target) forInjections(p *problems, fn func(key string, r injection)) {
	results, err := t.injections()
	if err != nil {
		p.because("", "injection", err.Error())
		return
	}
	for _, r := range results {
		key := "injected " + object.Key(r.sample)
		switch {
		case r.err != nil:
			p.because(key, "", r.err.Error())
		case r.injected:
			fn(key, r)
		}
	}
}

// proxyContainer returns the sidecar of an injected pod, native or not.
func proxyContainer(spec *corev1.PodSpec) *corev1.Container {
	if c := container(spec, inject.ProxyContainer); c != nil {
		return c
	}
	c, _ := initContainer(spec, inject.ProxyContainer)
	return c
}

func checkCNI(t *target) []Problem {
	var p problems
	t.require(&p, "DaemonSet", cniNamespace, cniNode)
	if v, cm := t.injectorValues(&p); v != nil {
		expectValue(&p, cm, "values", v, "pilot.cni.enabled", true)
	}
	t.forInjections(&p, func(key string, r injection) {
		spec := &r.pod.Spec
		if c, _ := initContainer(spec, inject.ValidationContainer); c == nil {
			p.because(key, "initContainers", "no "+inject.ValidationContainer)
		}
		if c, _ := initContainer(spec, inject.InitContainer); c != nil {
			p.because(key, "initContainers", inject.InitContainer+" is injected although Istio CNI redirects traffic")
		}
	})
	return p
}

func checkNativeSidecars(t *target) []Problem {
	var p problems
	if d := t.require(&p, "Deployment", ns, t.names.Istiod); d != nil {
		expectEnv(&p, d, discovery, inject.NativeSidecarsEnv, "true")
	}
	t.forInjections(&p, func(key string, r injection) {
		spec := &r.pod.Spec
		proxy, at := initContainer(spec, inject.ProxyContainer)
		if proxy == nil {
			p.because(key, "initContainers", inject.ProxyContainer+" is not a native sidecar (not among the init containers)")
			return
		}
		if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			p.wrong(key, "initContainers["+inject.ProxyContainer+"].restartPolicy", restartPolicy(proxy), show("Always"))
		}
		for i, c := range spec.InitContainers {
			if inject.IsIstioContainer(c.Name) || i > at {
				continue
			}
			p.because(key, "initContainers", fmt.Sprintf("user init container %s runs before %s and has no proxy", c.Name, inject.ProxyContainer))
		}
	})
	return p
}

func restartPolicy(c *corev1.Container) any {
	if c.RestartPolicy == nil {
		return nil
	}
	return string(*c.RestartPolicy)
}

func checkClusterLocalGateway(t *target) []Problem {
	var p problems
	sel := map[string]any{"app": localGateway, "istio": localGateway}
	if d := t.require(&p, "Deployment", ns, localGateway); d != nil {
		expect(&p, d, "spec.template.metadata.labels.app", localGateway)
		expect(&p, d, "spec.template.metadata.labels.istio", localGateway)
		expectEnv(&p, d, "istio-proxy", "ISTIO_META_ROUTER_MODE", "sni-dnat")
		expectPodSeccomp(&p, d)
		if tpl := podTemplate(&p, d); tpl != nil {
			if c := container(&tpl.Spec, "istio-proxy"); c != nil {
				expectQuantities(&p, object.Key(d), "containers[istio-proxy].resources.requests", c.Resources.Requests, "100m", "128Mi")
				expectQuantities(&p, object.Key(d), "containers[istio-proxy].resources.limits", c.Resources.Limits, "2000m", "1024Mi")
			}
			sa := tpl.Spec.ServiceAccountName
			if sa == "" || !strings.HasPrefix(sa, localGateway) {
				p.wrong(object.Key(d), "serviceAccountName", sa, "the gateway's own ServiceAccount")
			} else {
				t.require(&p, "ServiceAccount", ns, sa)
				checkGatewayRBAC(t, &p, sa)
			}
		}
	}
	if s := t.require(&p, "Service", ns, localGateway); s != nil {
		expect(&p, s, "spec.type", "ClusterIP")
		expect(&p, s, "spec.selector", sel)
		ports, _ := field(s, "spec.ports")
		want := []map[string]any{{"name": "status-port", "port": 15020, "targetPort": 15020}, {"name": "http2", "port": 80, "targetPort": 8080}}
		if !equalJSON(portSummary(ports), want) {
			p.wrong(object.Key(s), "spec.ports", portSummary(ports), show(want))
		}
	}
	if h := t.require(&p, "HorizontalPodAutoscaler", ns, localGateway); h != nil {
		expect(&p, h, "spec.minReplicas", 1)
		expect(&p, h, "spec.maxReplicas", 5)
		expect(&p, h, "spec.scaleTargetRef.name", localGateway)
		expect(&p, h, "spec.metrics", []any{map[string]any{"type": "Resource", "resource": map[string]any{
			"name": "cpu", "target": map[string]any{"type": "Utilization", "averageUtilization": 80}}}})
	}
	if g := t.require(&p, "Gateway", ns, localGateway); g != nil {
		expectHTTPGateway(&p, g, sel)
	}
	if !t.has(partM2M) {
		if a := t.require(&p, "AuthorizationPolicy", ns, localGateway); a != nil {
			expect(&p, a, "spec.action", "ALLOW")
			expect(&p, a, "spec.rules", []any{map[string]any{}})
			expect(&p, a, "spec.selector.matchLabels", sel)
		}
	}
	return p
}

// checkGatewayRBAC finds the Role and RoleBinding rendered for the gateway's
// ServiceAccount.
func checkGatewayRBAC(t *target, p *problems, sa string) {
	var role, binding bool
	for _, o := range t.objs {
		if o.GetNamespace() != ns || !strings.HasPrefix(o.GetName(), localGateway) {
			continue
		}
		switch o.GetKind() {
		case "Role":
			role = true
		case "RoleBinding":
			subjects, _ := field(o, "subjects")
			if strings.Contains(show(subjects), `"name":"`+sa+`"`) {
				binding = true
			}
		}
	}
	if !role {
		p.because("Role/"+ns+"/"+localGateway+"*", "", "missing")
	}
	if !binding {
		p.because("RoleBinding/"+ns+"/"+localGateway+"*", "subjects", "no binding for ServiceAccount "+sa)
	}
}

// expectQuantities records a problem unless l holds exactly cpu and memory
// equal to the given quantities (2000m equals 2).
func expectQuantities(p *problems, key, field string, l corev1.ResourceList, cpu, memory string) {
	want := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(memory)}
	ok := len(l) == len(want)
	for name, q := range want {
		got, found := l[name]
		ok = ok && found && got.Cmp(q) == 0
	}
	if !ok {
		p.wrong(key, field, l, fmt.Sprintf("cpu %s, memory %s", cpu, memory))
	}
}

// portSummary keeps name, port and targetPort of a Service's ports.
func portSummary(ports any) []map[string]any {
	list, _ := ports.([]any)
	var out []map[string]any
	for _, x := range list {
		m, _ := x.(map[string]any)
		out = append(out, map[string]any{"name": m["name"], "port": m["port"], "targetPort": m["targetPort"]})
	}
	return out
}

// expectHTTPGateway records a problem unless g is an Istio Gateway with the
// selector sel and one server: plain HTTP on port 80 for every host.
func expectHTTPGateway(p *problems, g *unstructured.Unstructured, sel map[string]any) {
	expect(p, g, "spec.selector", sel)
	servers, _ := field(g, "spec.servers")
	list, _ := servers.([]any)
	if len(list) != 1 {
		p.wrong(object.Key(g), "spec.servers", servers, "one server")
		return
	}
	s, _ := list[0].(map[string]any)
	port, _ := s["port"].(map[string]any)
	got := map[string]any{"number": port["number"], "protocol": port["protocol"], "hosts": s["hosts"]}
	want := map[string]any{"number": 80, "protocol": "HTTP", "hosts": []any{"*"}}
	if !equalJSON(got, want) {
		p.wrong(object.Key(g), "spec.servers[0]", got, show(want))
	}
}

func checkNoEgressGateway(t *target) []Problem {
	var p problems
	for _, o := range t.objs {
		if strings.HasPrefix(o.GetName(), "istio-egressgateway") {
			p.because(object.Key(o), "", "egress gateway objects are not part of the distribution")
		}
	}
	return p
}

// appArmorAnnotation is the prefix of the AppArmor annotations that the API
// server warns about since Kubernetes 1.30.
const appArmorAnnotation = "container.apparmor.security.beta.kubernetes.io/"

// checkAppArmor checks that no pod template sets AppArmor by annotation, and
// that the CNI node agent, which upstream runs unconfined, gets that by its
// securityContext field.
func checkAppArmor(t *target) []Problem {
	var p problems
	for _, o := range t.objs {
		if !object.HasPodTemplate(o) {
			continue
		}
		tpl := podTemplate(&p, o)
		if tpl == nil {
			continue
		}
		for k, v := range tpl.Annotations {
			if strings.HasPrefix(k, appArmorAnnotation) {
				p.wrong(object.Key(o), "spec.template.metadata.annotations["+k+"]", v,
					"no annotation (deprecated since Kubernetes 1.30): the container's securityContext.appArmorProfile")
			}
		}
		if o.GetKind() != "DaemonSet" || o.GetName() != cniNode {
			continue
		}
		var got any
		if c := container(&tpl.Spec, "install-cni"); c != nil && c.SecurityContext != nil && c.SecurityContext.AppArmorProfile != nil {
			got = string(c.SecurityContext.AppArmorProfile.Type)
		}
		if got != string(corev1.AppArmorProfileTypeUnconfined) {
			p.wrong(object.Key(o), "containers[install-cni].securityContext.appArmorProfile.type", got, show(string(corev1.AppArmorProfileTypeUnconfined))+" (as upstream's annotation asks)")
		}
	}
	return p
}

func checkNoPDB(t *target) []Problem {
	var p problems
	for _, o := range t.objs {
		if o.GetKind() == "PodDisruptionBudget" {
			p.because(object.Key(o), "", "PodDisruptionBudgets block node drains of small clusters")
		}
	}
	return p
}

func checkAuthorization(t *target) []Problem {
	var p problems
	if a := t.require(&p, "AuthorizationPolicy", ns, "global-deny-all"); a != nil {
		if spec, ok := field(a, "spec"); ok && !equalJSON(spec, map[string]any{}) {
			p.wrong(object.Key(a), "spec", spec, "{} (deny every request no ALLOW policy matches)")
		}
	}
	if a := t.require(&p, "AuthorizationPolicy", ns, ingressGateway); a != nil {
		expect(&p, a, "spec.action", "ALLOW")
		expect(&p, a, "spec.rules", []any{map[string]any{}})
		expect(&p, a, "spec.selector.matchLabels", map[string]any{"app": ingressGateway, "istio": "ingressgateway"})
	}
	return p
}

func checkGatewaysNamespaces(t *target) []Problem {
	var p problems
	if t.has(partInstall) {
		if g := t.require(&p, "Gateway", ns, ingressGateway); g != nil {
			expectHTTPGateway(&p, g, map[string]any{"app": ingressGateway, "istio": "ingressgateway"})
		}
		if s := t.require(&p, "Service", ns, ingressGateway); s != nil {
			expect(&p, s, "spec.type", "ClusterIP")
		}
	}
	if t.has(partKubeflow) {
		if g := t.require(&p, "Gateway", "kubeflow", "kubeflow-gateway"); g != nil {
			expectHTTPGateway(&p, g, map[string]any{"istio": "ingressgateway"})
		}
	}
	if t.has(partNamespace) {
		if n := t.require(&p, "Namespace", "", ns); n != nil {
			expectLabel(&p, n, injectionLabel, "disabled")
			// ztunnel and the CNI node agent, which need privileges, run in
			// kube-system.
			expectLabel(&p, n, enforceLabel, "restricted")
		}
	}
	return p
}

func checkKeepalive(t *target) []Problem {
	var p problems
	if m, cm := t.meshConfig(&p); m != nil {
		for path, want := range map[string]any{"tcpKeepalive.time": "10s", "tcpKeepalive.interval": "5s", "tcpKeepalive.probes": 3} {
			expectValue(&p, cm, "mesh", m, path, want)
		}
	}
	return p
}

// tracingPaths are the mesh settings F9 changes on purpose.
var tracingPaths = []string{"defaultConfig.tracing", "enableTracing"}

func checkTracing(t *target) []Problem {
	var p problems
	m, cm := t.meshConfig(&p)
	if m == nil {
		return p
	}
	if got, ok := lookup(m, "defaultConfig.tracing"); !ok || !equalJSON(got, map[string]any{}) {
		p.wrong(object.Key(cm), "mesh: defaultConfig.tracing", got, "{} (no tracer)")
	}
	expectValue(&p, cm, "mesh", m, "enableTracing", false)
	up, err := t.env.upstreamMesh(t.names)
	if err != nil {
		p.because(object.Key(cm), "mesh", "cannot render the upstream mesh config to compare: "+err.Error())
		return p
	}
	want := map[string]any{}
	leaves(up, "", want)
	for _, path := range sortedKeys(want) {
		if slices.ContainsFunc(tracingPaths, func(tp string) bool { return path == tp || strings.HasPrefix(path, tp+".") }) {
			continue
		}
		if got, ok := lookup(m, path); !ok || !equalJSON(got, want[path]) {
			p.wrong(object.Key(cm), "mesh: "+path, got, show(want[path])+" (upstream Istio "+upstream.Release+"; merge changes into the mesh config, do not replace it)")
		}
	}
	return p
}

// istiodEnv is the check that istiod's discovery container sets env name to
// value.
func istiodEnv(name, value string) func(*target) []Problem {
	return func(t *target) []Problem {
		var p problems
		if d := t.require(&p, "Deployment", ns, t.names.Istiod); d != nil {
			expectEnv(&p, d, discovery, name, value)
		}
		return p
	}
}

func checkSeccomp(t *target) []Problem {
	var p problems
	if t.has(partInstall) {
		for _, name := range []string{t.names.Istiod, ingressGateway} {
			if d := t.require(&p, "Deployment", ns, name); d != nil {
				expectPodSeccomp(&p, d)
			}
		}
		if v, cm := t.injectorValues(&p); v != nil {
			expectValue(&p, cm, "values", v, "global.proxy.seccompProfile.type", runtimeDefault)
		}
		t.forInjections(&p, func(key string, r injection) {
			spec := &r.pod.Spec
			c := proxyContainer(spec)
			if c == nil {
				p.because(key, "", "no "+inject.ProxyContainer)
				return
			}
			var got any
			if c.SecurityContext != nil && c.SecurityContext.SeccompProfile != nil {
				got = string(c.SecurityContext.SeccompProfile.Type)
			}
			if got != runtimeDefault {
				p.wrong(key, inject.ProxyContainer+".securityContext.seccompProfile.type", got, show(runtimeDefault))
			}
		})
	}
	if t.has(partGateway) {
		if d := t.require(&p, "Deployment", ns, localGateway); d != nil {
			expectPodSeccomp(&p, d)
		}
	}
	return p
}

var oauth2Provider = map[string]any{
	"name": "oauth2-proxy",
	"envoyExtAuthzHttp": map[string]any{
		"service":                      "oauth2-proxy.oauth2-proxy.svc.cluster.local",
		"port":                         80,
		"includeRequestHeadersInCheck": []any{"authorization", "cookie"},
		"headersToUpstreamOnAllow":     []any{"authorization", "path", "x-auth-request-email", "x-auth-request-groups", "x-auth-request-user"},
		"headersToDownstreamOnDeny":    []any{"content-type", "set-cookie"},
	},
}

func checkOAuth2Proxy(t *target) []Problem {
	var p problems
	if m, cm := t.meshConfig(&p); m != nil {
		providers, _ := lookup(m, "extensionProviders")
		list, _ := providers.([]any)
		var found any
		for _, x := range list {
			if pm, ok := x.(map[string]any); ok && pm["name"] == "oauth2-proxy" {
				found = pm
			}
		}
		if !equalJSON(found, oauth2Provider) {
			p.wrong(object.Key(cm), "mesh: extensionProviders[oauth2-proxy]", found, show(oauth2Provider))
		}
	}
	if d := t.require(&p, "Deployment", ns, t.names.Istiod); d != nil {
		expectEnv(&p, d, discovery, "PILOT_JWT_PUB_KEY_REFRESH_INTERVAL", "1m")
	}
	checkCookieStripped(t, &p)
	if t.has(partPolicies) {
		checkOAuth2ProxyPolicies(t, &p)
	}
	return p
}

// sessionCookie is the cookie oauth2-proxy keeps Kubeflow's sessions in.
const sessionCookie = "oauth2_proxy_kubeflow"

// checkCookieStripped checks the EnvoyFilter that removes the session cookie
// at the ingress gateway, before requests reach workloads.
func checkCookieStripped(t *target, p *problems) {
	f := t.require(p, "EnvoyFilter", ns, "istio-ingressgateway-remove-auth-cookie")
	if f == nil {
		return
	}
	key := object.Key(f)
	sel, ok := field(f, "spec.workloadSelector.labels")
	if m, isMap := sel.(map[string]any); !ok || !isMap || !t.selectsPods(ns, m) {
		p.wrong(key, "spec.workloadSelector.labels", sel, "the labels of the ingress gateway's pods")
	}
	patches, _, _ := unstructured.NestedSlice(f.Object, "spec", "configPatches")
	for _, x := range patches {
		m, _ := x.(map[string]any)
		code, _, _ := unstructured.NestedString(m, "patch", "value", "typed_config", "inlineCode")
		if m["applyTo"] == "HTTP_FILTER" && strings.Contains(code, sessionCookie) {
			return
		}
	}
	p.because(key, "spec.configPatches", "no HTTP filter that removes the "+sessionCookie+" cookie")
}

// checkOAuth2ProxyPolicies checks the opt-in policies: requests without an
// Authorization header go to oauth2-proxy, every request needs a JWT, and
// Dex's tokens carry the user to Kubeflow's headers.
func checkOAuth2ProxyPolicies(t *target, p *problems) {
	if a := t.require(p, "AuthorizationPolicy", ns, "istio-ingressgateway-oauth2-proxy"); a != nil {
		expect(p, a, "spec.action", "CUSTOM")
		expect(p, a, "spec.provider.name", "oauth2-proxy")
		if r, _ := field(a, "spec.rules"); !strings.Contains(show(r), "request.headers[authorization]") {
			p.wrong(object.Key(a), "spec.rules", r, "rules that send requests without an Authorization header to oauth2-proxy")
		}
	}
	if a := t.require(p, "AuthorizationPolicy", ns, "istio-ingressgateway-require-jwt"); a != nil {
		expect(p, a, "spec.action", "DENY")
		if r, _ := field(a, "spec.rules"); !strings.Contains(show(r), "notRequestPrincipals") {
			p.wrong(object.Key(a), "spec.rules", r, "a rule denying requests without a request principal")
		}
	}
	if ra := t.require(p, "RequestAuthentication", ns, "dex-jwt"); ra != nil {
		rules, _ := field(ra, "spec.jwtRules")
		for _, want := range []string{"http://dex.auth.svc.cluster.local:5556/dex", "kubeflow-userid", "kubeflow-groups"} {
			if !strings.Contains(show(rules), want) {
				p.wrong(object.Key(ra), "spec.jwtRules", rules, "to name "+want)
			}
		}
	}
}

func checkGKE(t *target) []Problem {
	var p problems
	ds := t.require(&p, "DaemonSet", cniNamespace, cniNode)
	if ds == nil {
		return p
	}
	if got := cniBinDir(ds); got != build.GKECNIBinDir {
		p.wrong(object.Key(ds), "volumes[cni-bin-dir].hostPath.path", got, show(build.GKECNIBinDir))
	}
	// Otherwise the build is that of the same overlay off GKE. GKE admits
	// the system-node-critical pods of the CNI node agent and ztunnel in
	// kube-system without a ResourceQuota, so nothing is added for it.
	other := t.overlay.GKEOf
	theirs, err := t.env.objects(t.sibling(other))
	if err != nil {
		p.because("", "", "cannot build the "+other+" overlay to compare: "+err.Error())
		return p
	}
	mine := object.Index(t.own)
	index := object.Index(theirs)
	for _, key := range sortedKeys(mine) {
		o, ok := index[key]
		if !ok {
			p.because(key, "", "not in the "+other+" overlay")
			continue
		}
		a, b := mine[key], o
		if key == object.Key(ds) {
			a, b = withoutCNIBinDir(a), withoutCNIBinDir(b)
		}
		if !equalJSON(object.Canonical(a.Object), object.Canonical(b.Object)) {
			p.because(key, "", "differs from the "+other+" overlay beyond the CNI binary directory")
		}
	}
	for _, key := range sortedKeys(index) {
		if _, ok := mine[key]; !ok {
			p.because(key, "", "in the "+other+" overlay but missing here")
		}
	}
	return p
}

func cniBinDir(ds *unstructured.Unstructured) string {
	spec, err := object.PodSpec(ds)
	if err != nil || spec == nil {
		return ""
	}
	for _, v := range spec.Volumes {
		if v.Name == "cni-bin-dir" && v.HostPath != nil {
			return v.HostPath.Path
		}
	}
	return ""
}

func withoutCNIBinDir(ds *unstructured.Unstructured) *unstructured.Unstructured {
	c := ds.DeepCopy()
	_ = object.EditPodSpec(c, func(spec *corev1.PodSpec) {
		for i := range spec.Volumes {
			if spec.Volumes[i].Name == "cni-bin-dir" && spec.Volumes[i].HostPath != nil {
				spec.Volumes[i].HostPath.Path = ""
			}
		}
	})
	return c
}

// insecureNamespaces are where Kubeflow runs injected workloads.
var insecureNamespaces = []string{"kubeflow", "kubeflow-user-example-com", "oauth2-proxy", "auth", "knative-serving"}

func checkInsecure(t *target) []Problem {
	var p problems
	for _, o := range t.objs {
		chart := o.GetLabels()[chartLabel]
		if strings.HasPrefix(o.GetName(), "istio-cni") || strings.HasPrefix(chart, "cni-") {
			p.because(object.Key(o), "", "Istio CNI object left behind in an overlay without CNI")
		}
	}
	v, cm := t.injectorValues(&p)
	if v != nil {
		expectValue(&p, cm, "values", v, "pilot.cni.enabled", false)
	}
	d := t.require(&p, "Deployment", ns, t.names.Istiod)
	if d != nil && v != nil {
		if tpl := podTemplate(&p, d); tpl != nil {
			if c := container(&tpl.Spec, discovery); c != nil {
				hub, tag := splitImage(c.Image)
				expectValue(&p, cm, "values", v, "global.hub", hub)
				expectValue(&p, cm, "values", v, "global.tag", tag)
			}
		}
	}
	t.forInjections(&p, func(key string, r injection) {
		spec := &r.pod.Spec
		c, _ := initContainer(spec, inject.InitContainer)
		if c == nil {
			p.because(key, "initContainers", "no "+inject.InitContainer)
			return
		}
		var added []string
		if c.SecurityContext != nil && c.SecurityContext.Capabilities != nil {
			for _, a := range c.SecurityContext.Capabilities.Add {
				added = append(added, string(a))
			}
		}
		for _, want := range []string{"NET_ADMIN", "NET_RAW"} {
			if !slices.Contains(added, want) {
				p.wrong(key, inject.InitContainer+".securityContext.capabilities.add", added, "to include "+want)
			}
		}
	})
	if d != nil {
		checkKeepsBaseEnv(t, &p, d)
	}
	for _, n := range insecureNamespaces {
		if o := t.require(&p, "Namespace", "", n); o != nil {
			expectLabel(&p, o, enforceLabel, "privileged")
		}
	}
	if t.has(partNamespace) {
		if o := t.require(&p, "Namespace", "", ns); o != nil {
			expectLabel(&p, o, enforceLabel, "restricted")
		}
	}
	return p
}

// checkKeepsBaseEnv records every env entry of istiod in istio-install/base
// that d lacks or changes; for a revision, of istiod in the revision of the
// default overlay.
func checkKeepsBaseEnv(t *target, p *problems, d *unstructured.Unstructured) {
	dir := build.InstallBaseDir
	if t.names.Revision != revision.Default {
		o, _ := build.LookupOverlay(build.DefaultOverlay)
		dir = o.RevisionPath
	}
	base, err := t.env.objects(dirSpec(dir))
	if err != nil {
		p.because(object.Key(d), "env", "cannot build "+dir+" to compare: "+err.Error())
		return
	}
	bd := object.Index(base)[object.Key(d)]
	if bd == nil {
		p.because(object.Key(d), "env", "not in "+dir)
		return
	}
	baseSpec, err1 := object.PodSpec(bd)
	spec, err2 := object.PodSpec(d)
	if err1 != nil || err2 != nil {
		return
	}
	bc, c := container(baseSpec, discovery), container(spec, discovery)
	if bc == nil || c == nil {
		return
	}
	for _, e := range bc.Env {
		if slices.ContainsFunc(c.Env, func(x corev1.EnvVar) bool { return equalJSON(x, e) }) {
			continue
		}
		got, _ := envValue(c, e.Name)
		p.wrong(object.Key(d), "containers[discovery].env["+e.Name+"]", got, show(e)+" as in "+dir)
	}
}

// splitImage splits registry/name:tag into registry and tag.
func splitImage(image string) (hub, tag string) {
	repo, tag := object.SplitImage(image)
	if i := strings.LastIndex(repo, "/"); i >= 0 {
		return repo[:i], tag
	}
	return "", tag
}

func checkClusterRoles(t *target) []Problem {
	var p problems
	read := []any{"get", "list", "watch"}
	if r := t.require(&p, "ClusterRole", "", "kubeflow-istio-admin"); r != nil {
		expectLabel(&p, r, "rbac.authorization.kubeflow.org/aggregate-to-kubeflow-admin", "true")
		expect(&p, r, "aggregationRule.clusterRoleSelectors", []any{map[string]any{
			"matchLabels": map[string]any{"rbac.authorization.kubeflow.org/aggregate-to-kubeflow-istio-admin": "true"}}})
		if rules, ok := field(r, "rules"); ok {
			p.wrong(object.Key(r), "rules", rules, "no rules: the aggregation controller writes them, and applying any conflicts with it")
		}
	}
	if r := t.require(&p, "ClusterRole", "", "kubeflow-istio-edit"); r != nil {
		expectLabel(&p, r, "rbac.authorization.kubeflow.org/aggregate-to-kubeflow-edit", "true")
		expectLabel(&p, r, "rbac.authorization.kubeflow.org/aggregate-to-kubeflow-istio-admin", "true")
		expect(&p, r, "rules", []any{map[string]any{"apiGroups": []any{"istio.io", "networking.istio.io"}, "resources": []any{"*"}, "verbs": read}})
	}
	if r := t.require(&p, "ClusterRole", "", "kubeflow-istio-view"); r != nil {
		expectLabel(&p, r, "rbac.authorization.kubeflow.org/aggregate-to-kubeflow-view", "true")
		expect(&p, r, "rules", []any{
			map[string]any{"apiGroups": []any{"istio.io", "networking.istio.io"}, "resources": []any{"*"}, "verbs": read},
			map[string]any{"apiGroups": []any{"security.istio.io"}, "resources": []any{"authorizationpolicies"}, "verbs": read},
		})
	}
	return p
}

// expectLabel records a problem unless o carries label with value want.
func expectLabel(p *problems, o *unstructured.Unstructured, label, want string) {
	if got, ok := o.GetLabels()[label]; !ok || got != want {
		var found any
		if ok {
			found = got
		}
		p.wrong(object.Key(o), "metadata.labels["+label+"]", found, show(want))
	}
}

var m2mHealthPaths = []any{"/healthz", "/ready", "/wait-for-drain", "/metrics", "/stats/prometheus", "*/healthz", "*/ready"}

func checkM2M(t *target) []Problem {
	var p problems
	sel := map[string]any{"app": localGateway, "istio": localGateway}
	if ra := t.require(&p, "RequestAuthentication", ns, localGateway+"-jwt"); ra != nil {
		expect(&p, ra, "spec.selector.matchLabels", sel)
		rules, _ := field(ra, "spec.jwtRules")
		list, _ := rules.([]any)
		issuers := map[string]bool{}
		for _, x := range list {
			r, _ := x.(map[string]any)
			iss, _ := r["issuer"].(string)
			issuers[iss] = true
			if r["forwardOriginalToken"] != true {
				p.wrong(object.Key(ra), "spec.jwtRules["+iss+"].forwardOriginalToken", r["forwardOriginalToken"], "true")
			}
			want := []any{map[string]any{"header": "kubeflow-userid", "claim": "sub"}}
			if !equalJSON(r["outputClaimToHeaders"], want) {
				p.wrong(object.Key(ra), "spec.jwtRules["+iss+"].outputClaimToHeaders", r["outputClaimToHeaders"], show(want))
			}
		}
		for _, iss := range []string{"https://kubernetes.default.svc.cluster.local", "https://kubernetes.default.svc"} {
			if !issuers[iss] {
				p.because(object.Key(ra), "spec.jwtRules", "no rule for issuer "+iss)
			}
		}
	}
	deny := false
	for _, o := range t.objs {
		if o.GetKind() != "AuthorizationPolicy" || o.GetNamespace() != ns {
			continue
		}
		action, _ := field(o, "spec.action")
		labels, _ := field(o, "spec.selector.matchLabels")
		rules, _ := field(o, "spec.rules")
		want := []any{map[string]any{
			"from": []any{map[string]any{"source": map[string]any{"notRequestPrincipals": []any{"*"}}}},
			"to":   []any{map[string]any{"operation": map[string]any{"notPaths": m2mHealthPaths}}},
		}}
		if action == "DENY" && equalJSON(labels, sel) && equalJSON(rules, want) {
			deny = true
		}
	}
	if !deny {
		p.because("AuthorizationPolicy/"+ns+"/*", "", "no DENY policy on the cluster-local gateway for requests without a request principal outside the health and metrics paths")
	}
	if a := t.require(&p, "AuthorizationPolicy", ns, localGateway); a != nil {
		expect(&p, a, "spec.action", "ALLOW")
		expect(&p, a, "spec.rules", []any{
			map[string]any{"from": []any{map[string]any{"source": map[string]any{"requestPrincipals": []any{"*"}}}}},
			map[string]any{"to": []any{map[string]any{"operation": map[string]any{"paths": m2mHealthPaths}}}},
		})
	}
	return p
}

// istioImages are the images of the Istio release.
var istioImages = []string{"pilot", "proxyv2", "install-cni", "ztunnel"}

func checkVersions(t *target) []Problem {
	var p problems
	for _, o := range t.objs {
		key := object.Key(o)
		walkStrings(o.Object, "", func(path, s string) {
			for _, v := range upstream.OtherVersions(s) {
				p.wrong(key, path, v, "no Istio version but "+upstream.Release)
			}
		})
		checkLabels(&p, key, "metadata.labels", o.GetLabels())
		if tpl, err := object.PodTemplate(o); err == nil && tpl != nil {
			checkLabels(&p, key, "pod labels", tpl.Labels)
			for _, c := range append(append([]corev1.Container{}, tpl.Spec.InitContainers...), tpl.Spec.Containers...) {
				hub, tag := splitImage(c.Image)
				name := strings.TrimPrefix(strings.TrimSuffix(c.Image, ":"+tag), hub+"/")
				if hub == istioReleaseHub || slices.Contains(istioImages, name) {
					if tag != upstream.Release {
						p.wrong(key, "containers["+c.Name+"].image", c.Image, "tag "+upstream.Release)
					}
				}
			}
		}
	}
	if t.has(partInstall) {
		if v, cm := t.injectorValues(&p); v != nil {
			expectValue(&p, cm, "values", v, "global.tag", upstream.Release)
		}
	}
	return p
}

func checkLabels(p *problems, key, where string, labels map[string]string) {
	if chart, ok := labels[chartLabel]; ok && !strings.HasSuffix(chart, "-"+upstream.Release) {
		p.wrong(key, where+"["+chartLabel+"]", chart, "a chart of release "+upstream.Release)
	}
	if v, ok := labels[versionLabel]; ok && labels[chartLabel] != "" && v != upstream.Release {
		p.wrong(key, where+"["+versionLabel+"]", v, show(upstream.Release))
	}
}

// walkStrings calls fn on every string key and value under v.
func walkStrings(v any, path string, fn func(path, s string)) {
	switch x := v.(type) {
	case map[string]any:
		for _, k := range sortedKeys(x) {
			p := k
			if path != "" {
				p = path + "." + k
			}
			fn(p, k)
			walkStrings(x[k], p, fn)
		}
	case []any:
		for i, e := range x {
			walkStrings(e, fmt.Sprintf("%s[%d]", path, i), fn)
		}
	case string:
		fn(path, x)
	}
}

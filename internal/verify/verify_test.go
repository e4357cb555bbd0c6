package verify

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/schema"
	"github.com/kubeflow/kfistio/internal/testutil"
	"github.com/kubeflow/kfistio/internal/upstream"
)

var (
	envOnce sync.Once
	shared  *env
)

// testEnv is one env over the embedded tree for the whole test binary, so
// builds are shared between tests.
func testEnv(t *testing.T) *env {
	t.Helper()
	envOnce.Do(func() {
		tree, err := build.Embedded()
		if err != nil {
			t.Fatal(err)
		}
		shared = &env{tree: tree, builds: map[string]*built{}, meshes: map[string]*upstreamMesh{}, schemas: &schemas{
			validators: map[[32]byte]*schema.Validator{}, verdicts: map[[32]byte][]string{},
		}}
	})
	return shared
}

func TestTreePasses(t *testing.T) {
	tree, err := build.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Run(Options{Tree: tree})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Passed {
		var b strings.Builder
		_ = rep.WriteText(&b)
		t.Fatalf("verify fails on the tree:\n%s", b.String())
	}
	// Every check runs somewhere.
	ran := map[string]bool{}
	for _, tg := range rep.Targets {
		for _, c := range tg.Checks {
			ran[c.ID] = true
		}
	}
	for _, c := range checks {
		if !ran[c.id] {
			t.Errorf("check %s ran on no target", c.id)
		}
	}
}

// objects is a mutable copy of a build.
type objects struct {
	t    *testing.T
	objs []*unstructured.Unstructured
}

func (m *objects) get(key string) *unstructured.Unstructured {
	for _, o := range m.objs {
		if object.Key(o) == key {
			return o
		}
	}
	m.t.Fatalf("no %s in the build", key)
	return nil
}

func (m *objects) remove(key string) {
	m.get(key)
	m.objs = slices.DeleteFunc(m.objs, func(o *unstructured.Unstructured) bool { return object.Key(o) == key })
}

func (m *objects) add(doc string) {
	objs, err := object.Parse("test", []byte(doc))
	if err != nil {
		m.t.Fatal(err)
	}
	m.objs = append(m.objs, objs...)
}

func (m *objects) set(key string, value any, path ...string) {
	if err := unstructured.SetNestedField(m.get(key).Object, value, path...); err != nil {
		m.t.Fatal(err)
	}
}

// setEnv sets env var name of container c of the Deployment key.
func (m *objects) setEnv(key, c, name, value string) {
	m.editContainer(key, c, func(ctr map[string]any) {
		env, _ := ctr["env"].([]any)
		for _, e := range env {
			if em := e.(map[string]any); em["name"] == name {
				em["value"] = value
				return
			}
		}
		ctr["env"] = append(env, map[string]any{"name": name, "value": value})
	})
}

func (m *objects) dropEnv(key, c, name string) {
	m.editContainer(key, c, func(ctr map[string]any) {
		env, _ := ctr["env"].([]any)
		ctr["env"] = slices.DeleteFunc(env, func(e any) bool { return e.(map[string]any)["name"] == name })
	})
}

func (m *objects) editContainer(key, c string, edit func(map[string]any)) {
	o := m.get(key)
	path := append(append([]string{}, object.PodTemplatePath(o)...), "spec", "containers")
	list, _, _ := unstructured.NestedSlice(o.Object, path...)
	for _, x := range list {
		if x.(map[string]any)["name"] == c {
			edit(x.(map[string]any))
		}
	}
	if err := unstructured.SetNestedSlice(o.Object, list, path...); err != nil {
		m.t.Fatal(err)
	}
}

// editMesh changes the mesh config as a map.
func (m *objects) editMesh(edit func(map[string]any)) {
	key := "ConfigMap/istio-system/istio"
	mesh, err := meshOf(m.get(key))
	if err != nil {
		m.t.Fatal(err)
	}
	edit(mesh)
	b, _ := yaml.Marshal(mesh)
	m.set(key, string(b), "data", "mesh")
}

// editValues changes the injector values as a map.
func (m *objects) editValues(edit func(map[string]any)) {
	key := "ConfigMap/istio-system/istio-sidecar-injector"
	s, _, _ := unstructured.NestedString(m.get(key).Object, "data", "values")
	v := map[string]any{}
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		m.t.Fatal(err)
	}
	edit(v)
	b, _ := json.Marshal(v)
	m.set(key, string(b), "data", "values")
}

func setPath(m map[string]any, value any, path ...string) {
	for _, k := range path[:len(path)-1] {
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	m[path[len(path)-1]] = value
}

// checkMutated builds the target of s, applies mutate to a copy of its
// objects and runs every check.
func checkMutated(t *testing.T, s spec, mutate func(*objects)) Target {
	t.Helper()
	e := testEnv(t)
	return e.checkBuilt(s, mutated(t, e, s, mutate))
}

// mutated is a copy of the build of s, changed by mutate (if not nil).
func mutated(t *testing.T, e *env, s spec, mutate func(*objects)) []*unstructured.Unstructured {
	t.Helper()
	objs, err := e.objects(s)
	if err != nil {
		t.Fatal(err)
	}
	m := &objects{t: t}
	for _, o := range objs {
		m.objs = append(m.objs, o.DeepCopy())
	}
	mutate(m)
	return m.objs
}

// revInst is the installation of overlay with its control plane as the
// tree's revision.
func revInst(overlay string) spec {
	in := build.DefaultInstallation(overlay)
	in.Revision = upstream.Revision
	return installationSpec(in)
}

// revNames are the names of the tree's revision.
var revNames = revision.NamesOf(upstream.Revision)

// inst is the installation of overlay, with components.
func inst(overlay string, components ...string) spec {
	in := build.DefaultInstallation(overlay)
	in.Components = components
	return installationSpec(in)
}

func failed(tg Target) []string {
	var ids []string
	for _, c := range tg.Checks {
		if !c.Passed {
			ids = append(ids, c.ID)
		}
	}
	return ids
}

const (
	istiodKey   = "Deployment/istio-system/istiod"
	ingressKey  = "Deployment/istio-system/istio-ingressgateway"
	cniKey      = "DaemonSet/kube-system/istio-cni-node"
	ingressSvc  = "Service/istio-system/istio-ingressgateway"
	fluxInstall = "Kustomization/flux-system/istio-install"
)

// Each check fails, naming itself, when the one thing it guards is broken in
// a copy of the built objects.
func TestEachCheckFailsOnABrokenBuild(t *testing.T) {
	type testCase struct {
		name, check string
		target      spec
		mutate      func(*objects)
	}
	cases := []testCase{
		{"no CNI DaemonSet", "F1", inst("oauth2-proxy"), func(m *objects) { m.remove(cniKey) }},
		{"AppArmor by annotation", "WARN", inst("oauth2-proxy"), func(m *objects) {
			m.set(cniKey, map[string]any{"container.apparmor.security.beta.kubernetes.io/install-cni": "unconfined"}, "spec", "template", "metadata", "annotations")
		}},
		{"CNI agent confined by AppArmor", "WARN", inst("gke"), func(m *objects) {
			m.editContainer(cniKey, "install-cni", func(c map[string]any) { delete(c, "securityContext") })
		}},
		{"Flux: istio-install does not wait for the CRDs", "GITOPS", dirSpec("gitops/flux/base"), func(m *objects) {
			m.set(fluxInstall, []any{map[string]any{"name": "istio-namespace"}}, "spec", "dependsOn")
		}},
		{"Flux: Ready before istiod is", "GITOPS", dirSpec("gitops/flux/overlays/gke"), func(m *objects) {
			m.set(fluxInstall, false, "spec", "wait")
		}},
		{"Flux: depends on a Kustomization that is not there", "GITOPS", dirSpec("gitops/flux/base"), func(m *objects) {
			m.set("Kustomization/flux-system/cluster-local-gateway", []any{map[string]any{"name": "istio"}}, "spec", "dependsOn")
		}},
		{"Flux: a removed overlay", "GITOPS", dirSpec("gitops/flux/overlays/insecure"), func(m *objects) {
			m.set(fluxInstall, "./common/istio/istio-install/overlays/removed", "spec", "path")
		}},
		{"Flux: the path of another overlay", "GITOPS", dirSpec("gitops/flux/overlays/ambient"), func(m *objects) {
			m.set(fluxInstall, "./common/istio/istio-install/overlays/oauth2-proxy", "spec", "path")
		}},
		{"Flux: no cluster-local gateway", "GITOPS", dirSpec("gitops/flux/base"), func(m *objects) {
			m.remove("Kustomization/flux-system/cluster-local-gateway")
		}},
		{"Argo CD: the gateway in the install's wave", "GITOPS", dirSpec("gitops/argocd/base"), func(m *objects) {
			m.set("Application/argocd/cluster-local-gateway", map[string]any{"argocd.argoproj.io/sync-wave": "1"}, "metadata", "annotations")
		}},
		{"Argo CD: client-side apply", "GITOPS", dirSpec("gitops/argocd/overlays/ambient"), func(m *objects) {
			m.set("Application/argocd/istio-crds", []any{}, "spec", "syncPolicy", "syncOptions")
		}},
		{"Argo CD: a path outside common/istio", "GITOPS", dirSpec("gitops/argocd/base"), func(m *objects) {
			m.set("Application/argocd/istio-install", "istio/istio-install/overlays/oauth2-proxy", "spec", "source", "path")
		}},
		{"labels Component: another label", "LABELS", dirSpec(build.InsecureLabelsDir), func(m *objects) {
			m.set("Namespace/kubeflow", map[string]any{"pod-security.kubernetes.io/enforce": "baseline"}, "metadata", "labels")
		}},
		{"labels Component: a namespace it leaves out", "LABELS", dirSpec(build.AmbientLabelsDir), func(m *objects) {
			m.add("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kubeflow-extra\n  labels:\n    istio.io/dataplane-mode: ambient\n")
		}},
		{"injector without CNI", "F1", inst("gke"), func(m *objects) {
			m.editValues(func(v map[string]any) { setPath(v, false, "pilot", "cni", "enabled") })
		}},
		{"native sidecars off", "F2", inst("oauth2-proxy"), func(m *objects) {
			m.setEnv(istiodKey, "discovery", "ENABLE_NATIVE_SIDECARS", "false")
		}},
		{"gateway HPA", "F3", dirSpec("cluster-local-gateway/base"), func(m *objects) {
			m.set("HorizontalPodAutoscaler/istio-system/cluster-local-gateway", int64(10), "spec", "maxReplicas")
		}},
		{"gateway service ports", "F3", dirSpec("cluster-local-gateway/overlays/m2m-auth"), func(m *objects) {
			m.set("Service/istio-system/cluster-local-gateway", []any{map[string]any{"name": "http2", "port": int64(80), "targetPort": int64(8080)}}, "spec", "ports")
		}},
		{"gateway router mode", "F3", inst("insecure"), func(m *objects) {
			m.dropEnv("Deployment/istio-system/cluster-local-gateway", "istio-proxy", "ISTIO_META_ROUTER_MODE")
		}},
		{"gateway RBAC", "F3", dirSpec("cluster-local-gateway/base"), func(m *objects) {
			m.remove("RoleBinding/istio-system/cluster-local-gateway-sds")
		}},
		{"egress gateway", "F4", dirSpec("istio-install/base"), func(m *objects) {
			m.add("apiVersion: v1\nkind: Service\nmetadata:\n  name: istio-egressgateway\n  namespace: istio-system\n")
		}},
		{"PodDisruptionBudget", "F5", inst("insecure"), func(m *objects) {
			m.add("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: istiod\n  namespace: istio-system\nspec:\n  minAvailable: 1\n")
		}},
		{"deny-all allows", "F6", dirSpec("istio-install/overlays/oauth2-proxy"), func(m *objects) {
			m.set("AuthorizationPolicy/istio-system/global-deny-all", map[string]any{"action": "ALLOW", "rules": []any{map[string]any{}}}, "spec")
		}},
		{"gateway policy selector", "F6", inst("gke"), func(m *objects) {
			m.set("AuthorizationPolicy/istio-system/istio-ingressgateway", map[string]any{"app": "other"}, "spec", "selector", "matchLabels")
		}},
		{"LoadBalancer ingress", "F7", inst("gke"), func(m *objects) { m.set(ingressSvc, "LoadBalancer", "spec", "type") }},
		{"namespace injected", "F7", dirSpec("istio-namespace/base"), func(m *objects) {
			m.set("Namespace/istio-system", map[string]any{"pod-security.kubernetes.io/enforce": "restricted"}, "metadata", "labels")
		}},
		{"kubeflow gateway port", "F7", dirSpec("kubeflow-istio-resources/base"), func(m *objects) {
			m.set("Gateway/kubeflow/kubeflow-gateway", []any{map[string]any{"port": map[string]any{"number": int64(8080), "name": "http", "protocol": "HTTP"}, "hosts": []any{"*"}}}, "spec", "servers")
		}},
		{"keepalive", "F8", inst("oauth2-proxy"), func(m *objects) {
			m.editMesh(func(mesh map[string]any) { setPath(mesh, "20s", "tcpKeepalive", "time") })
		}},
		{"tracer", "F9", inst("oauth2-proxy"), func(m *objects) {
			m.editMesh(func(mesh map[string]any) {
				setPath(mesh, map[string]any{"zipkin": map[string]any{"address": "zipkin.istio-system:9411"}}, "defaultConfig", "tracing")
			})
		}},
		{"mesh replaced by a copy", "F9", dirSpec("istio-install/overlays/insecure"), func(m *objects) {
			m.editMesh(func(mesh map[string]any) { delete(mesh, "defaultProviders") })
		}},
		{"debug on", "F10", dirSpec("istio-install/base"), func(m *objects) {
			m.setEnv(istiodKey, "discovery", "ENABLE_DEBUG_ON_HTTP", "true")
		}},
		{"istiod seccomp", "F11", inst("oauth2-proxy"), func(m *objects) {
			m.set(istiodKey, map[string]any{}, "spec", "template", "spec", "securityContext")
		}},
		{"sidecar seccomp", "F11", dirSpec("istio-install/overlays/gke"), func(m *objects) {
			m.editValues(func(v map[string]any) { setPath(v, map[string]any{}, "global", "proxy", "seccompProfile") })
		}},
		{"gateway seccomp", "F11", dirSpec("cluster-local-gateway/base"), func(m *objects) {
			m.set("Deployment/istio-system/cluster-local-gateway", map[string]any{}, "spec", "template", "spec", "securityContext")
		}},
		{"privileged istiod", "F12", inst("oauth2-proxy"), func(m *objects) {
			m.editContainer(istiodKey, "discovery", func(c map[string]any) {
				c["securityContext"] = map[string]any{"privileged": true}
			})
		}},
		{"no ext-authz provider", "F13", inst("insecure"), func(m *objects) {
			m.editMesh(func(mesh map[string]any) { delete(mesh, "extensionProviders") })
		}},
		{"session cookie kept", "F13", inst("gke"), func(m *objects) {
			m.remove("EnvoyFilter/istio-system/istio-ingressgateway-remove-auth-cookie")
		}},
		{"no JWT required", "F13", inst("oauth2-proxy", build.OAuth2ProxyPolicies), func(m *objects) {
			m.set("AuthorizationPolicy/istio-system/istio-ingressgateway-require-jwt", map[string]any{}, "spec")
		}},
		{"JWKS refresh", "F13", dirSpec("istio-install/overlays/oauth2-proxy"), func(m *objects) {
			m.dropEnv(istiodKey, "discovery", "PILOT_JWT_PUB_KEY_REFRESH_INTERVAL")
		}},
		{"GKE bin dir", "F14", inst("gke"), func(m *objects) {
			_ = object.EditPodSpec(m.get(cniKey), func(spec *corev1.PodSpec) {
				for i := range spec.Volumes {
					if spec.Volumes[i].Name == "cni-bin-dir" {
						spec.Volumes[i].HostPath.Path = "/opt/cni/bin"
					}
				}
			})
		}},
		{"GKE differs elsewhere", "F14", dirSpec("istio-install/overlays/gke"), func(m *objects) {
			m.set(istiodKey, int64(3), "spec", "replicas")
		}},
		{"CNI left behind", "F15", inst("insecure"), func(m *objects) {
			m.add("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: istio-cni\n  namespace: kube-system\n")
		}},
		{"istiod env replaced", "F15", dirSpec("istio-install/overlays/insecure"), func(m *objects) {
			m.dropEnv(istiodKey, "discovery", "REVISION")
		}},
		{"injector hub", "F15", inst("insecure"), func(m *objects) {
			m.editValues(func(v map[string]any) { setPath(v, "docker.io/istio", "global", "hub") })
		}},
		{"editors may write", "F16", dirSpec("kubeflow-istio-resources/base"), func(m *objects) {
			m.set("ClusterRole/kubeflow-istio-edit", []any{map[string]any{"apiGroups": []any{"istio.io", "networking.istio.io"}, "resources": []any{"*"}, "verbs": []any{"get", "list", "watch", "create"}}}, "rules")
		}},
		{"aggregated rules set", "F16", dirSpec("kubeflow-istio-resources/base"), func(m *objects) {
			m.set("ClusterRole/kubeflow-istio-admin", []any{}, "rules")
		}},
		{"no service-account tokens", "F17", dirSpec("cluster-local-gateway/overlays/m2m-auth"), func(m *objects) {
			m.remove("RequestAuthentication/istio-system/cluster-local-gateway-jwt")
		}},
		{"m2m allows all", "F17", dirSpec("cluster-local-gateway/overlays/m2m-auth"), func(m *objects) {
			m.set("AuthorizationPolicy/istio-system/cluster-local-gateway", []any{map[string]any{}}, "spec", "rules")
		}},
		{"stale image", "F18", inst("oauth2-proxy"), func(m *objects) {
			m.editContainer(istiodKey, "discovery", func(c map[string]any) { c["image"] = "gcr.io/istio-release/pilot:1.28.3" })
		}},
		{"stale chart label", "F18", dirSpec("istio-crds/base"), func(m *objects) {
			m.set("CustomResourceDefinition/gateways.networking.istio.io", "base-1.28.3", "metadata", "labels", "helm.sh/chart")
		}},
		{"no default-revision validator", "F19", inst("oauth2-proxy"), func(m *objects) {
			m.remove("ValidatingWebhookConfiguration/istiod-default-validator")
		}},
		{"default validator needs the revision label", "F19", dirSpec("istio-install/base"), func(m *objects) {
			hooks, _, _ := unstructured.NestedSlice(m.get("ValidatingWebhookConfiguration/istiod-default-validator").Object, "webhooks")
			hooks[0].(map[string]any)["objectSelector"] = map[string]any{"matchLabels": map[string]any{"istio.io/rev": "default"}}
			m.set("ValidatingWebhookConfiguration/istiod-default-validator", hooks, "webhooks")
		}},
		{"revision validator fails open", "F19", inst("insecure"), func(m *objects) {
			hooks, _, _ := unstructured.NestedSlice(m.get("ValidatingWebhookConfiguration/istio-validator-istio-system").Object, "webhooks")
			hooks[0].(map[string]any)["failurePolicy"] = "Ignore"
			m.set("ValidatingWebhookConfiguration/istio-validator-istio-system", hooks, "webhooks")
		}},
		{"no ztunnel", "A1", inst("ambient"), func(m *objects) { m.remove("DaemonSet/kube-system/ztunnel") }},
		{"istiod trusts no ztunnel", "A1", dirSpec("istio-install/overlays/ambient-gke"), func(m *objects) {
			m.dropEnv(istiodKey, "discovery", "CA_TRUSTED_NODE_ACCOUNTS")
		}},
		{"CNI agent not in ambient mode", "A1", dirSpec("istio-install/overlays/ambient-oauth2-proxy"), func(m *objects) {
			m.set("ConfigMap/kube-system/istio-cni-config", "false", "data", "AMBIENT_ENABLED")
		}},
		{"istiod without ambient", "A2", dirSpec("istio-install/overlays/ambient"), func(m *objects) {
			m.dropEnv(istiodKey, "discovery", "PILOT_ENABLE_AMBIENT")
		}},
		{"an object GKE does not need", "F14", inst("ambient-gke"), func(m *objects) {
			m.add("apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: ztunnel\n  namespace: kube-system\nspec:\n  hard: {pods: \"5000\"}\n")
		}},
		{"a policy without policyTypes selects every pod", "F20", inst("oauth2-proxy"), func(m *objects) {
			m.set("NetworkPolicy/istio-system/allow-istiod-control-plane", map[string]any{"podSelector": map[string]any{}}, "spec")
		}},
		{"oauth2-proxy's policy in an overlay", "F21", inst("gke"), func(m *objects) {
			m.add("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: dex-jwt\n  namespace: istio-system\nspec: {}\n")
		}},
		{"Kubeflow namespace in an overlay", "F21", dirSpec("istio-install/overlays/insecure"), func(m *objects) {
			m.add("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kubeflow\n")
		}},
		{"namespace labels with more than labels", "F21", dirSpec(build.InsecureLabelsDir), func(m *objects) {
			m.set("Namespace/kubeflow", map[string]any{"a": "b"}, "metadata", "annotations")
		}},
		{"unknown provider", "AUTH", inst("oauth2-proxy", build.OAuth2ProxyPolicies), func(m *objects) {
			m.set("AuthorizationPolicy/istio-system/istio-ingressgateway-oauth2-proxy", "oauth2proxy", "spec", "provider", "name")
		}},
		{"no providers in the mesh config", "AUTH", inst("ambient-oauth2-proxy", build.OAuth2ProxyPolicies), func(m *objects) {
			m.editMesh(func(mesh map[string]any) { delete(mesh, "extensionProviders") })
		}},
		{"selector of no gateway", "AUTH", inst("insecure", build.OAuth2ProxyPolicies), func(m *objects) {
			m.set("RequestAuthentication/istio-system/dex-jwt", map[string]any{"app": "istio-ingress"}, "spec", "selector", "matchLabels")
		}},
		{"cluster-local gateway policy selects nothing", "AUTH", dirSpec("cluster-local-gateway/overlays/m2m-auth"), func(m *objects) {
			m.set("AuthorizationPolicy/istio-system/cluster-local-gateway", map[string]any{"app": "cluster-local"}, "spec", "selector", "matchLabels")
		}},
		{"issuer not a URL", "AUTH", inst("oauth2-proxy", build.OAuth2ProxyPolicies), func(m *objects) {
			m.set("RequestAuthentication/istio-system/dex-jwt", []any{map[string]any{"issuer": "dex"}}, "spec", "jwtRules")
		}},
		{"no egress exception", "E1", inst("oauth2-proxy", "sidecar-egress"), func(m *objects) {
			m.remove("Sidecar/kubeflow/notebook-controller")
		}},
		{"egress unlimited", "E1", inst("oauth2-proxy", "sidecar-egress"), func(m *objects) {
			m.set("Sidecar/istio-system/default", []any{map[string]any{"hosts": []any{"*/*"}}}, "spec", "egress")
		}},
		{"default istiod left", "R1", revInst("oauth2-proxy"), func(m *objects) {
			m.add("apiVersion: v1\nkind: Service\nmetadata:\n  name: istiod\n  namespace: istio-system\n")
		}},
		{"object of another revision", "R1", revInst("insecure"), func(m *objects) {
			m.set("ConfigMap/istio-system/"+revNames.Mesh, map[string]any{"istio.io/rev": "default"}, "metadata", "labels")
		}},
		{"gateway on the default istiod", "R1", dirSpec("istio-install/revision/gke"), func(m *objects) {
			m.setEnv(ingressKey, "istio-proxy", "CA_ADDR", "istiod.istio-system.svc:15012")
		}},
		{"cluster-local gateway on the default mesh config", "R1", revInst("oauth2-proxy"), func(m *objects) {
			_ = object.EditPodSpec(m.get("Deployment/istio-system/cluster-local-gateway"), func(spec *corev1.PodSpec) {
				for i := range spec.Volumes {
					if spec.Volumes[i].Name == "config-volume" {
						spec.Volumes[i].ConfigMap.Name = "istio"
					}
				}
			})
		}},
		{"gateway applied at the start of an upgrade", "R1", revInst("oauth2-proxy"), func(m *objects) {
			m.set(ingressKey, map[string]any{"app": "istio-ingressgateway", "istio.io/rev": upstream.Revision, "operator.istio.io/component": "IngressGateways",
				revision.StepLabel: revision.StepStart}, "metadata", "labels")
		}},
		{"no default tag", "R2", revInst("gke"), func(m *objects) {
			m.remove("MutatingWebhookConfiguration/istio-revision-tag-default")
		}},
		{"revision injects enabled namespaces too", "R2", dirSpec("istio-install/revision/oauth2-proxy"), func(m *objects) {
			key := "MutatingWebhookConfiguration/" + revNames.InjectorWebhook
			hooks, _, _ := unstructured.NestedSlice(m.get(key).Object, "webhooks")
			hooks[0].(map[string]any)["namespaceSelector"] = map[string]any{}
			m.set(key, hooks, "webhooks")
		}},
		{"tag calls the default istiod", "R2", revInst("insecure"), func(m *objects) {
			key := "MutatingWebhookConfiguration/istio-revision-tag-default"
			hooks, _, _ := unstructured.NestedSlice(m.get(key).Object, "webhooks")
			for _, h := range hooks {
				h.(map[string]any)["clientConfig"].(map[string]any)["service"].(map[string]any)["name"] = "istiod"
			}
			m.set(key, hooks, "webhooks")
		}},
		{"istiod Service selects other pods", "WEBHOOKS", inst("oauth2-proxy"), func(m *objects) {
			m.set("Service/istio-system/istiod", map[string]any{"app": "istiod", "istio": "other"}, "spec", "selector")
		}},
		{"webhook port istiod does not serve", "WEBHOOKS", revInst("gke"), func(m *objects) {
			m.set("Service/istio-system/"+revNames.Istiod, []any{map[string]any{"name": "https-webhook", "port": int64(443), "targetPort": int64(15443)}}, "spec", "ports")
		}},
		{"validator of no revision", "WEBHOOKS", dirSpec("istio-install/overlays/insecure"), func(m *objects) {
			m.set("ValidatingWebhookConfiguration/istio-validator-istio-system", map[string]any{"app": "istiod"}, "metadata", "labels")
		}},
		{"proxy from another hub", "INJECT", inst("oauth2-proxy"), func(m *objects) {
			m.editValues(func(v map[string]any) { setPath(v, "docker.io/istio", "global", "hub") })
		}},
		{"privileged sidecar", "INJECT", dirSpec("istio-install/overlays/gke"), func(m *objects) {
			m.editValues(func(v map[string]any) { setPath(v, true, "global", "proxy", "privileged") })
		}},
		{"unknown field", "SCHEMA", dirSpec("istio-install/base"), func(m *objects) {
			m.set("Gateway/istio-system/istio-ingressgateway", map[string]any{"app": "x"}, "spec", "selectr")
		}},
		{"wrong type", "SCHEMA", inst("gke"), func(m *objects) {
			m.set(istiodKey, "two", "spec", "replicas")
		}},
		{"unknown built-in field", "SCHEMA", dirSpec("cluster-local-gateway/base"), func(m *objects) {
			m.set("Service/istio-system/cluster-local-gateway", "x", "spec", "typo")
		}},
	}
	for _, c := range cases {
		t.Run(c.check+" "+c.name, func(t *testing.T) {
			tg := checkMutated(t, c.target, c.mutate)
			if !slices.Contains(failed(tg), c.check) {
				var b strings.Builder
				_ = (&Report{Targets: []Target{tg}}).WriteText(&b)
				t.Fatalf("%s did not fail:\n%s", c.check, b.String())
			}
		})
	}
	// Checks of the labels an overlay puts on other namespaces: the labels
	// directory's build is mutated.
	labelCases := []testCase{
		{"namespace not privileged", "F15", dirSpec("istio-install/overlays/insecure"), func(m *objects) {
			m.set("Namespace/kubeflow", map[string]any{}, "metadata", "labels")
		}},
		{"kubeflow not ambient", "A3", inst("ambient-oauth2-proxy"), func(m *objects) {
			m.set("Namespace/kubeflow", map[string]any{}, "metadata", "labels")
		}},
		{"ambient namespace injected", "A3", inst("ambient"), func(m *objects) {
			m.set("Namespace/kubeflow", map[string]any{"istio.io/dataplane-mode": "ambient", "istio-injection": "enabled"}, "metadata", "labels")
		}},
	}
	for _, c := range labelCases {
		t.Run(c.check+" "+c.name, func(t *testing.T) {
			e := testEnv(t)
			objs, err := e.objects(c.target)
			if err != nil {
				t.Fatal(err)
			}
			labels := mutated(t, e, dirSpec(c.target.overlay.LabelsDir()), c.mutate)
			tg := e.checkWith(c.target, objs, labels)
			if !slices.Contains(failed(tg), c.check) {
				t.Fatalf("%s did not fail: failed %v", c.check, failed(tg))
			}
		})
	}
	cases = append(cases, labelCases...)
	// Every check has a case.
	for _, ch := range checks {
		if !slices.ContainsFunc(cases, func(c testCase) bool { return c.check == ch.id }) {
			t.Errorf("check %s has no failing case", ch.id)
		}
	}
}

// Removing any one Kubeflow change from a copy of the tree makes verify fail
// with the fact that change keeps.
func TestRemovingAKubeflowChangeFailsItsFact(t *testing.T) {
	cases := []struct {
		file, line string // the line removed from file
		targets    []string
		want       string
	}{
		{"istio-install/base/kustomization.yaml", "- path: patches/istiod.yaml", []string{"istio-install/base"}, "F10"},
		{"istio-install/base/kustomization.yaml", "- path: patches/istio-ingressgateway.yaml", []string{"istio-install/base"}, "F7"},
		{"istio-install/base/kustomization.yaml", "- gateway.yaml", []string{"istio-install/base"}, "F7"},
		{"istio-install/base/kustomization.yaml", "- authorizationpolicies.yaml", []string{"istio-install/base"}, "F6"},
		{"istio-install/base/kustomization.yaml", "- path: patches/istio-cni-node.yaml", []string{"istio-install/base"}, "WARN"},
		{"istio-install/components/oauth2-proxy/kustomization.yaml", "- path: istiod.yaml", []string{"istio-install/overlays/oauth2-proxy"}, "F13"},
		{"istio-install/components/oauth2-proxy/kustomization.yaml", "- upstream", []string{"istio-install/overlays/oauth2-proxy"}, "F13"},
		{"istio-install/overlays/gke/kustomization.yaml", "- ../../components/gke-cni", []string{"istio-install/overlays/gke"}, "F14"},
		{"namespace-labels/insecure/namespaces.yaml", "    pod-security.kubernetes.io/enforce: privileged", []string{"insecure"}, "F15"},
		{"istio-install/components/no-cni/kustomization.yaml", "- upstream", []string{"istio-install/overlays/insecure"}, "BUILD"},
		{"cluster-local-gateway/base/kustomization.yaml", "- path: patches/seccomp.yaml", []string{"cluster-local-gateway/base"}, "F11"},
		{"cluster-local-gateway/base/kustomization.yaml", "- gateway.yaml", []string{"cluster-local-gateway/base"}, "F3"},
		{"cluster-local-gateway/overlays/m2m-auth/kustomization.yaml", "- deny-unauthenticated.yaml", []string{"cluster-local-gateway/overlays/m2m-auth"}, "F17"},
		{"kubeflow-istio-resources/base/kustomization.yaml", "- cluster-roles.yaml", []string{"kubeflow-istio-resources/base"}, "F16"},
		{"istio-namespace/base/namespace.yaml", "    pod-security.kubernetes.io/enforce: restricted", []string{"istio-namespace/base"}, "F7"},
		{"istio-install/base/kustomization.yaml", "- install.yaml", []string{"istio-install/base"}, "BUILD"},
		{"istio-install/base/kustomization.yaml", "- path: patches/default-validator.yaml", []string{"oauth2-proxy"}, "F19"},
		{"istio-install/base/kustomization.yaml", "- path: patches/validating-webhook.yaml", []string{"istio-install/base"}, "F19"},
		{"istio-install/overlays/ambient-gke/kustomization.yaml", "- ../../components/gke-cni", []string{"istio-install/overlays/ambient-gke"}, "F14"},
		{"namespace-labels/ambient/namespaces.yaml", "    istio.io/dataplane-mode: ambient", []string{"istio-install/overlays/ambient"}, "A3"},
		{"istio-install/components/ambient/kustomization.yaml", "- upstream", []string{"istio-install/overlays/ambient"}, "BUILD"},
	}
	for _, c := range cases {
		t.Run(c.want+" "+c.file+" "+strings.TrimSpace(c.line), func(t *testing.T) {
			dir := testutil.CopyDir(t, "../../manifests")
			p := filepath.Join(dir, filepath.FromSlash(c.file))
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			edited := strings.Replace(string(b), c.line+"\n", "", 1)
			if edited == string(b) {
				t.Fatalf("%s has no line %q", c.file, c.line)
			}
			if err := os.WriteFile(p, []byte(edited), 0o644); err != nil {
				t.Fatal(err)
			}
			tree, err := build.Dir(dir)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := Run(Options{Tree: tree, Targets: c.targets})
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, f := range rep.Failed() {
				found = found || strings.HasSuffix(f, ": "+c.want)
			}
			if !found {
				t.Fatalf("verify does not fail %s; failed: %v", c.want, rep.Failed())
			}
		})
	}
}

func TestUnknownTarget(t *testing.T) {
	_, err := Run(Options{Tree: testEnv(t).tree, Targets: []string{"ambient-typo"}})
	if err == nil || !strings.Contains(err.Error(), "oauth2-proxy") || !strings.Contains(err.Error(), "istio-crds/base") {
		t.Fatalf("got %v, want an error listing overlays and directories", err)
	}
}

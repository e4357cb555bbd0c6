package e2e

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/object"
)

// A tree broken where only istiod can tell fails the checks of this
// package: each case installs the default installation (with the opt-in
// oauth2-proxy policies) with one object
// changed, as an edited file of the tree would change it, and the check
// named must find a problem (or the install itself must fail, saying why).
func TestBrokenTreesFail(t *testing.T) {
	type check func(*mesh, *testing.T) []string
	cases := []struct {
		name string
		edit func(t *testing.T, objs map[string]*unstructured.Unstructured)
		// install is what the install's error says, when the install fails.
		install string
		check   check
	}{
		{
			name: "the CUSTOM policy names a provider the mesh config lacks",
			edit: func(t *testing.T, objs map[string]*unstructured.Unstructured) {
				set(t, objs["AuthorizationPolicy/istio-system/istio-ingressgateway-oauth2-proxy"], "oauth2proxy", "spec", "provider", "name")
			},
			check: func(m *mesh, t *testing.T) []string {
				c, _ := connect(t)
				return m.gatewayProblems(t, c, ingressGateway)
			},
		},
		{
			name: "no default-revision validator",
			edit: func(_ *testing.T, objs map[string]*unstructured.Unstructured) {
				delete(objs, "ValidatingWebhookConfiguration/istiod-default-validator")
			},
			check: (*mesh).validationProblems,
		},
		{
			name: "the injector template does not render",
			edit: func(t *testing.T, objs map[string]*unstructured.Unstructured) {
				cm := objs["ConfigMap/istio-system/istio-sidecar-injector"]
				raw, _, _ := unstructured.NestedString(cm.Object, "data", "config")
				cfg := map[string]any{}
				if err := yaml.Unmarshal([]byte(raw), &cfg); err != nil {
					t.Fatal(err)
				}
				templates := cfg["templates"].(map[string]any)
				templates["sidecar"] = templates["sidecar"].(string) + "\n{{ .NoSuchField.Here }}\n"
				b, err := yaml.Marshal(cfg)
				if err != nil {
					t.Fatal(err)
				}
				set(t, cm, string(b), "data", "config")
			},
			check: (*mesh).injectionProblems,
		},
		{
			name: "istiod may not update its injection webhook",
			edit: func(t *testing.T, objs map[string]*unstructured.Unstructured) {
				role := objs["ClusterRole/istiod-clusterrole-istio-system"]
				rules, _, _ := unstructured.NestedSlice(role.Object, "rules")
				for _, r := range rules {
					m := r.(map[string]any)
					if res, _ := m["resources"].([]any); len(res) == 1 && res[0] == "mutatingwebhookconfigurations" {
						m["verbs"] = []any{"get", "list", "watch"}
					}
				}
				set(t, role, rules, "rules")
			},
			install: "MutatingWebhookConfiguration/istio-sidecar-injector: webhooks",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := build.DefaultInstallation(build.DefaultOverlay)
			in.Components = []string{build.OAuth2ProxyPolicies}
			objs := object.Index(objects(t, nil, in))
			c.edit(t, objs)
			var edited []*unstructured.Unstructured
			for _, o := range objs {
				edited = append(edited, o)
			}
			object.Sort(edited)
			m, err := tryInstall(t, in, edited, 30*time.Second)
			switch {
			case c.install != "":
				if err == nil || !strings.Contains(err.Error(), c.install) {
					t.Fatalf("install: %v, want an error with %q", err, c.install)
				}
			case err != nil:
				t.Fatalf("install: %v", err)
			default:
				problems := c.check(m, t)
				if len(problems) == 0 {
					t.Fatal("the check finds nothing wrong")
				}
				t.Logf("found, as it should: %s", strings.Join(problems, "; "))
			}
		})
	}
}

func set(t *testing.T, o *unstructured.Unstructured, v any, path ...string) {
	t.Helper()
	if o == nil {
		t.Fatal("no such object")
	}
	if err := unstructured.SetNestedField(o.Object, v, path...); err != nil {
		t.Fatal(err)
	}
}

package verify

import (
	"net/url"
	"slices"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/object"
)

// oauth2ProxyPolicies are the objects Kubeflow's common/oauth2-proxy
// (components/istio-external-auth) defines, whatever their API version.
var oauth2ProxyPolicies = []string{
	object.KeyOf("AuthorizationPolicy", ns, "istio-ingressgateway-oauth2-proxy"),
	object.KeyOf("AuthorizationPolicy", ns, "istio-ingressgateway-require-jwt"),
	object.KeyOf("RequestAuthentication", ns, "dex-jwt"),
}

// checkOwnership (F21) finds objects of the build that other Kubeflow
// directories define: oauth2-proxy's policies outside the opt-in component,
// and Namespaces other than istio-system outside the namespace-labels
// directories, which hold nothing but labels.
func checkOwnership(t *target) []Problem {
	var p problems
	for _, o := range t.own {
		key := object.Key(o)
		switch {
		case slices.Contains(oauth2ProxyPolicies, key) && !t.has(partPolicies):
			p.because(key, "", "Kubeflow's common/oauth2-proxy (components/istio-external-auth) defines it; only the opt-in component "+build.OAuth2ProxyPolicies+" may")
		case t.has(partLabels):
			if o.GetKind() != "Namespace" {
				p.because(key, "", "a namespace-labels directory holds only Namespaces")
			} else if extra := labelOnlyExtra(o); len(extra) > 0 {
				p.wrong(key, "", extra, "only metadata.name and metadata.labels: the directory is applied label-only")
			}
		case o.GetKind() == "Namespace" && o.GetName() != ns:
			p.because(key, "", "another Kubeflow directory defines this Namespace; put the labels the overlay needs on it in a namespace-labels directory")
		}
	}
	return p
}

// labelOnlyExtra returns the fields of a Namespace beyond its name and labels.
func labelOnlyExtra(o *unstructured.Unstructured) []string {
	var extra []string
	for k := range o.Object {
		if k != "apiVersion" && k != "kind" && k != "metadata" {
			extra = append(extra, k)
		}
	}
	meta, _, _ := unstructured.NestedMap(o.Object, "metadata")
	for k := range meta {
		if k != "name" && k != "labels" {
			extra = append(extra, "metadata."+k)
		}
	}
	slices.Sort(extra)
	return extra
}

// checkAuthObjects checks the authentication and authorization objects of the
// build: each CUSTOM AuthorizationPolicy names a provider of the mesh config;
// each selector of an AuthorizationPolicy or RequestAuthentication selects the
// pods of a workload of the build; each JWT issuer and JWKS URI is an absolute
// http(s) URL.
func checkAuthObjects(t *target) []Problem {
	var p problems
	var providers []string
	mesh, cm := t.meshConfig(&problems{})
	if mesh != nil {
		list, _ := mesh["extensionProviders"].([]any)
		for _, x := range list {
			if m, ok := x.(map[string]any); ok {
				if n, ok := m["name"].(string); ok {
					providers = append(providers, n)
				}
			}
		}
	}
	for _, o := range t.objs {
		kind := o.GetKind()
		if kind != "AuthorizationPolicy" && kind != "RequestAuthentication" {
			continue
		}
		key := object.Key(o)
		if kind == "AuthorizationPolicy" {
			if action, _ := field(o, "spec.action"); action == "CUSTOM" {
				v, _ := field(o, "spec.provider.name")
				name, _ := v.(string)
				switch {
				case cm == nil:
					p.because(key, "spec.provider.name", "CUSTOM action, but the build has no mesh config that defines providers")
				case !slices.Contains(providers, name):
					p.wrong(key, "spec.provider.name", name, "a provider of the mesh config's extensionProviders "+show(providers))
				}
			}
		}
		if sel, ok := field(o, "spec.selector.matchLabels"); ok {
			if m, ok := sel.(map[string]any); ok && !t.selectsPods(o.GetNamespace(), m) {
				p.wrong(key, "spec.selector.matchLabels", m, "labels of the pods of a workload of the build in "+o.GetNamespace())
			}
		}
		if kind == "RequestAuthentication" {
			rules, _, _ := unstructured.NestedSlice(o.Object, "spec", "jwtRules")
			for _, r := range rules {
				m, _ := r.(map[string]any)
				for _, f := range []string{"issuer", "jwksUri"} {
					v, set := m[f].(string)
					if !set && f == "jwksUri" {
						continue
					}
					if u, err := url.Parse(v); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
						p.wrong(key, "spec.jwtRules[]."+f, v, "an absolute http(s) URL")
					}
				}
			}
		}
	}
	return p
}

// selectsPods says whether a workload of the build in namespace runs pods
// with every label of sel.
func (t *target) selectsPods(namespace string, sel map[string]any) bool {
	set := labels.Set{}
	for k, v := range sel {
		s, _ := v.(string)
		set[k] = s
	}
	want := labels.SelectorFromSet(set)
	for _, o := range t.objs {
		if o.GetNamespace() != namespace {
			continue
		}
		if tpl, err := object.PodTemplate(o); err == nil && tpl != nil && want.Matches(labels.Set(tpl.Labels)) {
			return true
		}
	}
	return false
}

package install

import "testing"

// An object the tree moves to another API version is the same object: it is
// not pruned after being applied under the new version.
func TestStale(t *testing.T) {
	old := []Ref{
		{APIVersion: "networking.istio.io/v1beta1", Kind: "Gateway", Namespace: "istio-system", Name: "gw"},
		{APIVersion: "v1", Kind: "ServiceAccount", Namespace: "kube-system", Name: "istio-cni"},
		{APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy", Namespace: "istio-system", Name: "p"},
	}
	desired := []Ref{
		{APIVersion: "networking.istio.io/v1", Kind: "Gateway", Namespace: "istio-system", Name: "gw"},
		// Same kind and name in another group: another object.
		{APIVersion: "example.com/v1", Kind: "AuthorizationPolicy", Namespace: "istio-system", Name: "p"},
	}
	got := stale(old, desired)
	if len(got) != 2 || got[0].Name != "istio-cni" || got[1].APIVersion != "security.istio.io/v1" {
		t.Errorf("stale = %+v", got)
	}
	if u := union(old, desired); len(u) != 4 || u[2].APIVersion != "networking.istio.io/v1" {
		t.Errorf("union = %+v", u)
	}
}

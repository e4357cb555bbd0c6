package revision

import "testing"

// The names of Istio's charts, default and revisioned, as istioctl 1.29.1
// renders them (internal/tree's tests compare every name of both renders).
func TestName(t *testing.T) {
	for base, want := range map[string]string{
		"istiod":                                "istiod-1-29-1",
		"istio":                                 "istio-1-29-1",
		"istio-sidecar-injector":                "istio-sidecar-injector-1-29-1",
		"istio-validator-istio-system":          "istio-validator-1-29-1-istio-system",
		"istiod-clusterrole-istio-system":       "istiod-clusterrole-1-29-1-istio-system",
		"istio-reader-clusterrole-istio-system": "istio-reader-clusterrole-1-29-1-istio-system",
	} {
		if got := Name(base, "1-29-1"); got != want {
			t.Errorf("Name(%s) = %s, want %s", base, got, want)
		}
		if got, ok := Base(want, "1-29-1"); !ok || got != base {
			t.Errorf("Base(%s) = %s %v, want %s", want, got, ok, base)
		}
		if got := Name(base, Default); got != base {
			t.Errorf("Name(%s, default) = %s", base, got)
		}
	}
	if _, ok := Base("istiod-1-26-1", "1-29-1"); ok {
		t.Error("istiod-1-26-1 is not an object of 1-29-1")
	}
}

func TestOf(t *testing.T) {
	if got := Of("1.29.1"); got != "1-29-1" {
		t.Errorf("Of = %s", got)
	}
}

func TestMinor(t *testing.T) {
	if m, err := Minor("1.26.1"); err != nil || m != 26 {
		t.Errorf("Minor = %d, %v", m, err)
	}
	for _, bad := range []string{"", "2.1.0", "1", "1.x.0", "latest"} {
		if _, err := Minor(bad); err == nil {
			t.Errorf("Minor(%q) accepted it", bad)
		}
	}
}

package kube

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestVerb(t *testing.T) {
	cases := map[string]string{
		"GET /api/v1/namespaces/istio-system/pods":                           "list",
		"GET /api/v1/namespaces/istio-system/pods/x":                         "get",
		"GET /api/v1/namespaces":                                             "list",
		"GET /api/v1/namespaces/istio-system":                                "get",
		"GET /apis/apps/v1/namespaces/istio-system/deployments?watch=true":   "watch",
		"GET /apis/apps/v1/namespaces/istio-system/deployments/istiod/scale": "get",
		"GET /apis":                    "discovery",
		"GET /apis/apps/v1":            "discovery",
		"GET /api/v1":                  "discovery",
		"GET /version":                 "discovery",
		"GET /openapi/v3/apis/apps/v1": "discovery",
		"PATCH /apis/apps/v1/namespaces/istio-system/deployments/istiod?dryRun=All": "patch (dry run)",
		"PATCH /apis/apps/v1/namespaces/istio-system/deployments/istiod":            "patch",
		"POST /api/v1/namespaces":     "create",
		"DELETE /api/v1/namespaces/x": "delete",
	}
	for in, want := range cases {
		var method, rawURL string
		for i := range in {
			if in[i] == ' ' {
				method, rawURL = in[:i], in[i+1:]
				break
			}
		}
		u, err := url.Parse("https://127.0.0.1" + rawURL)
		if err != nil {
			t.Fatal(err)
		}
		if got := Verb(method, u); got != want {
			t.Errorf("%s: got %q, want %q", in, got, want)
		}
	}
}

// A dry-run delete carries its DeleteOptions in the body, as client-go
// sends them: it is counted as a dry run, and a plain delete as a write.
func TestDeleteDryRun(t *testing.T) {
	c := &RequestCounter{}
	rt := c.Wrap(roundTripper(func(*http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody}, nil
	}))
	for _, body := range []string{`{"dryRun":["All"],"propagationPolicy":"Foreground"}`, `{"propagationPolicy":"Foreground"}`, ""} {
		r, err := http.NewRequest(http.MethodDelete, "https://127.0.0.1/api/v1/namespaces/x/configmaps/y", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rt.RoundTrip(r); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.Counts(); got["delete (dry run)"] != 1 || got["delete"] != 2 || c.Writes() != 2 {
		t.Errorf("counts %v, %d writes; want one dry-run delete and two deletes", got, c.Writes())
	}
}

func TestWrites(t *testing.T) {
	c := &RequestCounter{counts: map[string]int{"get": 5, "patch (dry run)": 3, "patch": 2, "create": 1, "list": 4}}
	if c.Writes() != 3 {
		t.Fatalf("Writes() = %d, want 3", c.Writes())
	}
}

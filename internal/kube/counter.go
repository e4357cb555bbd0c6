package kube

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RequestCounter counts the API requests that go through it, by verb, and
// the writes the server refused with a conflict. Pass its Wrap as
// Options.WrapTransport.
type RequestCounter struct {
	mu        sync.Mutex
	counts    map[string]int
	conflicts map[string]int
}

// Wrap wraps rt so that every request is counted.
func (c *RequestCounter) Wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		c.mu.Lock()
		if c.counts == nil {
			c.counts = map[string]int{}
		}
		v := Verb(r.Method, r.URL)
		if r.Method == http.MethodDelete && !strings.HasSuffix(v, dryRunSuffix) && deleteDryRun(r) {
			v += dryRunSuffix
		}
		c.counts[v]++
		c.mu.Unlock()
		resp, err := rt.RoundTrip(r)
		if err == nil && resp.StatusCode == http.StatusConflict && r.Method != http.MethodPost {
			// 409 to a create is AlreadyExists; to a write of an existing
			// object, a precondition (resourceVersion, UID) that no longer held.
			c.mu.Lock()
			if c.conflicts == nil {
				c.conflicts = map[string]int{}
			}
			c.conflicts[v]++
			c.mu.Unlock()
		}
		return resp, err
	})
}

// Conflicts returns, by verb, the writes the server refused because the
// object changed since it was read.
func (c *RequestCounter) Conflicts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.conflicts)
}

const dryRunSuffix = " (dry run)"

// deleteDryRun reports whether a DELETE asks for a dry run in its body, where
// client-go sends the DeleteOptions, read from a copy of the body.
func deleteDryRun(r *http.Request) bool {
	if r.GetBody == nil {
		return false
	}
	body, err := r.GetBody()
	if err != nil {
		return false
	}
	defer func() { _ = body.Close() }()
	var opts metav1.DeleteOptions
	data, err := io.ReadAll(body)
	if err != nil || json.Unmarshal(data, &opts) != nil {
		return false
	}
	return slices.Contains(opts.DryRun, metav1.DryRunAll)
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Verb names a request as the API server's audit log would, and marks dry
// runs: get, list, watch, create, patch, update, delete, and
// "patch (dry run)"; reads of the API's discovery documents and OpenAPI
// schemas are "discovery"; requests on Leases are "lease get", "lease
// create"...
func Verb(method string, u *url.URL) string {
	v := strings.ToLower(method)
	q := u.Query()
	switch method {
	case http.MethodGet:
		v = "get"
		switch {
		case isDiscovery(u.Path):
			v = "discovery"
		case q.Get("watch") == "true" || q.Get("watch") == "1":
			v = "watch"
		case isCollection(u.Path):
			v = "list"
		}
	case http.MethodPost:
		v = "create"
	case http.MethodPut:
		v = "update"
	}
	if q.Get("dryRun") == metav1.DryRunAll {
		v += dryRunSuffix
	}
	if isLease(u.Path) {
		v = "lease " + v
	}
	return v
}

// isLease tells the requests on Leases, with which an operation excludes
// others while it writes: they coordinate runs and change nothing of what
// is installed, so Writes does not count them.
func isLease(path string) bool {
	return strings.HasPrefix(path, "/apis/coordination.k8s.io/") && strings.Contains(path, "/leases")
}

// isDiscovery tells the documents clients read to find the API's resources
// (/version, /api, /apis/group/version, /openapi/...) from objects.
func isDiscovery(path string) bool {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	switch parts[0] {
	case "version", "openapi":
		return true
	case "api":
		return len(parts) <= 2
	case "apis":
		return len(parts) <= 3
	}
	return false
}

// isCollection tells a list (/api/v1/namespaces/x/pods) from a get
// (/api/v1/namespaces/x/pods/y) by counting path segments.
func isCollection(path string) bool {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	var rest []string
	switch {
	case parts[0] == "api" && len(parts) >= 2: // /api/v1/...
		rest = parts[2:]
	case parts[0] == "apis" && len(parts) >= 3: // /apis/group/version/...
		rest = parts[3:]
	default:
		return false
	}
	if len(rest) >= 2 && rest[0] == "namespaces" && len(rest) != 2 {
		rest = rest[2:]
	}
	return len(rest) == 1
}

// Counts returns the requests counted so far, by verb.
func (c *RequestCounter) Counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.counts))
	for k, v := range c.counts {
		out[k] = v
	}
	return out
}

// Writes returns how many requests changed something: creates, updates,
// patches and deletes that were not dry runs.
func (c *RequestCounter) Writes() int {
	n := 0
	for v, count := range c.Counts() {
		if !strings.HasSuffix(v, dryRunSuffix) && (v == "create" || v == "update" || v == "patch" || v == "delete") {
			n += count
		}
	}
	return n
}

// String lists the counts, verbs sorted.
func (c *RequestCounter) String() string {
	counts := c.Counts()
	verbs := make([]string, 0, len(counts))
	for v := range counts {
		verbs = append(verbs, v)
	}
	sort.Strings(verbs)
	var b strings.Builder
	for i, v := range verbs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %d", v, counts[v])
	}
	return b.String()
}

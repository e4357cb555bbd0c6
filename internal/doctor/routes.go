package doctor

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kubeflow/kfistio/internal/object"
)

// Finding ids of the routing on gateways.
const (
	// HostShadowed: a VirtualService with a more specific host on a gateway
	// takes the requests for that host away from the routes of a wildcard
	// VirtualService, whose paths then answer 404 for it.
	HostShadowed = "KF010"
	// RouteShadowed: on one host of a gateway, a route of one
	// VirtualService takes every request another VirtualService's route
	// matches, which is then never used.
	RouteShadowed = "KF011"
)

// The routing of gateways, as istiod builds it for a gateway proxy (one
// route configuration per port, pilot/pkg/networking/core/gateway.go): the
// servers of every Gateway that selects the proxy on that port; for each
// host, a virtual host whose routes are those of every VirtualService bound
// to one of those Gateways with that host, in the order of the
// VirtualServices (oldest first, then by name and namespace), the catch-all
// routes moved last. Envoy picks the virtual host of the most specific
// domain that matches a request's host, then its first route that matches.

// virtualHost is the routes of one host on one port of a gateway proxy.
type virtualHost struct {
	host   string
	routes []httpRoute
}

// httpRoute is one match of a VirtualService's http route.
type httpRoute struct {
	vs  *unstructured.Unstructured
	uri uriMatch
	// only is true when the match has no condition but its URI.
	only bool
}

type uriMatch struct {
	kind, value string // kind: prefix, exact, regex; "" for any URI
}

func (m uriMatch) String() string {
	if m.kind == "" {
		return "any path"
	}
	return m.kind + " " + m.value
}

// catchAll is istiod's test (route.IsCatchAllRoute): prefix "/" or regex
// ".*", without other conditions. Catch-all routes go last.
func (r httpRoute) catchAll() bool {
	return r.only && (r.uri.kind == "" || r.uri == uriMatch{"prefix", "/"} || r.uri == uriMatch{"regex", ".*"})
}

// covers reports whether r takes every request that o matches.
func (r httpRoute) covers(o httpRoute) bool {
	if !r.only {
		return false
	}
	switch {
	case r.catchAll():
		return true
	case r.uri.kind == "prefix" && (o.uri.kind == "prefix" || o.uri.kind == "exact"):
		return strings.HasPrefix(o.uri.value, r.uri.value)
	case r.uri.kind == "exact" && o.uri.kind == "exact":
		return r.uri.value == o.uri.value
	}
	return false
}

// routeTable is the virtual hosts of one port of one gateway proxy.
type routeTable struct {
	// proxy names the gateway proxy (its Deployment, or the Gateway when
	// no known workload matches its selector); gateways are the Gateways
	// with servers on the port.
	proxy    string
	port     int64
	gateways []string
	// servers are the servers of the Gateways on the port.
	servers []gatewayServer
	hosts   map[string]*virtualHost
}

// tableKey names a route table: a proxy and the route configuration
// name istiod gives the port ("http.80"; each HTTPS server has its own).
type tableKey struct{ proxy, route string }

// gatewayServer is one server of a Gateway, with its hosts as
// namespace/host ("*" for any namespace).
type gatewayServer struct {
	gateway string // namespace/name
	port    int64
	route   string
	hosts   []string
}

// routeTables builds the route tables of every gateway proxy from the
// Gateways, VirtualServices and gateway Deployments among objs. Of objects
// with the same key, the last one counts.
func routeTables(objs []*unstructured.Unstructured) []*routeTable {
	byKey := object.Index(objs)
	var gateways, services, workloads []*unstructured.Unstructured
	for _, k := range slices.Sorted(maps.Keys(byKey)) {
		o := byKey[k]
		switch {
		case isIstio(o, "Gateway"):
			gateways = append(gateways, o)
		case isIstio(o, "VirtualService"):
			services = append(services, o)
		case o.GetKind() == "Deployment":
			workloads = append(workloads, o)
		}
	}
	// istiod's order: oldest first, then by name, then by namespace.
	slices.SortStableFunc(services, func(a, b *unstructured.Unstructured) int {
		if c := a.GetCreationTimestamp().Compare(b.GetCreationTimestamp().Time); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.GetName(), b.GetName()), cmp.Compare(a.GetNamespace(), b.GetNamespace()))
	})
	tables := map[tableKey]*routeTable{}
	for _, g := range gateways {
		for _, proxy := range selectedProxies(g, workloads) {
			for _, s := range serversOf(g) {
				k := tableKey{proxy, s.route}
				t := tables[k]
				if t == nil {
					t = &routeTable{proxy: proxy, port: s.port, hosts: map[string]*virtualHost{}}
					tables[k] = t
				}
				t.gateways = appendOnce(t.gateways, s.gateway)
				t.servers = append(t.servers, s)
			}
		}
	}
	var out []*routeTable
	for _, k := range slices.SortedFunc(maps.Keys(tables), func(a, b tableKey) int {
		return cmp.Or(cmp.Compare(a.proxy, b.proxy), cmp.Compare(a.route, b.route))
	}) {
		t := tables[k]
		for _, vs := range services {
			t.add(vs)
		}
		for _, h := range t.hosts {
			// istiod's SortVHostRoutes: catch-all routes last, the others in order.
			slices.SortStableFunc(h.routes, func(a, b httpRoute) int { return cmp.Compare(rank(a.catchAll()), rank(b.catchAll())) })
		}
		out = append(out, t)
	}
	return out
}

// rank orders false before true.
func rank(b bool) int {
	if b {
		return 1
	}
	return 0
}

func isIstio(o *unstructured.Unstructured, kind string) bool {
	return o.GetKind() == kind && strings.HasPrefix(o.GetAPIVersion(), "networking.istio.io/")
}

// selectedProxies names the gateway Deployments whose pods g selects, or g
// itself when it selects none of them.
func selectedProxies(g *unstructured.Unstructured, workloads []*unstructured.Unstructured) []string {
	sel, _, _ := unstructured.NestedStringMap(g.Object, "spec", "selector")
	var out []string
	for _, w := range workloads {
		podLabels, _, _ := unstructured.NestedStringMap(w.Object, "spec", "template", "metadata", "labels")
		if len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(podLabels)) {
			out = append(out, object.Key(w))
		}
	}
	if len(out) == 0 {
		out = []string{object.Key(g)}
	}
	return out
}

// serversOf lists the HTTP servers of a Gateway: those whose routes istiod
// builds from VirtualServices' http sections.
func serversOf(g *unstructured.Unstructured) []gatewayServer {
	list, _, _ := unstructured.NestedSlice(g.Object, "spec", "servers")
	var out []gatewayServer
	for _, item := range list {
		m, ok := item.(map[string]any)
		if !ok {
			continue
		}
		port, _, _ := unstructured.NestedInt64(m, "port", "number")
		protocol, _, _ := unstructured.NestedString(m, "port", "protocol")
		portName, _, _ := unstructured.NestedString(m, "port", "name")
		tlsMode, _, _ := unstructured.NestedString(m, "tls", "mode")
		s := gatewayServer{gateway: g.GetNamespace() + "/" + g.GetName(), port: port}
		switch strings.ToUpper(protocol) {
		case "HTTP", "HTTP2", "GRPC":
			s.route = fmt.Sprintf("http.%d", port)
		case "HTTPS":
			if tlsMode == "PASSTHROUGH" || tlsMode == "AUTO_PASSTHROUGH" {
				continue
			}
			s.route = fmt.Sprintf("https.%d.%s.%s.%s", port, portName, g.GetName(), g.GetNamespace())
		default:
			continue
		}
		hosts, _, _ := unstructured.NestedStringSlice(m, "hosts")
		for _, h := range hosts {
			ns, name, ok := strings.Cut(h, "/")
			switch {
			case !ok:
				ns, name = "*", h
			case ns == ".":
				ns = g.GetNamespace()
			}
			s.hosts = append(s.hosts, ns+"/"+strings.ToLower(name))
		}
		out = append(out, s)
	}
	return out
}

// add puts the routes of vs into the virtual hosts of t, for the hosts
// that vs shares with the servers of the Gateways it is bound to.
func (t *routeTable) add(vs *unstructured.Unstructured) {
	refs, _, _ := unstructured.NestedStringSlice(vs.Object, "spec", "gateways")
	vsHosts, _, _ := unstructured.NestedStringSlice(vs.Object, "spec", "hosts")
	var hosts []string
	for _, s := range t.servers {
		if !bindsTo(vs, refs, s.gateway) {
			continue
		}
		for _, sh := range s.hosts {
			ns, name, _ := strings.Cut(sh, "/")
			if ns != "*" && ns != vs.GetNamespace() {
				continue
			}
			for _, vh := range vsHosts {
				if h, ok := intersect(name, strings.ToLower(vh)); ok {
					hosts = appendOnce(hosts, h)
				}
			}
		}
	}
	if len(hosts) == 0 {
		return
	}
	routes := routesOf(vs)
	for _, h := range hosts {
		if t.hosts[h] == nil {
			t.hosts[h] = &virtualHost{host: h}
		}
		t.hosts[h].routes = append(t.hosts[h].routes, routes...)
	}
}

// bindsTo reports whether a VirtualService with gateway references refs is
// bound to the Gateway namespace/name gw.
func bindsTo(vs *unstructured.Unstructured, refs []string, gw string) bool {
	for _, r := range refs {
		if gatewayRef(vs, r) == gw {
			return true
		}
	}
	return false
}

// gatewayRef is a VirtualService's reference to a Gateway as
// namespace/name: a bare name is in the VirtualService's namespace.
func gatewayRef(vs *unstructured.Unstructured, ref string) string {
	if strings.Contains(ref, "/") {
		return ref
	}
	return vs.GetNamespace() + "/" + ref
}

// intersect is the host two patterns share, as istiod intersects a
// server's hosts with a VirtualService's: the more specific of the two when
// one covers the other.
func intersect(a, b string) (string, bool) {
	switch {
	case covers(a, b):
		return b, true
	case covers(b, a):
		return a, true
	}
	return "", false
}

// covers reports whether host pattern p matches every host that q does.
func covers(p, q string) bool {
	return p == "*" || p == q || strings.HasPrefix(p, "*.") && strings.HasSuffix(q, p[1:])
}

// routesOf lists a VirtualService's HTTP route matches, as istiod builds
// them: one per match, none after the first catch-all.
func routesOf(vs *unstructured.Unstructured) []httpRoute {
	http, _, _ := unstructured.NestedSlice(vs.Object, "spec", "http")
	var out []httpRoute
	for _, item := range http {
		rule, ok := item.(map[string]any)
		if !ok {
			continue
		}
		if _, delegated := rule["delegate"]; delegated {
			continue // its routes are another VirtualService's
		}
		matches, _ := rule["match"].([]any)
		if len(matches) == 0 {
			return append(out, httpRoute{vs: vs, only: true})
		}
		for _, m := range matches {
			r := routeOf(vs, m)
			out = append(out, r)
			if r.catchAll() {
				return out
			}
		}
	}
	return out
}

func routeOf(vs *unstructured.Unstructured, m any) httpRoute {
	r := httpRoute{vs: vs, only: true}
	match, _ := m.(map[string]any)
	for k, v := range match {
		switch k {
		case "name":
		case "uri":
			uri, _ := v.(map[string]any)
			for _, kind := range []string{"prefix", "exact", "regex"} {
				if s, ok := uri[kind].(string); ok {
					r.uri = uriMatch{kind, s}
				}
			}
		default:
			r.only = false
		}
	}
	return r
}

// routingFindings reports, for each route table, the hosts whose virtual
// host takes requests away from a wildcard's routes (KF010), and the routes
// that an earlier route of another VirtualService takes every request of
// (KF011). source says where an object was read.
func routingFindings(objs []*unstructured.Unstructured, source func(*unstructured.Unstructured) string) []Finding {
	var out []Finding
	for _, t := range routeTables(objs) {
		for _, h := range slices.Sorted(maps.Keys(t.hosts)) {
			out = append(out, t.shadowedHosts(t.hosts[h], source)...)
			out = append(out, t.shadowedRoutes(t.hosts[h], source)...)
		}
	}
	return out
}

// where says which port of which proxy a table is, for messages.
func (t *routeTable) where() string {
	return fmt.Sprintf("port %d of %s (Gateway %s)", t.port, t.proxy, strings.Join(t.gateways, ", "))
}

// shadowedHosts finds the routes of the wildcard virtual hosts that
// requests for h's host no longer reach: Envoy sends them to h, the most
// specific match, where no route takes them.
func (t *routeTable) shadowedHosts(h *virtualHost, source func(*unstructured.Unstructured) string) []Finding {
	if len(h.routes) == 0 {
		return nil
	}
	var lost, wildcards []string
	for _, w := range slices.Sorted(maps.Keys(t.hosts)) {
		if w == h.host || !covers(w, h.host) {
			continue
		}
		for _, r := range t.hosts[w].routes {
			if !slices.ContainsFunc(h.routes, func(o httpRoute) bool { return o.covers(r) }) {
				lost = appendOnce(lost, fmt.Sprintf("%s (%s)", r.uri, object.Key(r.vs)))
				wildcards = appendOnce(wildcards, fmt.Sprintf("%q", w))
			}
		}
	}
	if len(lost) == 0 {
		return nil
	}
	vs := h.routes[0].vs
	var owners []string
	for _, r := range h.routes {
		owners = appendOnce(owners, object.Key(r.vs))
	}
	return []Finding{{
		ID: HostShadowed, Severity: Warning, Object: object.Key(vs), Source: source(vs),
		Reason: fmt.Sprintf("host %s on %s gets a virtual host of its own, with the routes of %s only: requests for it no longer reach these routes of host %s, and answer 404: %s",
			h.host, t.where(), strings.Join(owners, ", "), strings.Join(wildcards, ", "), strings.Join(lost, "; ")),
		Fix: fmt.Sprintf(`give %s the hosts ["*"] (Kubeflow's workaround for KServe path-based routing), so its routes join the wildcard's virtual host; or repeat the lost routes in it`,
			strings.Join(owners, ", ")),
	}}
}

// shadowedRoutes finds the routes of h that an earlier route of another
// VirtualService on the same host takes every request of.
func (t *routeTable) shadowedRoutes(h *virtualHost, source func(*unstructured.Unstructured) string) []Finding {
	var out []Finding
	for j, r := range h.routes {
		i := slices.IndexFunc(h.routes[:j], func(e httpRoute) bool { return e.vs != r.vs && e.covers(r) })
		if i < 0 {
			continue
		}
		e := h.routes[i]
		out = append(out, Finding{
			ID: RouteShadowed, Severity: Warning, Object: object.Key(r.vs), Source: source(r.vs),
			Reason: fmt.Sprintf("host %s on %s: route %q is never used, because route %q of %s comes first (VirtualServices are ordered oldest first, then by name) and takes all its requests",
				h.host, t.where(), r.uri, e.uri, object.Key(e.vs)),
			Fix: "give the two routes paths that do not overlap, or put both in one VirtualService in the order they should match",
		})
	}
	return out
}

// missingGateways notes the Gateways that VirtualServices of files are bound
// to and that neither the files nor known hold: doctor -f cannot see their
// routes, and Istio's analyzers report them as not found (IST0101).
func missingGateways(files []*File, known []*unstructured.Unstructured) []string {
	gateways := map[string]bool{}
	for _, o := range known {
		if isIstio(o, "Gateway") {
			gateways[o.GetNamespace()+"/"+o.GetName()] = true
		}
	}
	var services []*Document
	for _, f := range files {
		for _, d := range f.Docs {
			switch {
			case isIstio(d.Object, "Gateway"):
				gateways[d.Object.GetNamespace()+"/"+d.Object.GetName()] = true
			case isIstio(d.Object, "VirtualService"):
				services = append(services, d)
			}
		}
	}
	var notes []string
	for _, d := range services {
		refs, _, _ := unstructured.NestedStringSlice(d.Object.Object, "spec", "gateways")
		for _, r := range refs {
			if r == "mesh" {
				continue
			}
			if r = gatewayRef(d.Object, r); !gateways[r] {
				notes = append(notes, fmt.Sprintf("%s (%s): Gateway %s is neither in the input nor in the installation; its routes are not checked (add it to the input, or run doctor on the cluster)",
					object.Key(d.Object), d.Source, r))
			}
		}
	}
	return notes
}

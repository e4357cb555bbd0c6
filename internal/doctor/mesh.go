package doctor

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
)

// registryOnly is the outbound traffic policy under which a sidecar refuses
// hosts its registry does not know.
const registryOnly = "REGISTRY_ONLY"

// traffic is what decides where a sidecar sends a connection: the mesh's
// outbound traffic policy, the Sidecars that narrow what each proxy knows,
// the ServiceEntries that make hosts outside the cluster known, and the
// PeerAuthentications that make destinations require mTLS.
type traffic struct {
	// mode is the mesh config's outboundTrafficPolicy mode ("" is ALLOW_ANY).
	mode     string
	sidecars []sidecarRule
	entries  []serviceEntry
	// mtls is the PeerAuthentication mode by namespace ("" for mesh-wide),
	// with the object that sets it.
	mtls map[string]peerAuth
}

type sidecarRule struct {
	key, namespace string
	selector       labels.Selector // nil: every workload of the namespace
	hosts          []string        // egress hosts, "namespace/dnsName"
	mode           string          // outboundTrafficPolicy.mode, "" when not set
}

type serviceEntry struct {
	key, namespace string
	hosts          []string
	exportTo       []string
}

type peerAuth struct{ key, mode string }

// Istio kinds the traffic rules are read from.
var trafficKinds = []string{"Sidecar", "ServiceEntry", "PeerAuthentication"}

// isTrafficObject reports whether o is one of the objects newTraffic reads.
func isTrafficObject(o *unstructured.Unstructured) bool {
	return slices.Contains(trafficKinds, o.GetKind()) && strings.Contains(o.GetAPIVersion(), ".istio.io/") ||
		isMeshConfig(o)
}

func isMeshConfig(o *unstructured.Unstructured) bool {
	return o.GetKind() == "ConfigMap" && o.GetNamespace() == inject.Namespace && o.GetName() == revision.NamesOf(revision.OfObject(o)).Mesh
}

// newTraffic reads the rules of objs; of objects with the same key, the last
// one counts.
func newTraffic(objs []*unstructured.Unstructured) *traffic {
	last := map[string]*unstructured.Unstructured{}
	var order []string
	for _, o := range objs {
		if !isTrafficObject(o) {
			continue
		}
		k := object.Key(o)
		if _, seen := last[k]; !seen {
			order = append(order, k)
		}
		last[k] = o
	}
	t := &traffic{mtls: map[string]peerAuth{}}
	for _, k := range order {
		o := last[k]
		switch o.GetKind() {
		case "ConfigMap":
			meshYAML, _, _ := unstructured.NestedString(o.Object, "data", "mesh")
			var mesh struct {
				OutboundTrafficPolicy struct{ Mode string } `json:"outboundTrafficPolicy"`
			}
			if yaml.Unmarshal([]byte(meshYAML), &mesh) == nil && mesh.OutboundTrafficPolicy.Mode == registryOnly {
				t.mode = registryOnly
			}
		case "Sidecar":
			t.sidecars = append(t.sidecars, readSidecar(o))
		case "ServiceEntry":
			hosts, _, _ := unstructured.NestedStringSlice(o.Object, "spec", "hosts")
			exportTo, _, _ := unstructured.NestedStringSlice(o.Object, "spec", "exportTo")
			t.entries = append(t.entries, serviceEntry{key: k, namespace: o.GetNamespace(), hosts: hosts, exportTo: exportTo})
		case "PeerAuthentication":
			if sel, _, _ := unstructured.NestedMap(o.Object, "spec", "selector"); len(sel) > 0 {
				continue // one workload's: the destination's labels are not known
			}
			mode, _, _ := unstructured.NestedString(o.Object, "spec", "mtls", "mode")
			ns := o.GetNamespace()
			if ns == inject.Namespace {
				ns = ""
			}
			if mode != "" && mode != "UNSET" {
				t.mtls[ns] = peerAuth{key: k, mode: mode}
			}
		}
	}
	return t
}

func readSidecar(o *unstructured.Unstructured) sidecarRule {
	r := sidecarRule{key: object.Key(o), namespace: o.GetNamespace()}
	r.mode, _, _ = unstructured.NestedString(o.Object, "spec", "outboundTrafficPolicy", "mode")
	if sel, ok, _ := unstructured.NestedStringMap(o.Object, "spec", "workloadSelector", "labels"); ok {
		r.selector = labels.SelectorFromSet(sel)
	}
	egress, _, _ := unstructured.NestedSlice(o.Object, "spec", "egress")
	for _, e := range egress {
		if m, ok := e.(map[string]any); ok {
			hosts, _, _ := unstructured.NestedStringSlice(m, "hosts")
			r.hosts = append(r.hosts, hosts...)
		}
	}
	return r
}

// sidecarFor is the Sidecar that configures the proxy of a pod with
// podLabels in namespace ns, as istiod picks it: one of the namespace that
// selects the pod, else the namespace's default, else the mesh-wide default
// of the root namespace.
func (t *traffic) sidecarFor(ns string, podLabels map[string]string) *sidecarRule {
	var nsDefault, meshDefault *sidecarRule
	for i := range t.sidecars {
		s := &t.sidecars[i]
		switch {
		case s.namespace == ns && s.selector != nil && s.selector.Matches(labels.Set(podLabels)):
			return s
		case s.namespace == ns && s.selector == nil && nsDefault == nil:
			nsDefault = s
		case s.namespace == inject.Namespace && s.selector == nil && meshDefault == nil:
			meshDefault = s
		}
	}
	if nsDefault != nil {
		return nsDefault
	}
	return meshDefault
}

// route is what a sidecar does with one connection.
type route int

const (
	// served: the destination is in the proxy's registry, the proxy routes
	// it (with mTLS inside the mesh).
	served route = iota
	// passthrough: unknown to the proxy, the connection leaves as it is
	// through the passthrough cluster (ALLOW_ANY).
	passthrough
	// blocked: unknown to the proxy under REGISTRY_ONLY, it is refused.
	blocked
)

// verdict is the route of a connection and why.
type verdict struct {
	route route
	why   string
}

// judge says how the sidecar of a pod with podLabels in namespace ns treats
// a connection to d.
func (t *traffic) judge(ns string, podLabels map[string]string, d destination) verdict {
	s := t.sidecarFor(ns, podLabels)
	mode, modeSource := t.mode, "the mesh config sets outboundTrafficPolicy REGISTRY_ONLY"
	if s != nil && s.mode != "" {
		mode, modeSource = s.mode, s.key+" sets outboundTrafficPolicy "+s.mode
	}
	if d.inCluster {
		dns := d.serviceFQDN(ns)
		target := d.namespaceOr(ns)
		if s == nil || s.lists(ns, target, dns) {
			return verdict{route: served}
		}
		why := fmt.Sprintf("%s does not list namespace %s among its egress hosts", s.key, target)
		if mode == registryOnly {
			return verdict{route: blocked, why: why + " and " + modeSource}
		}
		return verdict{route: passthrough, why: why}
	}
	for _, e := range t.entries {
		if !e.exportedTo(ns) {
			continue
		}
		for _, h := range e.hosts {
			if d.matches(h) && (s == nil || s.lists(ns, e.namespace, h)) {
				return verdict{route: served, why: e.key + " makes " + d.host + " known"}
			}
		}
	}
	if mode == registryOnly {
		return verdict{route: blocked, why: modeSource + " and no ServiceEntry that this proxy sees makes " + d.host + " known"}
	}
	return verdict{route: passthrough}
}

// lists reports whether the Sidecar's egress hosts include dns in namespace
// target, for a workload in namespace ns. Without egress hosts a Sidecar
// imports every namespace, as Istio's default does.
func (s *sidecarRule) lists(ns, target, dns string) bool {
	if len(s.hosts) == 0 {
		return true
	}
	for _, h := range s.hosts {
		hostNS, name, ok := strings.Cut(h, "/")
		if !ok {
			continue
		}
		switch hostNS {
		case "*":
		case ".":
			if target != ns {
				continue
			}
		default:
			if hostNS != target {
				continue
			}
		}
		if name == "*" || hostMatches(name, dns) {
			return true
		}
	}
	return false
}

func (e serviceEntry) exportedTo(ns string) bool {
	if len(e.exportTo) == 0 {
		return true
	}
	for _, x := range e.exportTo {
		if x == "*" || x == ns || (x == "." && e.namespace == ns) {
			return true
		}
	}
	return false
}

// hostMatches matches a host against an Istio host pattern (exact, or
// "*.suffix").
func hostMatches(pattern, host string) bool {
	if suffix, ok := strings.CutPrefix(pattern, "*"); ok {
		return strings.HasSuffix(host, suffix)
	}
	return pattern == host
}

// requiresMTLS says which PeerAuthentication makes namespace ns refuse
// plain-text connections, or "".
func (t *traffic) requiresMTLS(ns string) string {
	p, ok := t.mtls[ns]
	if !ok {
		p = t.mtls[""]
	}
	if p.mode == "STRICT" {
		return p.key
	}
	return ""
}

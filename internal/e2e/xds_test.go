package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pilot/pkg/model"
	v3 "istio.io/istio/pilot/pkg/xds/v3"
	"istio.io/istio/pkg/adsc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/testcluster"
)

// proxy is a connection to istiod's xDS as one pod's proxy, and what istiod
// sent it last.
type proxy struct {
	pod       *corev1.Pod
	client    *kube.Client
	ads       *adsc.ADSC
	listeners map[string]*listener.Listener
	clusters  map[string]map[string]any
}

// settle is how long a check of what istiod sends waits for istiod to take in
// configuration applied just before.
const settle = 30 * time.Second

// eventually runs check on what istiod sent until it finds no problem or
// settle has passed, taking each push in, and returns the last problems.
func (p *proxy) eventually(t *testing.T, check func() []string) []string {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		p.refresh(t)
		problems := check()
		if len(problems) == 0 || time.Now().After(deadline) {
			return problems
		}
		_, _ = p.ads.Wait(time.Until(deadline))
	}
}

// refresh reads what istiod sent last.
func (p *proxy) refresh(t *testing.T) {
	t.Helper()
	p.listeners, p.clusters = map[string]*listener.Listener{}, map[string]map[string]any{}
	for name, l := range p.ads.GetHTTPListeners() {
		p.listeners[name] = l
	}
	for name, l := range p.ads.GetTCPListeners() {
		p.listeners[name] = l
	}
	for name, cl := range p.ads.GetClusters() {
		p.clusters[name] = asJSON(t, cl)
	}
	for name, cl := range p.ads.GetEdsClusters() {
		p.clusters[name] = asJSON(t, cl)
	}
}

// connectProxy connects to istiod's plaintext xDS, through its Service, as
// the proxy of pod (a gateway with nodeType router, a sidecar otherwise)
// would: with the pod's IP and labels and the ISTIO_META_ variables of its
// container istio-proxy as node metadata, as pilot-agent builds them. It
// returns once istiod has sent listeners and clusters; the connection stays
// open until the test ends.
func connectProxy(t *testing.T, c *kube.Client, pod *corev1.Pod, nodeType model.NodeType) *proxy {
	t.Helper()
	ctx := context.Background()
	st := nodeMeta(t, c, pod)
	addr, err := cluster.IstiodAddress(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, err := adsc.New(addr, &adsc.ADSConfig{
		Config: adsc.Config{Namespace: pod.Namespace, Workload: pod.Name, NodeType: nodeType, IP: pod.Status.PodIP, Meta: st},
		InitialDiscoveryRequests: []*discovery.DiscoveryRequest{
			{TypeUrl: v3.ClusterType}, {TypeUrl: v3.ListenerType},
		},
	})
	if err != nil {
		t.Fatalf("connect to istiod's xDS at %s: %v", addr, err)
	}
	t.Cleanup(a.Close)
	if err := a.Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Wait(time.Minute, v3.ClusterType, v3.ListenerType); err != nil {
		t.Fatalf("xDS of %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return &proxy{pod: pod, client: c, ads: a}
}

// nodeMeta is testcluster.ProxyMeta of pod.
func nodeMeta(t *testing.T, c *kube.Client, pod *corev1.Pod) *structpb.Struct {
	t.Helper()
	st, err := testcluster.ProxyMeta(context.Background(), c.Kube, pod)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// asJSON is a proto message as JSON data, with the types of Any fields
// resolved.
func asJSON(t *testing.T, m proto.Message) map[string]any {
	t.Helper()
	b, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// httpFilter is a filter of an HTTP connection manager, with its config.
type httpFilter struct {
	name   string
	config map[string]any
}

// httpFilters returns the HTTP filters of the first filter chain of a
// listener that has an HTTP connection manager, or a problem.
func (p *proxy) httpFilters(t *testing.T, listenerName string) ([]httpFilter, string) {
	t.Helper()
	l := p.listeners[listenerName]
	if l == nil {
		var names []string
		for n := range p.listeners {
			names = append(names, n)
		}
		slices.Sort(names)
		return nil, fmt.Sprintf("istiod sent %s/%s no listener %s (it sent %v)", p.pod.Namespace, p.pod.Name, listenerName, names)
	}
	for _, fc := range l.FilterChains {
		for _, f := range fc.Filters {
			if f.GetTypedConfig() == nil || f.Name != "envoy.filters.network.http_connection_manager" {
				continue
			}
			var m hcm.HttpConnectionManager
			if err := f.GetTypedConfig().UnmarshalTo(&m); err != nil {
				t.Fatal(err)
			}
			var out []httpFilter
			for _, hf := range m.HttpFilters {
				cfg := map[string]any{}
				if hf.GetTypedConfig() != nil {
					cfg = asJSON(t, hf.GetTypedConfig())
				}
				out = append(out, httpFilter{name: hf.Name, config: cfg})
			}
			return out, ""
		}
	}
	return nil, fmt.Sprintf("listener %s of %s/%s has no HTTP connection manager", listenerName, p.pod.Namespace, p.pod.Name)
}

// filtersNamed returns the configs of the filters called name.
func filtersNamed(fs []httpFilter, name string) []map[string]any {
	var out []map[string]any
	for _, f := range fs {
		if f.name == name {
			out = append(out, f.config)
		}
	}
	return out
}

// at returns the value at a dotted path of JSON data.
func at(v any, path string) any {
	for _, k := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// runningPod returns a running pod of the workload selected by sel in ns.
func runningPod(t *testing.T, c *kube.Client, ns string, sel map[string]string) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		pods, err := c.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(sel).String()})
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
				return &pods.Items[i]
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no running pod %v in %s", sel, ns)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// policyRule is the name Istio gives the RBAC policy of rule i of an
// AuthorizationPolicy.
func policyRule(ns, name string, i int) string {
	return fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]", ns, name, i)
}

// rbacPolicies returns the policy names of the RBAC filters of fs, by
// action: ALLOW and DENY from enforced rules, and CUSTOM from the shadow
// rules Istio uses to select requests for external authorization (whose
// names Istio prefixes with istio-ext-authz-).
func rbacPolicies(fs []httpFilter) map[string][]string {
	out := map[string][]string{}
	for _, cfg := range filtersNamed(fs, "envoy.filters.http.rbac") {
		for _, kind := range []string{"rules", "shadowRules"} {
			r, _ := cfg[kind].(map[string]any)
			if r == nil {
				continue
			}
			action, _ := r["action"].(string)
			if action == "" {
				action = "ALLOW"
			}
			if kind == "shadowRules" && strings.HasPrefix(fmt.Sprint(cfg["shadowRulesStatPrefix"]), "istio_ext_authz") {
				action = "CUSTOM"
			}
			policies, _ := r["policies"].(map[string]any)
			for name := range policies {
				if action == "CUSTOM" {
					name = strings.TrimPrefix(name, "istio-ext-authz-")
				}
				out[action] = append(out[action], name)
			}
		}
	}
	return out
}

package verify

import (
	"fmt"
	"maps"

	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kubeflow/kfistio/internal/object"
)

// peer is one end of a flow: a pod of a namespace with labels, or an address
// outside the cluster's pods (the API server, a node, a client on the
// internet).
type peer struct {
	namespace string
	labels    map[string]string
	// workload names a Deployment of istio-system in the build, whose pod
	// labels the peer takes.
	workload string
	// ip is the peer's address; pods get one from the pod range.
	ip string
	// who says what a peer outside the cluster's pods is.
	who string
}

// Peers of the flow table.
var (
	outside         = peer{ip: "203.0.113.7", who: "outside the cluster"}
	apiServer       = peer{ip: "192.0.2.10", who: "the API server"}
	node            = peer{ip: "192.0.2.20", who: "a node's address"}
	kubeflowPod     = peer{namespace: "kubeflow", labels: map[string]string{"app": "centraldashboard"}, ip: "10.244.1.10"}
	profilePod      = peer{namespace: "kubeflow-user-example-com", labels: map[string]string{"app": "notebook"}, ip: "10.244.1.11"}
	activator       = peer{namespace: "knative-serving", labels: map[string]string{"app": "activator"}, ip: "10.244.1.12"}
	monitoring      = peer{namespace: "monitoring", labels: map[string]string{"app.kubernetes.io/name": "prometheus"}, ip: "10.244.1.13"}
	istiodPod       = peer{namespace: ns, workload: istiodWorkload, ip: "10.244.2.10"}
	ingressPod      = peer{namespace: ns, workload: ingressGateway, ip: "10.244.2.11"}
	localGatewayPod = peer{namespace: ns, workload: localGateway, ip: "10.244.2.12"}
)

// flow is a row of the flow table: a connection to a pod of istio-system and
// whether the NetworkPolicies of the installation must allow it.
type flow struct {
	name    string
	from    peer
	to      peer
	port    int
	allowed bool
}

// flows is the flow table of the README: the TCP connections into
// istio-system the mesh needs, and those that must stay closed.
var flows = []flow{
	{"API server to istiod's webhooks", apiServer, istiodPod, 15017, true},
	{"sidecars to istiod's xDS and CA", kubeflowPod, istiodPod, 15012, true},
	{"host-network pods to istiod's xDS and CA", node, istiodPod, 15012, true},
	{"gateways to istiod", ingressPod, istiodPod, 15012, true},
	{"istio-system pods to each other", localGatewayPod, istiodPod, 15014, true},
	{"Knative to the ingress gateway", activator, ingressPod, 8080, true},
	{"Knative to the cluster-local gateway", activator, localGatewayPod, 8080, true},
	{"clients outside the cluster to the ingress gateway (HTTP)", outside, ingressPod, 8080, true},
	{"clients outside the cluster to the ingress gateway (HTTPS)", outside, ingressPod, 8443, true},
	{"load balancer probes to the ingress gateway's status port", outside, ingressPod, 15021, true},
	{"other namespaces to istiod's plain-text xDS", kubeflowPod, istiodPod, 15010, false},
	{"outside the cluster to istiod's plain-text xDS", outside, istiodPod, 15010, false},
	{"other namespaces to istiod's monitoring port", kubeflowPod, istiodPod, 15014, false},
	{"other namespaces to istiod's HTTP debug port", profilePod, istiodPod, 8080, false},
	{"other namespaces to the cluster-local gateway", profilePod, localGatewayPod, 8080, false},
	{"outside the cluster to the cluster-local gateway", outside, localGatewayPod, 8080, false},
	{"Prometheus of another namespace to the gateways' metrics", monitoring, ingressPod, 15090, false},
	{"other namespaces to the ingress gateway's Envoy admin", kubeflowPod, ingressPod, 15000, false},
}

// kubeflowNetworkPolicies are Kubeflow's NetworkPolicies of istio-system,
// which the tree keeps by name so that clusters installed from Kubeflow's
// tree converge.
var kubeflowNetworkPolicies = []string{
	"default-allow-same-namespace-istio-system", "allow-istiod-control-plane",
	"istiod-webhook-apiserver", "allow-knative-to-istio-gateways",
}

// checkNetworkPolicies (F20) evaluates every flow of the table against the
// NetworkPolicies of the build with cyclonus' NetworkPolicy matcher, the pods
// of istio-system carrying the labels of their pod templates in the build.
func checkNetworkPolicies(t *target) []Problem {
	var p problems
	for _, name := range kubeflowNetworkPolicies {
		t.require(&p, "NetworkPolicy", ns, name)
	}
	var nps []*networkingv1.NetworkPolicy
	for _, o := range t.objs {
		if o.GetKind() != "NetworkPolicy" {
			continue
		}
		np := &networkingv1.NetworkPolicy{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, np); err != nil {
			p.because(object.Key(o), "", err.Error())
			continue
		}
		// The API server defaults policyTypes as here (Ingress, and Egress
		// with egress rules); the matcher needs them set.
		if len(np.Spec.PolicyTypes) == 0 {
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
			if len(np.Spec.Egress) > 0 {
				np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
			}
		}
		nps = append(nps, np)
	}
	policy := matcher.BuildNetworkPolicies(true, nps)
	for _, f := range flows {
		from, okFrom := t.trafficPeer(f.from)
		to, okTo := t.trafficPeer(f.to)
		if !okFrom || !okTo {
			continue // the installation has no such workload
		}
		allowed := policy.IsTrafficAllowed(&matcher.Traffic{
			Source: from, Destination: to, ResolvedPort: f.port, Protocol: corev1.ProtocolTCP,
		}).IsAllowed()
		if allowed != f.allowed {
			want, got := "allowed", "refused"
			if !f.allowed {
				want, got = "refused", "allowed"
			}
			p.because(fmt.Sprintf("flow %q", f.name), fmt.Sprintf("%s -> %s:%d", f.from.describe(), f.to.describe(), f.port),
				fmt.Sprintf("the NetworkPolicies %s it; the flow table says %s", got, want))
		}
	}
	return p
}

// trafficPeer is pe as the matcher sees it: its namespace with the labels the
// build gives it (and kubernetes.io/metadata.name, which the API server
// sets), its pods' labels. False when pe names a workload the build lacks.
func (t *target) trafficPeer(pe peer) (*matcher.TrafficPeer, bool) {
	if pe.namespace == "" {
		return &matcher.TrafficPeer{IP: pe.ip}, true
	}
	podLabels := pe.labels
	if pe.workload != "" {
		d := t.get("Deployment", pe.namespace, t.workload(pe.workload))
		if d == nil {
			return nil, false
		}
		tpl, err := object.PodTemplate(d)
		if err != nil || tpl == nil {
			return nil, false
		}
		podLabels = tpl.Labels
	}
	nsLabels := map[string]string{corev1.LabelMetadataName: pe.namespace}
	if n := t.get("Namespace", "", pe.namespace); n != nil {
		maps.Copy(nsLabels, n.GetLabels())
	}
	return &matcher.TrafficPeer{IP: pe.ip, Internal: &matcher.InternalPeer{
		Namespace: pe.namespace, NamespaceLabels: nsLabels, PodLabels: podLabels,
	}}, true
}

// istiodWorkload stands for the istiod Deployment of the target, whatever
// its revision.
const istiodWorkload = "istiod"

// workload is the name of the Deployment that a peer's workload names in t.
func (t *target) workload(name string) string {
	if name == istiodWorkload {
		return t.names.Istiod
	}
	return name
}

func (pe peer) describe() string {
	switch {
	case pe.workload != "":
		return pe.namespace + "/" + pe.workload
	case pe.namespace != "":
		return "pods of " + pe.namespace
	}
	return pe.who
}

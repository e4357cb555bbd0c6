package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	adsgrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"istio.io/istio/pilot/pkg/model"
	v3 "istio.io/istio/pilot/pkg/xds/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/doctor"
	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
)

// What doctor says of the routing on the ingress gateway equals what istiod
// sends the gateway: Kubeflow's own VirtualServices (all "*") share one
// virtual host with nothing lost; a KServe VirtualService with a host of its
// own gets a virtual host without any of Kubeflow's routes, exactly the ones
// KF010 lists; of two VirtualServices with the same path, istiod puts the
// older first, which KF011 names; and the fixes doctor gives remove both from
// istiod's routes and from doctor's findings.
func TestGatewayRoutesWithIstiod(t *testing.T) {
	in := build.DefaultInstallation(build.DefaultOverlay)
	installMesh(t, in, objects(t, nil, in))
	c, _ := connect(t)
	routing := func(name string) []*unstructured.Unstructured {
		files, err := doctor.ReadFiles([]string{filepath.Join("../doctor/testdata/routing", name)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var out []*unstructured.Unstructured
		for _, d := range files[0].Docs {
			out = append(out, d.Object)
		}
		return out
	}
	objs := append(routing("kubeflow.yaml"), routing("kserve-path-based.yaml")...)
	for _, ns := range []string{"kubeflow", "auth", "kserve", "knative-serving", "kubeflow-user-example-com"} {
		prepareNamespace(t, c, ns, nil)
	}
	applyAll(t, c, objs)
	// Created a second later, the VirtualService with the pipelines path
	// comes after Kubeflow's in istiod's order (oldest first), not before
	// it as by name.
	time.Sleep(1100 * time.Millisecond)
	claim := routing("duplicate-route.yaml")
	applyAll(t, c, claim)

	p := connectProxy(t, c, runningPod(t, c, inject.Namespace, ingressGateway), model.Router)
	kserve, pipelines, claimer := "VirtualService/kubeflow-user-example-com/sklearn-iris", "VirtualService/kubeflow/ml-pipeline-ui", "VirtualService/kubeflow/kfp-proxy"

	var hosts map[string][]routeOf
	problems := eventuallyRoutes(t, p, func(h map[string][]routeOf) []string {
		hosts = h
		if len(h["models.example.com"]) == 0 || !slices.ContainsFunc(h["*"], func(r routeOf) bool { return r.vs == claimer }) {
			return []string{fmt.Sprintf("istiod has not sent the test's routes yet: %v", h)}
		}
		return nil
	})
	report(t, problems)

	// istiod: the specific host's virtual host has KServe's routes only.
	for _, r := range hosts["models.example.com"] {
		if r.vs != kserve {
			t.Errorf("virtual host models.example.com has a route of %s", r.vs)
		}
	}
	// What istiod's "*" virtual host has that models.example.com does not:
	// the routes that answer 404 for that host.
	var lost []string
	for _, r := range hosts["*"] {
		lost = append(lost, r.String())
	}
	slices.Sort(lost)
	lost = slices.Compact(lost)

	r, err := doctor.CheckCluster(context.Background(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string][]doctor.Finding{}
	for _, f := range r.Findings {
		if f.Severity.AtLeast(doctor.Warning) {
			byID[f.ID] = append(byID[f.ID], f)
		}
	}
	if len(byID[doctor.HostShadowed]) != 1 || byID[doctor.HostShadowed][0].Object != kserve {
		t.Fatalf("KF010 findings %+v, want one on %s", byID[doctor.HostShadowed], kserve)
	}
	_, list, _ := strings.Cut(byID[doctor.HostShadowed][0].Reason, "answer 404: ")
	reported := strings.Split(list, "; ")
	slices.Sort(reported)
	if !slices.Equal(reported, lost) {
		t.Errorf("KF010 lists as lost:\n  %s\nistiod's \"*\" virtual host has, and models.example.com lacks:\n  %s",
			strings.Join(reported, "\n  "), strings.Join(lost, "\n  "))
	}

	// istiod: the older VirtualService's /pipeline route comes first; doctor
	// names the newer one's as never used.
	first := slices.IndexFunc(hosts["*"], func(r routeOf) bool { return r.match == "prefix /pipeline" })
	if first < 0 || hosts["*"][first].vs != pipelines {
		t.Errorf("istiod's first /pipeline route: %v, want %s's", hosts["*"], pipelines)
	}
	if len(byID[doctor.RouteShadowed]) != 1 || byID[doctor.RouteShadowed][0].Object != claimer ||
		!strings.Contains(byID[doctor.RouteShadowed][0].Reason, pipelines) {
		t.Errorf("KF011 findings %+v, want one on %s naming %s", byID[doctor.RouteShadowed], claimer, pipelines)
	}
	delete(byID, doctor.HostShadowed)
	delete(byID, doctor.RouteShadowed)
	if others := otherThanKnative(byIDList(byID)); len(others) > 0 {
		t.Errorf("other warnings or errors on the cluster: %+v", others)
	}

	// The fixes: Kubeflow's hosts for KServe's VirtualService, a path of its
	// own for the other.
	fix := func(o *unstructured.Unstructured, patch string) {
		res, err := c.Resource(o)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := res.Patch(context.Background(), o.GetName(), types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
			t.Fatal(err)
		}
	}
	fix(routing("kserve-path-based.yaml")[0], `{"spec":{"hosts":["*"]}}`)
	fix(claim[0], `{"spec":{"http":[{"match":[{"uri":{"prefix":"/kfp-proxy/"}}],"route":[{"destination":{"host":"kfp-proxy.kubeflow.svc.cluster.local","port":{"number":80}}}]}]}}`)
	report(t, eventuallyRoutes(t, p, func(h map[string][]routeOf) []string {
		var problems []string
		if len(h) != 1 || len(h["*"]) == 0 {
			problems = append(problems, fmt.Sprintf("virtual hosts %v, want \"*\" only", h))
		}
		if !slices.ContainsFunc(h["*"], func(r routeOf) bool { return r.vs == kserve }) {
			problems = append(problems, "KServe's route is not in the \"*\" virtual host")
		}
		return problems
	}))
	r, err = doctor.CheckCluster(context.Background(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range otherThanKnative(r.Worst(doctor.Warning)) {
		t.Errorf("after the fixes: %s %s: %s", f.ID, f.Object, f.Reason)
	}
}

func byIDList(m map[string][]doctor.Finding) []doctor.Finding {
	var out []doctor.Finding
	for _, fs := range m {
		out = append(out, fs...)
	}
	return out
}

// knativeConflict is what Istio's analyzers say of Knative's ingress
// Gateway next to the tree's two: the same pods, port and hosts (IST0145).
// For plain HTTP istiod merges them; the routes above show it, with the
// models web app's route (bound to Knative's Gateway) in the same virtual
// host as the others. The tree's Gateways acknowledge it; Knative's is not
// the tree's to annotate.
const knativeConflict = "IST0145 Gateway/knative-serving/knative-ingress-gateway"

// otherThanKnative is fs without knativeConflict, which must be there.
func otherThanKnative(fs []doctor.Finding) []doctor.Finding {
	var out []doctor.Finding
	seen := false
	for _, f := range fs {
		if f.ID+" "+f.Object == knativeConflict {
			seen = true
			continue
		}
		out = append(out, f)
	}
	if !seen {
		out = append(out, doctor.Finding{ID: "missing", Object: knativeConflict})
	}
	return out
}

// applyAll creates objs with server-side apply, and deletes them when the
// test ends. Objects that exist already (the Services of oauth2-proxy and
// Dex that the cluster's Kubeflow neighbours hold) are left as they are.
func applyAll(t *testing.T, c *kube.Client, objs []*unstructured.Unstructured) {
	t.Helper()
	ctx := context.Background()
	for _, o := range objs {
		res, err := c.Resource(o)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := res.Get(ctx, o.GetName(), metav1.GetOptions{}); err == nil {
			continue
		} else if !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		body, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := res.Patch(ctx, o.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: fieldManager, Force: ptr(true)}); err != nil {
			t.Fatalf("apply %s: %v", object.Key(o), err)
		}
		t.Cleanup(func() { _ = res.Delete(context.Background(), o.GetName(), metav1.DeleteOptions{}) })
	}
}

// routeOf is one route of a virtual host as istiod sent it: the
// VirtualService it comes from and its path match.
type routeOf struct{ vs, match string }

// String is the form KF010 lists a route in.
func (r routeOf) String() string { return r.match + " (" + r.vs + ")" }

// eventuallyRoutes reads the routes of the gateway's port-80 listener, by
// virtual host domain, until check finds no problem or settle passes. It
// asks istiod for them on a stream of its own, by the name the listener
// gives (adsc asks by port, as a sidecar names its routes).
func eventuallyRoutes(t *testing.T, p *proxy, check func(map[string][]routeOf) []string) []string {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		rc, err := fetchRoutes(t, p, routeConfigName(t, p))
		var problems []string
		if err != nil {
			problems = []string{err.Error()}
		} else {
			problems = check(virtualHosts(rc))
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			return problems
		}
		time.Sleep(time.Second)
	}
}

// fetchRoutes asks istiod for one route configuration as p's proxy.
func fetchRoutes(t *testing.T, p *proxy, name string) (*route.RouteConfiguration, error) {
	t.Helper()
	addr, err := cluster.IstiodAddress(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := adsgrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, fmt.Errorf("ADS stream to %s: %w", addr, err)
	}
	pod := p.pod
	node := &core.Node{
		Id:       fmt.Sprintf("%s~%s~%s.%s~%s.svc.cluster.local", model.Router, pod.Status.PodIP, pod.Name, pod.Namespace, pod.Namespace),
		Metadata: nodeMeta(t, p.client, pod),
	}
	if err := stream.Send(&adsgrpc.DiscoveryRequest{Node: node, TypeUrl: v3.RouteType, ResourceNames: []string{name}}); err != nil {
		return nil, err
	}
	res, err := stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("RDS %s: %w", name, err)
	}
	for _, r := range res.Resources {
		var rc route.RouteConfiguration
		if err := r.UnmarshalTo(&rc); err != nil {
			t.Fatal(err)
		}
		if rc.Name == name {
			return &rc, nil
		}
	}
	return nil, fmt.Errorf("istiod sent no route configuration %s", name)
}

// routeConfigName is the route configuration of the gateway's port-80
// listener.
func routeConfigName(t *testing.T, p *proxy) string {
	t.Helper()
	l := p.ads.GetHTTPListeners()[gatewayListener]
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.Filters {
			var m hcm.HttpConnectionManager
			if f.GetTypedConfig() != nil && f.GetTypedConfig().UnmarshalTo(&m) == nil && m.GetRds() != nil {
				return m.GetRds().GetRouteConfigName()
			}
		}
	}
	t.Fatalf("listener %s has no RDS route configuration", gatewayListener)
	return ""
}

// virtualHosts lists the routes of each domain of rc.
func virtualHosts(rc *route.RouteConfiguration) map[string][]routeOf {
	out := map[string][]routeOf{}
	for _, vh := range rc.GetVirtualHosts() {
		var routes []routeOf
		for _, r := range vh.Routes {
			routes = append(routes, routeOf{vs: virtualServiceOf(r), match: pathMatch(r.GetMatch())})
		}
		for _, d := range vh.Domains {
			out[d] = routes
		}
	}
	return out
}

// virtualServiceOf reads the VirtualService istiod records in a route's
// metadata, /apis/networking.istio.io/v1/namespaces/NS/virtual-service/NAME,
// as VirtualService/NS/NAME.
func virtualServiceOf(r *route.Route) string {
	config := r.GetMetadata().GetFilterMetadata()["istio"].GetFields()["config"].GetStringValue()
	parts := strings.Split(config, "/")
	if len(parts) < 3 {
		return config
	}
	return object.KeyOf("VirtualService", parts[len(parts)-3], parts[len(parts)-1])
}

func pathMatch(m *route.RouteMatch) string {
	switch {
	case m.GetPrefix() != "":
		return "prefix " + m.GetPrefix()
	case m.GetPathSeparatedPrefix() != "":
		return "prefix " + m.GetPathSeparatedPrefix()
	case m.GetPath() != "":
		return "exact " + m.GetPath()
	case m.GetSafeRegex() != nil:
		return "regex " + m.GetSafeRegex().GetRegex()
	}
	return "any path"
}

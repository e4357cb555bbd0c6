package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
)

// With the sidecar-egress component, istiod sends a sidecar of the kubeflow
// namespace clusters only for the hosts the mesh-wide Sidecar lists, and the
// workloads of its exceptions every host.
func TestSidecarEgress(t *testing.T) {
	in := build.DefaultInstallation(build.DefaultOverlay)
	in.Components = []string{"sidecar-egress"}
	m := installMesh(t, in, objects(t, nil, in))
	m.noWarnings(t)
	c, _ := connect(t)
	probe(t, c, "team-x")
	probe(t, c, "kubeflow")
	listed := m.egressNamespaces(t)
	t.Run("a kubeflow workload reaches only the listed namespaces", func(t *testing.T) {
		p := m.sidecar(t, c, "kubeflow", "web-app")
		report(t, p.eventually(t, func() []string { return egressProblems(p, listed, false) }))
	})
	t.Run("the notebook controller reaches every namespace", func(t *testing.T) {
		p := m.sidecarAs(t, c, "kubeflow", "web-app", "notebook-controller")
		report(t, p.eventually(t, func() []string { return egressProblems(p, listed, true) }))
	})
	m.istiodErrors(t)
}

// probe creates the Service probe in ns (and ns, when missing).
func probe(t *testing.T, c *kube.Client, ns string) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err == nil {
		t.Cleanup(func() { deleteNamespace(t, c, ns) })
	} else if !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: ns},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "probe"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	if _, err := c.Kube.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Kube.CoreV1().Services(ns).Delete(context.Background(), "probe", metav1.DeleteOptions{}) })
}

// egressNamespaces returns the namespaces the mesh-wide Sidecar of the
// installation lets sidecars reach ("." is the workload's own).
func (m *mesh) egressNamespaces(t *testing.T) []string {
	t.Helper()
	s := object.Index(m.objs)[object.KeyOf("Sidecar", "istio-system", "default")]
	if s == nil {
		t.Fatal("the installation has no Sidecar istio-system/default")
	}
	egress, _, _ := unstructured.NestedSlice(s.Object, "spec", "egress")
	var out []string
	for _, e := range egress {
		hosts, _ := e.(map[string]any)["hosts"].([]any)
		for _, h := range hosts {
			ns, name, _ := strings.Cut(h.(string), "/")
			if svcNS, ok := strings.CutSuffix(strings.TrimPrefix(name, "*."), ".svc.cluster.local"); ok && ns == "*" {
				ns = svcNS // */*.NS.svc.cluster.local: the Services of NS
			}
			out = append(out, ns)
		}
	}
	return out
}

// egressProblems checks the outbound clusters of a sidecar: the probe of
// team-x is there only when all is set, the probe of kubeflow always, and
// without all no cluster is of a namespace not listed.
func egressProblems(p *proxy, listed []string, all bool) []string {
	var problems []string
	has := func(ns string) bool {
		_, ok := p.clusters[fmt.Sprintf("outbound|80||probe.%s.svc.cluster.local", ns)]
		return ok
	}
	if !has("kubeflow") {
		problems = append(problems, p.pod.Name+": no cluster of probe.kubeflow, a listed namespace")
	}
	if _, ok := p.clusters["outbound|80||cluster-local-gateway.istio-system.svc.cluster.local"]; !ok {
		problems = append(problems, p.pod.Name+": no cluster of the cluster-local gateway, a Service of istio-system")
	}
	if has("team-x") != all {
		problems = append(problems, fmt.Sprintf("%s: a cluster of probe.team-x, a namespace the Sidecar does not list: %v, want %v", p.pod.Name, has("team-x"), all))
	}
	if all {
		return problems
	}
	for name := range p.clusters {
		parts := strings.Split(name, "|")
		if len(parts) != 4 || parts[0] != "outbound" {
			continue
		}
		host := strings.Split(parts[3], ".")
		if len(host) < 2 {
			continue
		}
		ns := host[1]
		if ns != p.pod.Namespace && !slices.Contains(listed, ns) {
			problems = append(problems, p.pod.Name+": cluster "+name+" of a namespace the Sidecar does not list")
		}
	}
	return problems
}

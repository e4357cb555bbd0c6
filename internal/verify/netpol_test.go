package verify

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
)

// Each flow of the table fails F20, naming the flow, when the
// NetworkPolicies break it: an allowed flow when every policy of
// istio-system allows nothing, a refused one when a policy allows every
// connection.
func TestEachFlowFailsWhenBroken(t *testing.T) {
	closeAll := func(m *objects) {
		for _, o := range m.objs {
			if o.GetKind() == "NetworkPolicy" && o.GetNamespace() == ns {
				if err := unstructured.SetNestedSlice(o.Object, []any{}, "spec", "ingress"); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	openAll := func(m *objects) {
		m.add("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-all\n  namespace: istio-system\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n  ingress:\n  - {}\n")
	}
	for _, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			breaks := closeAll
			if !f.allowed {
				breaks = openAll
			}
			tg := checkMutated(t, inst("oauth2-proxy"), breaks)
			for _, c := range tg.Checks {
				if c.ID != "F20" {
					continue
				}
				for _, p := range c.Problems {
					if p.Object == fmt.Sprintf("flow %q", f.name) {
						return
					}
				}
				t.Fatalf("F20 does not name the flow: %+v", c.Problems)
			}
			t.Fatal("F20 did not run")
		})
	}
}

// Every flow runs on the default installation (none is skipped for a
// missing workload), and the README's flow table lists each.
func TestFlowTableInREADME(t *testing.T) {
	tgt := &target{spec: inst("oauth2-proxy")}
	objs, err := testEnv(t).objects(tgt.spec)
	if err != nil {
		t.Fatal(err)
	}
	tgt.objs = objs
	tgt.idx = object.Index(objs)
	tgt.names = revision.Find(objs)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if _, ok := tgt.trafficPeer(f.to); !ok {
			t.Errorf("flow %q: no %s in the default installation", f.name, f.to.workload)
		}
		verdict := "refused"
		if f.allowed {
			verdict = "allowed"
		}
		row := fmt.Sprintf("| %s | %s | %s | %d | %s |", f.name, f.from.describe(), f.to.describe(), f.port, verdict)
		if !strings.Contains(string(readme), row) {
			t.Errorf("README.md has no row %s", row)
		}
	}
}

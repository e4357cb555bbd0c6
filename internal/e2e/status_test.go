package e2e

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/install"
)

// status says of each validating webhook configuration what it checked:
// the CA bundle istiod writes, and that istiod answers (it refuses a
// dry-run probe). A validator whose calls do not reach istiod is not ready.
func TestStatusProbesValidators(t *testing.T) {
	in := build.DefaultInstallation(build.DefaultOverlay)
	m := installMesh(t, in, objects(t, nil, in))
	c, _ := connect(t)
	ctx := context.Background()
	validators := func() map[string]install.Component {
		inst := &install.Installer{Client: c}
		inv, err := inst.ReadInventory(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st, err := inst.Status(ctx, inv, m.objs)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]install.Component{}
		for _, comp := range st.Components {
			if strings.HasPrefix(comp.Object, "ValidatingWebhookConfiguration/") {
				out[comp.Object] = comp
			}
		}
		return out
	}
	got := validators()
	if len(got) == 0 {
		t.Fatal("status lists no validating webhook configuration")
	}
	for key, comp := range got {
		if comp.Status != "Current" || !strings.Contains(comp.Message, "CA bundle") || !strings.Contains(comp.Message, "istiod answers") {
			t.Errorf("%s: %s: %s", key, comp.Status, comp.Message)
		}
	}
	// Calls to a port istiod's Service does not have.
	const name = "istio-validator-istio-system"
	patch := `[{"op": "replace", "path": "/webhooks/0/clientConfig/service/port", "value": 444}]`
	if _, err := c.Kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().Patch(ctx, name, types.JSONPatchType, []byte(patch), metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
		t.Fatal(err)
	}
	comp := validators()["ValidatingWebhookConfiguration/"+name]
	if comp.Status != "InProgress" || !strings.Contains(comp.Message, "istiod does not answer") {
		t.Errorf("with calls to a wrong port: %s: %s", comp.Status, comp.Message)
	}
}

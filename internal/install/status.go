package install

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	"github.com/kubeflow/kfistio/internal/object"
)

// ReadInventory returns what kfistio installed on the cluster, or
// ErrNotInstalled.
func (in *Installer) ReadInventory(ctx context.Context) (*Inventory, error) {
	inv, err := readInventory(ctx, in.Client.Kube)
	if err == nil && inv == nil {
		err = ErrNotInstalled
	}
	return inv, err
}

// Component is the readiness of one workload of the installation.
type Component struct {
	Object  string `json:"object"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

// Status is what is installed and how it is doing.
type Status struct {
	Inventory  *Inventory  `json:"inventory"`
	Components []Component `json:"components"`
	// Drift lists the objects that differ from what install would apply.
	Drift []ObjectDiff `json:"drift"`
}

// Ready reports whether every component is Current.
func (s *Status) Ready() bool {
	for _, c := range s.Components {
		if c.Status != string(status.CurrentStatus) {
			return false
		}
	}
	return true
}

// Status reports the readiness of every workload of objs (the build of the
// installed overlay) and how the cluster drifted from it.
func (in *Installer) Status(ctx context.Context, inv *Inventory, objs []*unstructured.Unstructured) (*Status, error) {
	s := &Status{Inventory: inv}
	snap, err := in.Snapshot(ctx, append(inv.Stubs(), objs...))
	if err != nil {
		return nil, err
	}
	for _, o := range installOrder(objs) {
		if !waitable(o) || o.GetKind() == "CustomResourceDefinition" {
			continue
		}
		c := Component{Object: object.Key(o)}
		live, _ := snap.Get(in, o)
		if live == nil {
			c.Status, c.Message = string(status.NotFoundStatus), "not found"
			s.Components = append(s.Components, c)
			continue
		}
		st, err := readiness(live)
		if err != nil {
			return nil, fmt.Errorf("status of %s: %w", c.Object, err)
		}
		c.Status, c.Message = string(st.Status), st.Message
		if st.Status == status.CurrentStatus && o.GetKind() == "ValidatingWebhookConfiguration" {
			for _, rev := range validatorRevisions([]*unstructured.Unstructured{live}) {
				if err := in.probeValidator(ctx, rev); err != nil {
					c.Status, c.Message = string(status.InProgressStatus), c.Message+", but istiod does not answer: "+err.Error()
				} else {
					c.Message += "; istiod answers (it refused a dry-run probe)"
				}
			}
		}
		if st.Status != status.CurrentStatus {
			if why := in.explain(ctx, live); why != "" {
				c.Message += "; " + why
			}
		}
		s.Components = append(s.Components, c)
	}
	drift, err := in.diff(ctx, snap, inv, objs)
	if err != nil {
		return nil, err
	}
	s.Drift = drift
	return s, nil
}

package install

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/kubeflow/kfistio/internal/object"
)

// ObjectDiff is how one live object differs from what Install would make of
// it.
type ObjectDiff struct {
	Object string `json:"object"`
	// Action is Created, Configured or Pruned.
	Action Action `json:"action"`
	// Note says why install without --force-conflicts would stop here.
	Note string `json:"note,omitempty"`
	Diff string `json:"diff"`
}

// Diff compares the cluster with what Install would apply for objs, using
// server-side dry runs, and returns the objects that would change, in install
// order; objects the inventory has and objs lacks would be pruned.
func (in *Installer) Diff(ctx context.Context, objs []*unstructured.Unstructured) ([]ObjectDiff, error) {
	inv, err := readInventory(ctx, in.Client.Kube)
	if err != nil {
		return nil, err
	}
	return in.diff(ctx, inv, objs)
}

func (in *Installer) diff(ctx context.Context, inv *Inventory, objs []*unstructured.Unstructured) ([]ObjectDiff, error) {
	var out []ObjectDiff
	var desired []Ref
	for _, o := range installOrder(objs) {
		desired = append(desired, refOf(o))
		d, err := in.diffOne(ctx, o)
		if err != nil {
			return nil, err
		}
		if d != nil {
			out = append(out, *d)
		}
	}
	if inv == nil {
		return out, nil
	}
	for _, r := range stale(inv.Objects, desired) {
		if r.Kind == "CustomResourceDefinition" {
			continue // kept by prune
		}
		live, _, err := in.managed(ctx, r.stub())
		if err != nil {
			return nil, err
		}
		if live != nil {
			out = append(out, ObjectDiff{Object: r.Key(), Action: Pruned, Diff: diffYAML(r.Key(), live, nil)})
		}
	}
	return out, nil
}

func (in *Installer) diffOne(ctx context.Context, o *unstructured.Unstructured) (*ObjectDiff, error) {
	key := object.Key(o)
	if _, err := in.Client.Mapping(o.GroupVersionKind()); err != nil {
		// The kind does not exist yet: its CRD is part of the install.
		return &ObjectDiff{Object: key, Action: Created, Diff: diffYAML(key, nil, withLabel(o))}, nil
	}
	_, _, live, after, err := in.dryRun(ctx, o, false)
	var note string
	if apierrors.IsConflict(err) {
		// Show what install --force-conflicts would do, and say why plain
		// install would stop.
		note = err.Error()
		_, _, live, after, err = in.dryRun(ctx, o, true)
	}
	switch {
	case err != nil:
		return nil, err
	case live == nil:
		return &ObjectDiff{Object: key, Action: Created, Diff: diffYAML(key, nil, withLabel(o))}, nil
	case sameObject(live, after):
		return nil, nil
	}
	return &ObjectDiff{Object: key, Action: Configured, Note: note, Diff: diffYAML(key, live, after)}, nil
}

// diffYAML is the unified diff between two versions of an object (nil for
// absent), without the fields the server keeps for itself.
func diffYAML(key string, live, next *unstructured.Unstructured) string {
	text := func(o *unstructured.Unstructured) []byte {
		if o == nil {
			return nil
		}
		b, _ := yaml.Marshal(comparable(o))
		return b
	}
	return object.Diff(key+" (live)", key+" (after install)", text(live), text(next))
}

package install

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
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
	inv, err := readInventory(ctx, in.Client.Kube)
	if err != nil || inv == nil {
		return out, err
	}
	for _, r := range inv.Objects {
		if slices.Contains(desired, r) {
			continue
		}
		res, err := in.Client.Resource(r.stub())
		if err != nil {
			continue
		}
		live, err := res.Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil || live.GetLabels()[ManagedLabel] != "true" || r.Kind == "CustomResourceDefinition" {
			continue
		}
		out = append(out, ObjectDiff{Object: r.Key(), Action: Pruned, Diff: diffYAML(r.Key(), live, nil)})
	}
	return out, nil
}

func (in *Installer) diffOne(ctx context.Context, o *unstructured.Unstructured) (*ObjectDiff, error) {
	key := object.Key(o)
	want := withLabel(o)
	res, err := in.Client.Resource(o)
	if err != nil {
		// The kind does not exist yet: its CRD is part of the install.
		return &ObjectDiff{Object: key, Action: Created, Diff: diffYAML(key, nil, want)}, nil
	}
	live, err := res.Get(ctx, o.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return &ObjectDiff{Object: key, Action: Created, Diff: diffYAML(key, nil, want)}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	body, err := json.Marshal(want.Object)
	if err != nil {
		return nil, err
	}
	opts := metav1.PatchOptions{FieldManager: FieldManager, DryRun: []string{metav1.DryRunAll}}
	after, err := res.Patch(ctx, o.GetName(), types.ApplyPatchType, body, opts)
	var note string
	if apierrors.IsConflict(err) {
		// Show what install --force-conflicts would do, and say why plain
		// install would stop.
		note = err.Error()
		opts.Force = ptr(true)
		after, err = res.Patch(ctx, o.GetName(), types.ApplyPatchType, body, opts)
	}
	if err != nil {
		return nil, applyError(key, err)
	}
	if sameObject(live, after) {
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

package install

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

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
// server-side dry runs of the objects that moved since the last install, and returns the objects that would change, in install
// order; objects the inventory has and objs lacks would be pruned.
func (in *Installer) Diff(ctx context.Context, objs []*unstructured.Unstructured) ([]ObjectDiff, error) {
	inv, err := readInventory(ctx, in.Client.Kube)
	if err != nil {
		return nil, err
	}
	snap, err := in.Snapshot(ctx, append(inv.Stubs(), objs...))
	if err != nil {
		return nil, err
	}
	return in.diff(ctx, snap, inv, objs)
}

func (in *Installer) diff(ctx context.Context, snap *Snapshot, inv *Inventory, objs []*unstructured.Unstructured) ([]ObjectDiff, error) {
	ordered := installOrder(objs)
	var last map[string]string
	if inv != nil {
		last = inv.Applied
	}
	diffs := make([]*ObjectDiff, len(ordered))
	errs := inParallel(ctx, len(ordered), in.concurrency(), func(i int) error {
		d, err := in.diffOne(ctx, snap, ordered[i], last[object.Key(ordered[i])])
		diffs[i] = d
		return err
	})
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	var out []ObjectDiff
	var desired []Ref
	for i, o := range ordered {
		desired = append(desired, RefOf(o))
		if diffs[i] != nil {
			out = append(out, *diffs[i])
		}
	}
	if inv == nil {
		return out, nil
	}
	for _, r := range stale(inv.Objects, desired) {
		if r.Kind == "CustomResourceDefinition" {
			continue // kept by prune
		}
		if live, _ := in.managed(snap, r.Stub()); live != nil {
			out = append(out, ObjectDiff{Object: r.Key(), Action: Pruned, Diff: diffYAML(r.Key(), live, nil)})
		}
	}
	return out, nil
}

// diffOne compares o with its live object: none when the object still has
// last, the fingerprint of the last install, else with a dry run.
func (in *Installer) diffOne(ctx context.Context, snap *Snapshot, o *unstructured.Unstructured, last string) (*ObjectDiff, error) {
	key := object.Key(o)
	live, _ := snap.Get(in, o)
	if live == nil {
		// Absent, or its kind does not exist yet: its CRD is part of the
		// install.
		return &ObjectDiff{Object: key, Action: Created, Diff: diffYAML(key, nil, withLabel(o))}, nil
	}
	res, body, err := in.request(o)
	if err != nil {
		return nil, err
	}
	if fp := fingerprint(body, live); fp != "" && fp == last {
		return nil, nil
	}
	after, err := patch(ctx, res, o, body, false, true)
	var note string
	if apierrors.IsConflict(err) {
		// Show what install --force-conflicts would do, and say why plain
		// install would stop.
		note = err.Error()
		after, err = patch(ctx, res, o, body, true, true)
	}
	if err != nil {
		return nil, err
	}
	ours, err := kfistioFields(live)
	if ours == nil && err == nil {
		ours, err = kfistioFields(after)
	}
	if err != nil {
		return nil, err
	}
	shared := map[string][]string{}
	if ours != nil {
		if shared, err = sharedFields(live, ours); err != nil {
			return nil, err
		}
	}
	if _, ok := live.GetAnnotations()[LastAppliedAnnotation]; ok {
		shared["kubectl apply"] = append(shared["kubectl apply"], ".metadata.annotations."+LastAppliedAnnotation)
	}
	if len(shared) > 0 {
		// Another installation, or another tool, owns fields kfistio
		// applies: install stops here and --adopt takes them over.
		return &ObjectDiff{Object: key, Action: Adopted, Note: "other field managers own fields kfistio applies: install stops here, install --adopt takes them over",
			Diff: sharedText(key, shared) + diffYAML(key, live, after)}, nil
	}
	if sameObject(live, after) {
		return nil, nil
	}
	return &ObjectDiff{Object: key, Action: Configured, Note: note, Diff: diffYAML(key, live, after)}, nil
}

// sharedText lists the fields of key that other managers own too, a few
// per manager.
func sharedText(key string, shared map[string][]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: fields kfistio applies that other field managers own\n", key)
	for _, m := range slices.Sorted(maps.Keys(shared)) {
		fields := shared[m]
		fmt.Fprintf(&b, "#   %s: %d fields", m, len(fields))
		for i, f := range fields {
			if i == 5 {
				fmt.Fprintf(&b, ", ...")
				break
			}
			fmt.Fprintf(&b, " %s", f)
		}
		b.WriteString("\n")
	}
	return b.String()
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

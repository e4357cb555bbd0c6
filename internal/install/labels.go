package install

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"

	"github.com/kubeflow/kfistio/internal/object"
)

// LabelsFieldManager owns the labels an overlay needs on namespaces that
// other Kubeflow directories define, and nothing else of them.
const LabelsFieldManager = "kfistio-namespace-labels"

// labelNamespaces makes LabelsFieldManager own exactly the labels of
// Options.NamespaceLabels: each namespace is applied server-side with only its
// name and those labels, so kfistio owns those labels and never the
// namespace; labels it owned that the installation no longer wants (another
// overlay's) are released. Namespaces already as wanted are not written.
func (r *run) labelNamespaces(ctx context.Context) error {
	want := map[string]map[string]string{}
	for _, o := range r.o.NamespaceLabels {
		want[o.GetName()] = o.GetLabels()
	}
	live, err := r.in.namespaces(ctx, r.snap)
	if err != nil {
		return err
	}
	names := slices.Sorted(maps.Keys(want))
	for _, n := range slices.Sorted(maps.Keys(live)) {
		if _, ok := want[n]; !ok && len(live[n].owned) > 0 {
			names = append(names, n)
		}
	}
	for _, name := range names {
		ns, ok := live[name]
		// A namespace this run created is there, without labels, unless
		// the run is a dry run.
		missing := !ok && (r.o.DryRun || !r.newNamespaces[name])
		action, err := r.in.applyLabels(ctx, name, want[name], ns, missing, r.o.DryRun, r.o.ForceConflicts)
		if err != nil {
			return err
		}
		note := "labels " + labelList(want[name])
		if want[name] == nil {
			note = "labels released"
		}
		r.changes = append(r.changes, Change{Object: object.KeyOf("Namespace", "", name), Action: action, Note: note})
	}
	return nil
}

// releaseLabels gives up every namespace label LabelsFieldManager owns.
func (in *Installer) releaseLabels(ctx context.Context, snap *Snapshot, dryRun bool) (ChangeSet, error) {
	live, err := in.namespaces(ctx, snap)
	if err != nil {
		return nil, err
	}
	var changes ChangeSet
	for _, name := range slices.Sorted(maps.Keys(live)) {
		if len(live[name].owned) == 0 {
			continue
		}
		if _, err := in.applyLabels(ctx, name, nil, live[name], false, dryRun, false); err != nil {
			return changes, err
		}
		changes = append(changes, Change{Object: object.KeyOf("Namespace", "", name), Action: Released, Note: "labels released"})
	}
	return changes, nil
}

// labelledNamespace is a live namespace and the labels LabelsFieldManager
// owns on it.
type labelledNamespace struct {
	labels map[string]string
	owned  []string
}

// namespaces returns every live namespace by name, with the labels
// LabelsFieldManager owns on it, from snap (which lists them all at most once).
func (in *Installer) namespaces(ctx context.Context, snap *Snapshot) (map[string]labelledNamespace, error) {
	proto := []*unstructured.Unstructured{Ref{APIVersion: "v1", Kind: "Namespace"}.Stub()}
	if err := snap.Read(ctx, in, proto); err != nil {
		return nil, err
	}
	out := map[string]labelledNamespace{}
	for _, ns := range snap.Listed(in, proto[0]) {
		out[ns.GetName()] = labelledNamespace{labels: ns.GetLabels(), owned: ownedLabels(ns.GetManagedFields())}
	}
	return out, nil
}

// ownedLabels returns the label keys LabelsFieldManager applied, by the
// managedFields of a namespace.
func ownedLabels(managed []metav1.ManagedFieldsEntry) []string {
	metadata, labels := "metadata", "labels"
	var keys []string
	for _, mf := range managed {
		if mf.Manager != LabelsFieldManager || mf.Operation != metav1.ManagedFieldsOperationApply {
			continue
		}
		s, err := fieldSet(mf)
		if err != nil {
			continue
		}
		owned := s.Children.Descend(fieldpath.PathElement{FieldName: &metadata}).Children.Descend(fieldpath.PathElement{FieldName: &labels})
		owned.Members.Iterate(func(pe fieldpath.PathElement) { keys = append(keys, *pe.FieldName) })
	}
	slices.Sort(keys)
	return keys
}

// applyLabels applies namespace name with labels as LabelsFieldManager,
// unless it already carries them and the manager owns no other label. live
// is the namespace as listed; missing says there is none yet.
func (in *Installer) applyLabels(ctx context.Context, name string, labels map[string]string, live labelledNamespace, missing, dryRun, force bool) (Action, error) {
	key := object.KeyOf("Namespace", "", name)
	action := Configured
	if missing {
		action = Created
	} else if slices.Equal(live.owned, slices.Sorted(maps.Keys(labels))) && hasLabels(live.labels, labels) {
		return Unchanged, nil
	}
	if dryRun {
		return action, nil
	}
	if err := in.BeforeWrite(ctx); err != nil {
		return "", err
	}
	meta := map[string]any{"name": name}
	if len(labels) > 0 {
		meta["labels"] = labels
	}
	body, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
	if err != nil {
		return "", err
	}
	if _, err := in.Client.Kube.CoreV1().Namespaces().Patch(ctx, name, types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: LabelsFieldManager, Force: &force}); err != nil {
		if apierrors.IsConflict(err) {
			return "", fmt.Errorf("label %s with %s: another field manager owns these labels with other values (%w); rerun with --force-conflicts to take them over", key, labelList(labels), err)
		}
		return "", fmt.Errorf("label %s with %s: %w", key, labelList(labels), err)
	}
	return action, nil
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func labelList(labels map[string]string) string {
	var l []string
	for k, v := range labels {
		l = append(l, k+"="+v)
	}
	slices.Sort(l)
	return "[" + strings.Join(l, " ") + "]"
}

package install

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubeflow/kfistio/internal/object"
)

// LabelsFieldManager owns the labels an overlay needs on namespaces that
// other Kubeflow directories define, and nothing else of them.
const LabelsFieldManager = "kfistio-namespace-labels"

// labelNamespaces applies Options.NamespaceLabels, each as a server-side apply
// of a Namespace with only its name and those labels, so that kfistio owns
// those labels and never the namespace. A namespace that already carries them
// is not written.
func (r *run) labelNamespaces(ctx context.Context) error {
	nss := r.in.Client.Kube.CoreV1().Namespaces()
	for _, want := range r.o.NamespaceLabels {
		name, labels := want.GetName(), want.GetLabels()
		key := object.KeyOf("Namespace", "", name)
		live, err := nss.Get(ctx, name, metav1.GetOptions{})
		action := Configured
		switch {
		case apierrors.IsNotFound(err):
			action = Created
		case err != nil:
			return fmt.Errorf("get %s: %w", key, err)
		case hasLabels(live.Labels, labels):
			r.changes = append(r.changes, Change{Object: key, Action: Unchanged, Note: "labels " + labelList(labels)})
			continue
		}
		if r.o.DryRun && r.newNamespaces[name] {
			r.changes = append(r.changes, Change{Object: key, Action: action, Note: "labels " + labelList(labels)})
			continue
		}
		body, err := json.Marshal(map[string]any{
			"apiVersion": "v1", "kind": "Namespace",
			"metadata": map[string]any{"name": name, "labels": labels},
		})
		if err != nil {
			return err
		}
		force := r.o.ForceConflicts
		opts := metav1.PatchOptions{FieldManager: LabelsFieldManager, Force: &force}
		if r.o.DryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		if _, err := nss.Patch(ctx, name, types.ApplyPatchType, body, opts); err != nil {
			if apierrors.IsConflict(err) {
				return fmt.Errorf("label %s with %s: another field manager owns these labels with other values (%w); rerun with --force-conflicts to take them over", key, labelList(labels), err)
			}
			return fmt.Errorf("label %s with %s: %w", key, labelList(labels), err)
		}
		r.changes = append(r.changes, Change{Object: key, Action: action, Note: "labels " + labelList(labels) + "; not removed by uninstall"})
	}
	return nil
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
	return fmt.Sprint(l)
}

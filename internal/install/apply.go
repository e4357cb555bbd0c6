package install

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/kubeflow/kfistio/internal/object"
)

// Action is what kfistio did, or would do, to one object.
type Action string

// Actions of a change set.
const (
	Created    Action = "created"
	Configured Action = "configured"
	Unchanged  Action = "unchanged"
	// Adopted: kfistio took the object over from other field managers.
	Adopted Action = "adopted"
	Pruned  Action = "pruned"
	Deleted Action = "deleted"
	// Released: kfistio removed the fields it owned and left the object, a
	// namespace that other software shares.
	Released Action = "released"
)

// Change is one line of a change set.
type Change struct {
	Object string `json:"object"`
	Action Action `json:"action"`
	Note   string `json:"note,omitempty"`
	// Removed are the fields an adoption removed: the previous release set
	// them and this one does not.
	Removed []string `json:"removed,omitempty"`
}

// ChangeSet is what an install or uninstall did, object by object, in order.
type ChangeSet []Change

// Count returns how many changes have action a.
func (cs ChangeSet) Count(a Action) int {
	n := 0
	for _, c := range cs {
		if c.Action == a {
			n++
		}
	}
	return n
}

// withLabel returns a copy of o that carries ManagedLabel.
func withLabel(o *unstructured.Unstructured) *unstructured.Unstructured {
	c := o.DeepCopy()
	labels := c.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	labels[ManagedLabel] = "true"
	c.SetLabels(labels)
	return c
}

// request is what a server-side apply of o sends, and where.
func (in *Installer) request(o *unstructured.Unstructured) (dynamic.ResourceInterface, []byte, error) {
	res, err := in.Client.Resource(o)
	if err != nil {
		return nil, nil, fmt.Errorf("apply %s: %w", object.Key(o), err)
	}
	body, err := json.Marshal(withLabel(o).Object)
	if err != nil {
		return nil, nil, fmt.Errorf("apply %s: %w", object.Key(o), err)
	}
	return res, body, nil
}

// patch server-side applies body as o, or only as a dry run.
func patch(ctx context.Context, res dynamic.ResourceInterface, o *unstructured.Unstructured, body []byte, force, dryRun bool) (*unstructured.Unstructured, error) {
	opts := metav1.PatchOptions{FieldManager: FieldManager, Force: &force}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	after, err := res.Patch(ctx, o.GetName(), types.ApplyPatchType, body, opts)
	if err != nil {
		return nil, applyError(object.Key(o), err)
	}
	return after, nil
}

// apply server-side applies o over its live object (nil when there is none)
// and reports what it did (or, with dryRun, would do), and the fingerprint
// of the result. A creation is sent once, with no comparison. An object
// whose fingerprint is last, the one this apply left, needs no request: the
// fields kfistio owns are still the ones it applied, with their values.
// Otherwise the server's dry run of the apply says whether it would change
// anything, and only then is it sent.
func (in *Installer) apply(ctx context.Context, o, live *unstructured.Unstructured, last string, dryRun, force bool) (Action, string, error) {
	res, body, err := in.request(o)
	if err != nil {
		return "", "", err
	}
	if live == nil {
		if err := in.BeforeWrite(ctx); err != nil {
			return "", "", err
		}
		after, err := patch(ctx, res, o, body, force, dryRun)
		if err != nil {
			return "", "", err
		}
		return Created, fingerprint(body, after), nil
	}
	if fp := fingerprint(body, live); fp != "" && fp == last {
		return Unchanged, fp, nil
	}
	after, err := patch(ctx, res, o, body, force, true)
	if err != nil {
		return "", "", err
	}
	if sameObject(live, after) {
		return Unchanged, fingerprint(body, live), nil
	}
	if !dryRun {
		if err := in.BeforeWrite(ctx); err != nil {
			return "", "", err
		}
		if after, err = patch(ctx, res, o, body, force, false); err != nil {
			return "", "", err
		}
	}
	return Configured, fingerprint(body, after), nil
}

// fingerprint identifies what kfistio applied to o: the applied body and
// kfistio's managedFields entry, whose fields shrink when another manager
// takes one over or removes one, and whose time moves when kfistio changes a
// value. "" when kfistio has no entry.
func fingerprint(body []byte, o *unstructured.Unstructured) string {
	e, ok := kfistioEntry(o)
	if !ok || e.FieldsV1 == nil {
		return ""
	}
	h := sha256.New()
	h.Write(body)
	t := ""
	if e.Time != nil {
		t = e.Time.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(h, "\x00%s\x00%s\x00", e.APIVersion, t)
	h.Write(e.FieldsV1.Raw)
	return hex.EncodeToString(h.Sum(nil))
}

// sameObject compares two versions of an object, ignoring what the server
// keeps for itself.
func sameObject(a, b *unstructured.Unstructured) bool {
	return reflect.DeepEqual(comparable(a), comparable(b))
}

func comparable(o *unstructured.Unstructured) map[string]any {
	c := o.DeepCopy()
	unstructured.RemoveNestedField(c.Object, "metadata", "managedFields")
	unstructured.RemoveNestedField(c.Object, "metadata", "resourceVersion")
	return c.Object
}

// applyError says what failed on which object, and what to do.
func applyError(key string, err error) error {
	switch {
	case apierrors.IsConflict(err):
		return fmt.Errorf("apply %s: %w (another field manager owns these fields: re-run with --force-conflicts to take them over)", key, err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("apply %s: permission denied: %w", key, err)
	}
	return fmt.Errorf("apply %s: %w", key, err)
}

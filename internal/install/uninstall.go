package install

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/object"
)

// UninstallOptions say how much Uninstall removes.
type UninstallOptions struct {
	// Purge also deletes the CRDs, with every custom resource of their kinds,
	// and the istio-system namespace.
	Purge bool
	// Confirm must be set for Purge to delete custom resources that exist.
	Confirm bool
	DryRun  bool
	Timeout time.Duration
}

// ErrNotInstalled says the cluster has no kfistio inventory.
var ErrNotInstalled = fmt.Errorf("no kfistio installation on this cluster (no ConfigMap %s/%s)", InventoryNamespace, InventoryName)

// PurgeError lists the custom resources that a purge would delete with their
// CRDs; Uninstall returns it unless the purge is confirmed.
type PurgeError struct{ Resources []string }

func (e *PurgeError) Error() string {
	return fmt.Sprintf("--purge would delete %d custom resources that kfistio did not install, with the Istio CRDs:\n  %s\nre-run with --yes to delete them",
		len(e.Resources), strings.Join(e.Resources, "\n  "))
}

// Uninstall removes what the inventory records, in reverse install order,
// waits until it is gone, and deletes the inventory.
func (in *Installer) Uninstall(ctx context.Context, o UninstallOptions) (_ ChangeSet, err error) {
	o.Timeout = TimeoutOr(o.Timeout)
	inv, err := readInventory(ctx, in.Client.Kube)
	if err != nil {
		return nil, err
	}
	if inv == nil {
		return nil, ErrNotInstalled
	}
	snap, err := in.Snapshot(ctx, Stubs(inv.Objects))
	if err != nil {
		return nil, err
	}
	if o.Purge {
		crs, err := in.customResources(ctx, snap, inv.Objects)
		if err != nil {
			return nil, err
		}
		if len(crs) > 0 && !o.Confirm {
			return nil, &PurgeError{Resources: crs}
		}
	}
	if !o.DryRun {
		release := in.Begin(inv)
		defer func() { err = errors.Join(err, release()) }()
	}
	var changes ChangeSet
	err = in.Step(fmt.Sprintf("Removing %d objects", len(inv.Objects)), func() error {
		changes, err = in.remove(ctx, snap, inv.Objects, Deleted, o.Purge, o.DryRun)
		return err
	})
	if err == nil {
		var released ChangeSet
		released, err = in.releaseLabels(ctx, snap, o.DryRun)
		changes = append(changes, released...)
	}
	if err != nil || o.DryRun {
		return changes, err
	}
	var gone []Ref
	for _, c := range changes {
		if c.Action == Deleted {
			for _, r := range inv.Objects {
				if r.Key() == c.Object {
					gone = append(gone, r)
				}
			}
		}
	}
	if err := in.Step("Waiting until the deleted objects are gone", func() error { return in.WaitGone(ctx, gone, o.Timeout) }); err != nil {
		return changes, err
	}
	return changes, in.DeleteInventory(ctx, inv)
}

// customResources lists the objects of every kind the inventory's CRDs
// define, in every namespace, that kfistio did not apply itself.
func (in *Installer) customResources(ctx context.Context, snap *Snapshot, refs []Ref) ([]string, error) {
	ours := map[string]bool{}
	for _, r := range refs {
		ours[r.Key()] = true
	}
	var out []string
	for _, r := range refs {
		if r.Kind != "CustomResourceDefinition" {
			continue
		}
		crd, _ := snap.Get(in, r.Stub())
		if crd == nil {
			continue
		}
		group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
		kind, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "kind")
		versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
		for _, v := range versions {
			vm, _ := v.(map[string]any)
			if vm["storage"] != true {
				continue
			}
			probe := &unstructured.Unstructured{}
			probe.SetAPIVersion(group + "/" + fmt.Sprint(vm["name"]))
			probe.SetKind(kind)
			m, err := in.Client.Mapping(probe.GroupVersionKind())
			if meta.IsNoMatchError(err) {
				continue // not served (its names were refused): nothing of it exists
			}
			if err != nil {
				return nil, err
			}
			list, err := in.Client.Dynamic.Resource(m.Resource).List(ctx, metav1.ListOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("list %s: %w", m.Resource, err)
			}
			for _, item := range list.Items {
				if !ours[object.Key(&item)] {
					out = append(out, object.Key(&item))
				}
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// WaitGone waits until refs no longer exist, whoever manages them, listing
// them by kind and namespace.
func (in *Installer) WaitGone(ctx context.Context, refs []Ref, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	objs := Stubs(refs)
	for {
		snap, err := in.Snapshot(ctx, objs)
		if err != nil {
			return err
		}
		var left []string
		for _, o := range objs {
			if live, _ := snap.Get(in, o); live != nil {
				left = append(left, object.Key(o))
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("still present after " + timeout.String() + " (finalizers?): " + strings.Join(left, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

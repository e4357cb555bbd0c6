package install

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// The inventory is a ConfigMap that records what kfistio applied, so that a
// later install can prune and uninstall can remove it. It lives in
// kube-system, which exists on every cluster and outlives istio-system.
const (
	InventoryNamespace = "kube-system"
	InventoryName      = "kfistio"
)

// ManagedLabel marks every object kfistio applies; prune and uninstall only
// touch objects that carry it.
const ManagedLabel = "kfistio.kubeflow.org/managed"

// FieldManager is the server-side apply field manager of kfistio.
const FieldManager = "kfistio"

// Ref names an object in the inventory.
type Ref struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
}

// RefOf names o in the inventory.
func RefOf(o *unstructured.Unstructured) Ref {
	return Ref{APIVersion: o.GetAPIVersion(), Kind: o.GetKind(), Namespace: o.GetNamespace(), Name: o.GetName()}
}

// Key is the Kind/namespace/name of the object.
func (r Ref) Key() string { return object.KeyOf(r.Kind, r.Namespace, r.Name) }

// sameObject reports whether r and o name the same object, whatever API
// version each uses.
func (r Ref) sameObject(o Ref) bool {
	return r.Kind == o.Kind && r.Namespace == o.Namespace && r.Name == o.Name &&
		schema.FromAPIVersionAndKind(r.APIVersion, r.Kind).Group == schema.FromAPIVersionAndKind(o.APIVersion, o.Kind).Group
}

// stale returns the refs of previous that desired no longer has.
func stale(previous, desired []Ref) []Ref {
	var out []Ref
	for _, r := range previous {
		if !slices.ContainsFunc(desired, r.sameObject) {
			out = append(out, r)
		}
	}
	return out
}

// Stub is an unstructured object that carries only the identity of r.
func (r Ref) Stub() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(r.APIVersion)
	u.SetKind(r.Kind)
	u.SetNamespace(r.Namespace)
	u.SetName(r.Name)
	return u
}

// Stubs are the stubs of refs.
func Stubs(refs []Ref) []*unstructured.Unstructured {
	out := make([]*unstructured.Unstructured, 0, len(refs))
	for _, r := range refs {
		out = append(out, r.Stub())
	}
	return out
}

// Stubs are the stubs of what inv records (none without one).
func (inv *Inventory) Stubs() []*unstructured.Unstructured {
	if inv == nil {
		return nil
	}
	return Stubs(inv.Objects)
}

// Inventory is what the inventory ConfigMap records.
type Inventory struct {
	// Overlay and the optional parts of the installation.
	Overlay             string `json:"overlay"`
	ClusterLocalGateway bool   `json:"clusterLocalGateway"`
	M2MAuth             bool   `json:"m2mAuth"`
	KubeflowResources   bool   `json:"kubeflowResources"`
	// Components are the opt-in components of the installation.
	Components []string `json:"components,omitempty"`
	// Revision is the control plane revision of the installation, empty for
	// the default control plane.
	Revision string `json:"revision,omitempty"`
	// IstioRelease applied, and the kfistio version that applied it.
	IstioRelease   string `json:"istioRelease"`
	KfistioVersion string `json:"kfistioVersion"`
	// Complete is false while an install is under way (or was interrupted).
	Complete bool  `json:"complete"`
	Objects  []Ref `json:"objects"`
	// cm is the ConfigMap it was read from or written to; the next write
	// holds only while the ConfigMap is unchanged.
	cm *corev1.ConfigMap
	// Applied is, by Kind/namespace/name, the fingerprint of what the last
	// install applied: an object that still has it needs no request.
	Applied map[string]string `json:"applied,omitempty"`
	// Upgrade is the upgrade by revision under way, nil when there is none.
	Upgrade *Upgrade `json:"upgrade,omitempty"`
}

// Upgrade records an upgrade by revision under way, so that each of its
// steps, a rollback, and a run after an interruption know where it stands.
type Upgrade struct {
	// From is the revision being replaced ("default" for a control plane
	// installed without one), FromRelease its Istio release; To the new
	// revision.
	From        string `json:"from"`
	FromRelease string `json:"fromRelease"`
	To          string `json:"to"`
	// Default is the revision that injects istio-injection=enabled
	// namespaces and owns the default validator: From until the switch, To
	// after it, From again after a rollback.
	Default string `json:"default"`
	// RolledBack is set by a rollback: finish then removes To.
	RolledBack bool `json:"rolledBack,omitempty"`
	// Previous is the inventory of the installation being replaced, when
	// kfistio made it.
	Previous *Inventory `json:"previous,omitempty"`
	// Saved holds each object that a step of the upgrade changed or created,
	// as it was before that step, for a rollback.
	Saved []Saved `json:"saved,omitempty"`
}

// Saved is an object as it was before a step of an upgrade changed it.
type Saved struct {
	Step string `json:"step"`
	Ref  Ref    `json:"ref"`
	// Object is the object's content, without what the cluster manages
	// (status, CA bundles, replicas of autoscaled workloads); nil when the
	// step created it.
	Object map[string]any `json:"object,omitempty"`
}

// appliedOf returns the fingerprints of inv, none without an inventory.
func (inv *Inventory) appliedOf() map[string]string {
	if inv == nil {
		return nil
	}
	return inv.Applied
}

// Installation is what the inventory says was installed.
func (inv *Inventory) Installation() build.Installation {
	return build.Installation{Overlay: inv.Overlay, ClusterLocalGateway: inv.ClusterLocalGateway,
		M2MAuth: inv.M2MAuth, KubeflowResources: inv.KubeflowResources, Components: inv.Components, Revision: inv.Revision}
}

// NewInventory is the inventory of installation in, of objs, made by kfistio
// version.
func NewInventory(in build.Installation, version string, objs []Ref) *Inventory {
	return &Inventory{Overlay: in.Overlay, ClusterLocalGateway: in.ClusterLocalGateway, M2MAuth: in.M2MAuth,
		KubeflowResources: in.KubeflowResources, Components: in.Components, Revision: in.Revision,
		IstioRelease: upstream.Release, KfistioVersion: version, Objects: objs}
}

// readInventory returns the inventory, or nil when there is none.
func readInventory(ctx context.Context, kc kubernetes.Interface) (*Inventory, error) {
	cm, err := kc.CoreV1().ConfigMaps(InventoryNamespace).Get(ctx, InventoryName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the inventory %s: %w", inventoryKey, err)
	}
	inv := &Inventory{cm: cm}
	if err := json.Unmarshal([]byte(cm.Data[inventoryData]), inv); err != nil {
		return nil, fmt.Errorf("%s is not a kfistio inventory: %w", inventoryKey, err)
	}
	return inv, nil
}

// inventoryData is the key of the inventory ConfigMap that holds it.
const inventoryData = "inventory"

var inventoryKey = object.KeyOf("ConfigMap", InventoryNamespace, InventoryName)

// data is what inv's ConfigMap held when it was read or written; "" for no
// inventory.
func (inv *Inventory) data() string {
	if inv == nil || inv.cm == nil {
		return ""
	}
	return inv.cm.Data[inventoryData]
}

// errInventoryChanged says the inventory changed since this run read it.
func errInventoryChanged(err error) error {
	return fmt.Errorf("write the inventory %s: it changed since this run read it (another kfistio operation, or an edit): %w; run again", inventoryKey, err)
}

// sameInventory reports whether a and b record the same installation.
func sameInventory(a, b *Inventory) bool {
	if a == nil || b == nil {
		return a == b
	}
	ja, _ := json.Marshal(sortedInventory(a))
	jb, _ := json.Marshal(sortedInventory(b))
	return string(ja) == string(jb)
}

func sortedInventory(inv *Inventory) *Inventory {
	c := *inv
	c.Objects = append([]Ref{}, inv.Objects...)
	sort.Slice(c.Objects, func(i, j int) bool { return c.Objects[i].Key() < c.Objects[j].Key() })
	return &c
}

// writeInventory saves inv over base, the inventory as this run last read or
// wrote it (nil when there was none): the write holds only while the
// ConfigMap is unchanged. When something else changed it (labels, an
// annotation), it is read again and, if it still records base, written again,
// keeping what the other writer set; if it records something else, another
// operation wrote it, and the write stops. inv then holds the ConfigMap
// written.
func writeInventory(ctx context.Context, kc kubernetes.Interface, inv, base *Inventory) error {
	b, err := json.MarshalIndent(sortedInventory(inv), "", "  ")
	if err != nil {
		return err
	}
	cms := kc.CoreV1().ConfigMaps(InventoryNamespace)
	var cur *corev1.ConfigMap
	if base != nil {
		cur = base.cm
	}
	return onConflict(ctx, inventoryKey, "write the inventory", func(first bool) error {
		if !first {
			now, err := rereadInventory(ctx, cms)
			if err != nil {
				return err
			}
			if (now == nil) != (cur == nil) || (now != nil && now.Data[inventoryData] != base.data()) {
				return errInventoryChanged(errors.New("it records another installation now"))
			}
			cur = now
		}
		var got *corev1.ConfigMap
		var err error
		if cur == nil {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: InventoryName, Namespace: InventoryNamespace,
				Labels: map[string]string{ManagedLabel: "true"}}, Data: map[string]string{inventoryData: string(b)}}
			got, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: FieldManager})
			if apierrors.IsAlreadyExists(err) {
				return errInventoryChanged(errors.New("another run created it meanwhile"))
			}
		} else {
			next := cur.DeepCopy()
			next.Data = map[string]string{inventoryData: string(b)}
			if next.Labels == nil {
				next.Labels = map[string]string{}
			}
			next.Labels[ManagedLabel] = "true"
			got, err = cms.Update(ctx, next, metav1.UpdateOptions{FieldManager: FieldManager})
		}
		switch {
		case apierrors.IsConflict(err):
			return err
		case err != nil:
			return fmt.Errorf("write the inventory %s: %w", inventoryKey, err)
		}
		inv.cm = got
		return nil
	})
}

// rereadInventory reads the inventory's ConfigMap again after a conflict;
// nil when it is gone.
func rereadInventory(ctx context.Context, cms typedcorev1.ConfigMapInterface) (*corev1.ConfigMap, error) {
	now, err := cms.Get(ctx, InventoryName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read the inventory %s again: %w", inventoryKey, err)
	}
	return now, nil
}

// WriteInventory saves inv over base, the inventory as the operation last
// read or wrote it (nil when there was none), under the operation's lease.
func (in *Installer) WriteInventory(ctx context.Context, inv, base *Inventory) error {
	if err := in.BeforeWrite(ctx); err != nil {
		return err
	}
	return writeInventory(ctx, in.Client.Kube, inv, base)
}

// DeleteInventory deletes inv's ConfigMap, under the operation's lease.
func (in *Installer) DeleteInventory(ctx context.Context, inv *Inventory) error {
	if err := in.BeforeWrite(ctx); err != nil {
		return err
	}
	return deleteInventory(ctx, in.Client.Kube, inv)
}

// deleteInventory deletes inv's ConfigMap if it still records inv: the
// delete holds only while the ConfigMap is unchanged, and is sent again over
// a version that only others' labels or annotations changed.
func deleteInventory(ctx context.Context, kc kubernetes.Interface, inv *Inventory) error {
	cms := kc.CoreV1().ConfigMaps(InventoryNamespace)
	cur := inv.cm
	return onConflict(ctx, inventoryKey, "delete the inventory", func(first bool) error {
		if !first {
			now, err := rereadInventory(ctx, cms)
			switch {
			case err != nil:
				return err
			case now == nil:
				return nil
			case now.Data[inventoryData] != inv.data():
				return fmt.Errorf("delete the inventory %s: another kfistio operation wrote it meanwhile; run again", inventoryKey)
			}
			cur = now
		}
		err := cms.Delete(ctx, InventoryName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &cur.ResourceVersion}})
		switch {
		case apierrors.IsConflict(err):
			return err
		case err != nil && !apierrors.IsNotFound(err):
			return fmt.Errorf("delete the inventory %s: %w", inventoryKey, err)
		}
		return nil
	})
}

// union returns the objects of a and b, once each, as b names them.
func union(a, b []Ref) []Ref {
	return append(stale(a, b), b...)
}

package install

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"

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

func refOf(o *unstructured.Unstructured) Ref {
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

// stub is an unstructured object that carries only the identity of r.
func (r Ref) stub() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(r.APIVersion)
	u.SetKind(r.Kind)
	u.SetNamespace(r.Namespace)
	u.SetName(r.Name)
	return u
}

// stubs are the stubs of refs.
func stubs(refs []Ref) []*unstructured.Unstructured {
	out := make([]*unstructured.Unstructured, 0, len(refs))
	for _, r := range refs {
		out = append(out, r.stub())
	}
	return out
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
	// IstioRelease applied, and the kfistio version that applied it.
	IstioRelease   string `json:"istioRelease"`
	KfistioVersion string `json:"kfistioVersion"`
	// Complete is false while an install is under way (or was interrupted).
	Complete bool  `json:"complete"`
	Objects  []Ref `json:"objects"`
	// resourceVersion of the ConfigMap it was read from or written to; the
	// next write is refused if the ConfigMap changed in between.
	resourceVersion string
	// Applied is, by Kind/namespace/name, the fingerprint of what the last
	// install applied: an object that still has it needs no request.
	Applied map[string]string `json:"applied,omitempty"`
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
		M2MAuth: inv.M2MAuth, KubeflowResources: inv.KubeflowResources, Components: inv.Components}
}

func newInventory(in build.Installation, version string, objs []Ref) *Inventory {
	return &Inventory{Overlay: in.Overlay, ClusterLocalGateway: in.ClusterLocalGateway, M2MAuth: in.M2MAuth,
		KubeflowResources: in.KubeflowResources, Components: in.Components,
		IstioRelease: upstream.Release, KfistioVersion: version, Objects: objs}
}

// readInventory returns the inventory, or nil when there is none.
func readInventory(ctx context.Context, kc kubernetes.Interface) (*Inventory, error) {
	cm, err := kc.CoreV1().ConfigMaps(InventoryNamespace).Get(ctx, InventoryName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the inventory ConfigMap/%s/%s: %w", InventoryNamespace, InventoryName, err)
	}
	inv := &Inventory{resourceVersion: cm.ResourceVersion}
	if err := json.Unmarshal([]byte(cm.Data["inventory"]), inv); err != nil {
		return nil, fmt.Errorf("ConfigMap/%s/%s is not a kfistio inventory: %w", InventoryNamespace, InventoryName, err)
	}
	return inv, nil
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

// writeInventory saves inv, with the resourceVersion of the inventory it
// replaces as a precondition (creating it when there was none), and records
// the new resourceVersion in inv.
func writeInventory(ctx context.Context, kc kubernetes.Interface, inv *Inventory, rv string) error {
	b, err := json.MarshalIndent(sortedInventory(inv), "", "  ")
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: InventoryName, Namespace: InventoryNamespace, ResourceVersion: rv,
			Labels: map[string]string{ManagedLabel: "true"}},
		Data: map[string]string{"inventory": string(b)},
	}
	cms := kc.CoreV1().ConfigMaps(InventoryNamespace)
	var got *corev1.ConfigMap
	if rv == "" {
		got, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: FieldManager})
	} else {
		got, err = cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: FieldManager})
	}
	switch {
	case apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err):
		return fmt.Errorf("write the inventory ConfigMap/%s/%s: it changed since this run read it (another kfistio operation, or an edit): %w; run again", InventoryNamespace, InventoryName, err)
	case err != nil:
		return fmt.Errorf("write the inventory ConfigMap/%s/%s: %w", InventoryNamespace, InventoryName, err)
	}
	inv.resourceVersion = got.ResourceVersion
	return nil
}

// deleteInventory deletes inv's ConfigMap if it has not changed since it
// was read.
func deleteInventory(ctx context.Context, kc kubernetes.Interface, inv *Inventory) error {
	err := kc.CoreV1().ConfigMaps(InventoryNamespace).Delete(ctx, InventoryName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &inv.resourceVersion}})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete the inventory ConfigMap/%s/%s: %w", InventoryNamespace, InventoryName, err)
	}
	return nil
}

// union returns the objects of a and b, once each, as b names them.
func union(a, b []Ref) []Ref {
	return append(stale(a, b), b...)
}
func ptr[T any](v T) *T { return &v }

package install

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/csaupgrade"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
	"sigs.k8s.io/structured-merge-diff/v6/value"

	"github.com/kubeflow/kfistio/internal/object"
)

// LastAppliedAnnotation is where client-side kubectl apply keeps what it
// applied last; a later kubectl apply computes its patch from it.
const LastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// owned is an object of the installation that exists and that other field
// managers own, wholly or in part: a previous installation.
type owned struct {
	key string
	// managers are the other field managers that own fields kfistio applies,
	// sorted.
	managers []string
	// lastApplied is true when the object carries LastAppliedAnnotation.
	lastApplied bool
}

// ForeignError says that objects of the installation belong to another
// installation, and that nothing was changed.
type ForeignError struct {
	// Objects by field manager, each list sorted.
	Managers map[string][]string
	// Release is the Istio release istiod runs, empty when it is not found.
	Release string
	// Image is istiod's image.
	Image string
}

func (e *ForeignError) Error() string {
	var b strings.Builder
	found := "an Istio installation"
	if e.Release != "" {
		found = fmt.Sprintf("Istio %s (istiod runs %s)", e.Release, e.Image)
	}
	fmt.Fprintf(&b, "this cluster holds %s that kfistio did not install; nothing was changed. Objects of the installation that other field managers own:", found)
	names := make([]string, 0, len(e.Managers))
	for m := range e.Managers {
		names = append(names, m)
	}
	sort.Strings(names)
	for _, m := range names {
		objs := e.Managers[m]
		shown := objs
		if len(shown) > 5 {
			shown = shown[:5]
		}
		fmt.Fprintf(&b, "\n  %s: %d objects (%s", m, len(objs), strings.Join(shown, ", "))
		if len(objs) > len(shown) {
			fmt.Fprintf(&b, ", and %d more", len(objs)-len(shown))
		}
		b.WriteString(")")
	}
	b.WriteString("\nre-run with --adopt to take this installation over: kfistio becomes the only manager of these objects, " +
		"and the fields, annotations and objects the previous release set and this one does not are removed")
	return b.String()
}

// HelmError says that objects of the installation belong to a Helm release,
// which kfistio does not take over.
type HelmError struct{ Objects []string }

func (e *HelmError) Error() string {
	return fmt.Sprintf("objects of the installation belong to a Helm release, which kfistio does not take over; nothing was changed:\n  %s\n"+
		"remove the release with helm uninstall first (the Istio CRDs stay), then run kfistio install", strings.Join(e.Objects, "\n  "))
}

// helmRelease names the Helm release that manages o, or "" when none does.
// Helm annotates what it installs with its release; the managed-by label
// alone says nothing, as Istio's charts render it for every installer.
func helmRelease(o *unstructured.Unstructured) string {
	name, ns := o.GetAnnotations()["meta.helm.sh/release-name"], o.GetAnnotations()["meta.helm.sh/release-namespace"]
	if name == "" {
		return ""
	}
	return fmt.Sprintf("release %s in namespace %s", name, ns)
}

// fieldSet decodes the fields of a managedFields entry.
func fieldSet(e metav1.ManagedFieldsEntry) (*fieldpath.Set, error) {
	s := &fieldpath.Set{}
	if e.FieldsV1 == nil {
		return s, nil
	}
	if err := s.FromJSON(bytes.NewReader(e.FieldsV1.Raw)); err != nil {
		return nil, fmt.Errorf("decode the managed fields of %s: %w", e.Manager, err)
	}
	return s, nil
}

// kfistioEntry returns kfistio's apply entry of o's managedFields.
func kfistioEntry(o *unstructured.Unstructured) (metav1.ManagedFieldsEntry, bool) {
	for _, e := range o.GetManagedFields() {
		if e.Manager == FieldManager && e.Operation == metav1.ManagedFieldsOperationApply && e.Subresource == "" {
			return e, true
		}
	}
	return metav1.ManagedFieldsEntry{}, false
}

// IstiodFieldManager is the field manager of istiod's own writes: the CA
// bundles of its webhooks, and the failure policy of its validators, which
// it switches to Fail once it serves them.
const IstiodFieldManager = "pilot-discovery"

// sharedFields returns, by field manager of live other than kfistio, the
// fields of ours (the fields kfistio applies) that it owns too, compared
// leaf by leaf: istiod's CA bundles and an autoscaler's replicas are not
// fields kfistio applies, so their managers are not counted; subresources
// (status, scale) never are. istiod is a controller of its webhooks, not an
// installation: the failure policy it sets to the value kfistio applies
// stays shared, and adoption leaves its fields to it.
func sharedFields(live *unstructured.Unstructured, ours *fieldpath.Set) (map[string][]string, error) {
	leaves := ours.Leaves()
	out := map[string][]string{}
	for _, e := range live.GetManagedFields() {
		if e.Subresource != "" || e.Manager == FieldManager || e.Manager == IstiodFieldManager {
			continue
		}
		s, err := fieldSet(e)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", object.Key(live), err)
		}
		s.Leaves().Intersection(leaves).Iterate(func(p fieldpath.Path) {
			if !slices.Contains(out[e.Manager], p.String()) {
				out[e.Manager] = append(out[e.Manager], p.String())
			}
		})
	}
	for m := range out {
		sort.Strings(out[m])
	}
	return out, nil
}

// kfistioFields are the fields kfistio owns on o (nil without an entry).
func kfistioFields(o *unstructured.Unstructured) (*fieldpath.Set, error) {
	e, ok := kfistioEntry(o)
	if !ok {
		return nil, nil
	}
	s, err := fieldSet(e)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", object.Key(o), err)
	}
	return s, nil
}

// ownership finds out whether o's live object belongs to another
// installation: it does when kfistio has never applied it and other managers
// own fields kfistio would apply (learned from the server's dry run of a
// forced apply), or when it carries LastAppliedAnnotation. Objects kfistio
// already applied keep their co-owners: a conflict on them is for
// --force-conflicts.
func (in *Installer) ownership(ctx context.Context, o, live *unstructured.Unstructured) (*owned, error) {
	key := object.Key(o)
	_, lastApplied := live.GetAnnotations()[LastAppliedAnnotation]
	entry, ours := kfistioEntry(live)
	if ours && !lastApplied {
		return nil, nil
	}
	if !ours {
		res, body, err := in.request(o)
		if err != nil {
			return nil, err
		}
		after, err := patch(ctx, res, o, body, true, true)
		if err != nil {
			return nil, err
		}
		if entry, ours = kfistioEntry(after); !ours {
			return nil, fmt.Errorf("apply %s: the server's dry run records no fields of %s", key, FieldManager)
		}
	}
	set, err := fieldSet(entry)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	shared, err := sharedFields(live, set)
	if err != nil {
		return nil, err
	}
	managers := slices.Sorted(maps.Keys(shared))
	if len(managers) == 0 && !lastApplied {
		return nil, nil
	}
	return &owned{key: key, managers: managers, lastApplied: lastApplied}, nil
}

// owners finds the objects of objs that exist in snap and belong to another
// installation (ownership), and returns them by key and in objs' order.
func (in *Installer) owners(ctx context.Context, objs []*unstructured.Unstructured, snap *Snapshot) (map[string]*owned, []*owned, error) {
	var existing, lives []*unstructured.Unstructured
	for _, obj := range objs {
		if l, _ := snap.Get(in, obj); l != nil {
			existing, lives = append(existing, obj), append(lives, l)
		}
	}
	results := make([]*owned, len(existing))
	if errs := inParallel(ctx, len(existing), in.concurrency(), func(i int) error {
		var err error
		results[i], err = in.ownership(ctx, existing[i], lives[i])
		return err
	}); len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	var found []*owned
	adopt := map[string]*owned{}
	for _, f := range results {
		if f != nil {
			found = append(found, f)
			adopt[f.key] = f
		}
	}
	return adopt, found, nil
}

// foreignError builds the refusal for objects of another installation, whose
// istiod runs image, of release.
func foreignError(found []*owned, image, release string) error {
	e := &ForeignError{Managers: map[string][]string{}, Image: image, Release: release}
	for _, f := range found {
		managers := f.managers
		if len(managers) == 0 {
			managers = []string{"kubectl apply (" + LastAppliedAnnotation + ")"}
		}
		for _, m := range managers {
			e.Managers[m] = append(e.Managers[m], f.key)
		}
	}
	for m := range e.Managers {
		sort.Strings(e.Managers[m])
	}
	return e
}

// adopt makes kfistio the only owner of the fields that the managers of f
// own on live: client-side apply's entries are upgraded with client-go's
// csaupgrade, other managers' entries are merged into kfistio's apply entry
// with a managedFields patch that holds only while the object is unchanged;
// when another writer (istiod, on its webhooks) changed it in between, the
// object is read again and the patch made anew. The apply that follows then
// removes what kfistio now owns and no longer sets. It returns the fields
// that changed hands.
func (in *Installer) adopt(ctx context.Context, live *unstructured.Unstructured, f *owned, dryRun bool) (*fieldpath.Set, error) {
	key := object.Key(live)
	res, err := in.Client.Resource(live)
	if err != nil {
		return nil, fmt.Errorf("adopt %s: %w", key, err)
	}
	var moved *fieldpath.Set
	err = onConflict(ctx, key, "adopt", func(first bool) error {
		if !first {
			var err error
			if live, err = res.Get(ctx, live.GetName(), metav1.GetOptions{}); err != nil {
				return fmt.Errorf("adopt %s: read it again: %w", key, err)
			}
		}
		var err error
		moved, err = in.moveFields(ctx, res, live, f, dryRun)
		return err
	})
	return moved, err
}

// moveFields is one attempt of adopt on live, as read.
func (in *Installer) moveFields(ctx context.Context, res dynamic.ResourceInterface, live *unstructured.Unstructured, f *owned, dryRun bool) (*fieldpath.Set, error) {
	key := object.Key(live)
	update, apply := sets.New[string](), sets.New[string]()
	for _, e := range live.GetManagedFields() {
		if e.Subresource != "" || !slices.Contains(f.managers, e.Manager) {
			continue
		}
		if e.Operation == metav1.ManagedFieldsOperationUpdate {
			update.Insert(e.Manager)
		} else {
			apply.Insert(e.Manager)
		}
	}
	moved := &fieldpath.Set{}
	for _, e := range live.GetManagedFields() {
		if e.Subresource == "" && slices.Contains(f.managers, e.Manager) {
			s, err := fieldSet(e)
			if err != nil {
				return nil, fmt.Errorf("adopt %s: %w", key, err)
			}
			moved = moved.Union(s)
		}
	}
	next := live.DeepCopy()
	if err := csaupgrade.UpgradeManagedFields(next, update, FieldManager); err != nil {
		return nil, fmt.Errorf("adopt %s: %w", key, err)
	}
	entries, err := mergeApplyEntries(next.GetManagedFields(), apply)
	if err != nil {
		return nil, fmt.Errorf("adopt %s: %w", key, err)
	}
	patch, err := json.Marshal([]map[string]any{
		{"op": "replace", "path": "/metadata/managedFields", "value": entries},
		// Refused with a conflict if the object changed since it was read.
		{"op": "replace", "path": "/metadata/resourceVersion", "value": live.GetResourceVersion()},
	})
	if err != nil {
		return nil, err
	}
	opts := metav1.PatchOptions{FieldManager: FieldManager}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	if err := in.BeforeWrite(ctx); err != nil {
		return nil, err
	}
	if _, err := res.Patch(ctx, live.GetName(), types.JSONPatchType, patch, opts); err != nil {
		if apierrors.IsConflict(err) {
			return nil, err
		}
		return nil, fmt.Errorf("adopt %s: move the fields of %s to %s: %w", key, strings.Join(f.managers, ", "), FieldManager, err)
	}
	return moved, nil
}

// mergeApplyEntries merges the apply entries of managers into kfistio's
// apply entry (the first of them becomes kfistio's when it has none) and
// drops them.
func mergeApplyEntries(entries []metav1.ManagedFieldsEntry, managers sets.Set[string]) ([]metav1.ManagedFieldsEntry, error) {
	merged := &fieldpath.Set{}
	target := -1
	var out []metav1.ManagedFieldsEntry
	for _, e := range entries {
		if e.Subresource != "" || e.Operation != metav1.ManagedFieldsOperationApply || (e.Manager != FieldManager && !managers.Has(e.Manager)) {
			out = append(out, e)
			continue
		}
		s, err := fieldSet(e)
		if err != nil {
			return nil, err
		}
		merged = merged.Union(s)
		if target < 0 {
			target = len(out)
			e.Manager = FieldManager
			out = append(out, e)
		}
	}
	if target >= 0 {
		raw, err := merged.ToJSON()
		if err != nil {
			return nil, err
		}
		out[target].FieldsV1 = &metav1.FieldsV1{Raw: raw}
	}
	return out, nil
}

// staleFields returns the fields of moved that after no longer has, each
// named once at its top (an env entry, not its name and value). A field
// is judged by after's content, not its managers: a default the server
// sets again is not stale.
func staleFields(moved *fieldpath.Set, after *unstructured.Unstructured) []string {
	gone := &fieldpath.Set{}
	moved.Iterate(func(p fieldpath.Path) {
		if !hasPath(after.Object, p) {
			gone.Insert(p)
		}
	})
	var out []string
	gone.Iterate(func(p fieldpath.Path) {
		for i := 1; i < len(p); i++ {
			if gone.Has(p[:i]) {
				return
			}
		}
		out = append(out, p.String())
	})
	sort.Strings(out)
	return out
}

// withoutAdopted returns a copy of o without the fields of moved that no
// other entry than the named managers' (the adopted ones) holds, itself or
// below it: what an apply by the only owner of moved that does not set them
// leaves. Subresource entries count: a Deployment's revision annotation is
// written through its status.
func withoutAdopted(o *unstructured.Unstructured, moved *fieldpath.Set, managers []string) (*unstructured.Unstructured, error) {
	kept := &fieldpath.Set{}
	for _, e := range o.GetManagedFields() {
		if e.Subresource == "" && slices.Contains(managers, e.Manager) {
			continue
		}
		s, err := fieldSet(e)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", object.Key(o), err)
		}
		kept = kept.Union(s)
	}
	out := o.DeepCopy()
	out.SetManagedFields(nil)
	moved.Iterate(func(p fieldpath.Path) {
		if !holds(kept, p) {
			out.Object = removePath(out.Object, p).(map[string]any)
		}
	})
	return out, nil
}

// holds reports whether s has the field at p or a field below it.
func holds(s *fieldpath.Set, p fieldpath.Path) bool {
	if s.Has(p) {
		return true
	}
	for _, pe := range p {
		s = s.WithPrefix(pe)
	}
	return !s.Empty()
}

// removePath removes the field at p from v and returns v; a path that v
// does not have leaves it as it is.
func removePath(v any, p fieldpath.Path) any {
	if len(p) == 0 {
		return v
	}
	pe := p[0]
	switch c := v.(type) {
	case map[string]any:
		if pe.FieldName == nil {
			return v
		}
		if len(p) == 1 {
			delete(c, *pe.FieldName)
		} else if x, ok := c[*pe.FieldName]; ok {
			c[*pe.FieldName] = removePath(x, p[1:])
		}
	case []any:
		i := itemIndex(c, pe)
		if i < 0 {
			return v
		}
		if len(p) == 1 {
			return slices.Delete(c, i, i+1)
		}
		c[i] = removePath(c[i], p[1:])
	}
	return v
}

// hasPath reports whether the object v has the field at p.
func hasPath(v any, p fieldpath.Path) bool {
	for _, pe := range p {
		switch c := v.(type) {
		case map[string]any:
			if pe.FieldName == nil {
				return false
			}
			var ok bool
			if v, ok = c[*pe.FieldName]; !ok {
				return false
			}
		case []any:
			i := itemIndex(c, pe)
			if i < 0 {
				return false
			}
			v = c[i]
		default:
			return false
		}
	}
	return true
}

// itemIndex returns the index of the item of l that pe names, by index, key
// fields or value, or -1.
func itemIndex(l []any, pe fieldpath.PathElement) int {
	if pe.Index != nil {
		if *pe.Index < len(l) {
			return *pe.Index
		}
		return -1
	}
	return slices.IndexFunc(l, func(item any) bool { return matches(pe, item) })
}

// matches reports whether a list item is the one pe names, by its key
// fields or, in a set, by its value.
func matches(pe fieldpath.PathElement, item any) bool {
	if pe.Value != nil {
		return value.Equals(*pe.Value, value.NewValueInterface(item))
	}
	m, ok := item.(map[string]any)
	if !ok || pe.Key == nil {
		return false
	}
	for _, f := range *pe.Key {
		v, ok := m[f.Name]
		if !ok || !value.Equals(f.Value, value.NewValueInterface(v)) {
			return false
		}
	}
	return true
}

// istioLabels are labels Istio's charts put on every object they render.
var istioLabels = []string{componentLabel, "install.operator.istio.io/owning-resource", "istio.io/rev"}

// istioObject reports whether o carries Istio's own labels.
func istioObject(o *unstructured.Unstructured) bool {
	l := o.GetLabels()
	if l["app.kubernetes.io/part-of"] == "istio" {
		return true
	}
	return slices.ContainsFunc(istioLabels, func(k string) bool { return l[k] != "" })
}

// leftovers returns the objects of the previous installation that this one
// lacks: live objects of its kinds and namespaces that it does not have,
// that kfistio never applied, and that the managers of the adopted objects
// own. Those with Istio's labels are to prune; the others, only in the
// namespaces the installation defines, are to list.
func (in *Installer) leftovers(snap *Snapshot, o Options, previous []Ref, adopt map[string]*owned) (prune, keep []*unstructured.Unstructured) {
	managers := map[string]bool{}
	for _, f := range adopt {
		for _, m := range f.managers {
			managers[m] = true
		}
	}
	ours := map[Ref]bool{}
	defined := map[string]bool{}
	for _, obj := range o.Objects {
		ours[identityRef(RefOf(obj))] = true
		if obj.GetKind() == "Namespace" {
			defined[obj.GetName()] = true
		}
	}
	for _, r := range previous {
		ours[identityRef(r)] = true
	}
	snap.mu.Lock()
	defer snap.mu.Unlock()
	for _, l := range snap.objs {
		if ours[identityRef(RefOf(l))] || l.GetKind() == "Namespace" || l.GetKind() == "CustomResourceDefinition" || l.GetDeletionTimestamp() != nil {
			continue
		}
		if _, ok := kfistioEntry(l); ok {
			continue
		}
		_, lastApplied := l.GetAnnotations()[LastAppliedAnnotation]
		theirs := lastApplied
		for _, e := range l.GetManagedFields() {
			theirs = theirs || (e.Subresource == "" && managers[e.Manager])
		}
		switch {
		case !theirs:
		case istioObject(l):
			prune = append(prune, l)
		case defined[l.GetNamespace()]:
			keep = append(keep, l)
		}
	}
	object.Sort(prune)
	object.Sort(keep)
	return prune, keep
}

// identityRef is r without its API version, which two reads of one object
// may name differently.
func identityRef(r Ref) Ref {
	r.APIVersion = schema.FromAPIVersionAndKind(r.APIVersion, r.Kind).Group
	return r
}

package install

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// Installer works on one cluster.
type Installer struct {
	Client *kube.Client
	// Progress, if set, receives the steps of long operations as they start
	// and end.
	Progress func(Event)
	// writes holds the lease of the operation under way.
	writes *writes
}

// Event is a step of an operation starting (Done false) or ending.
type Event struct {
	Step string
	Done bool
	Err  error
}

// Step reports the step name to Progress as it starts and ends, around fn.
func (in *Installer) Step(name string, fn func() error) error {
	if in.Progress != nil {
		in.Progress(Event{Step: name})
	}
	err := fn()
	if in.Progress != nil {
		in.Progress(Event{Step: name, Done: true, Err: err})
	}
	return err
}

// Options say what Install applies and how.
type Options struct {
	Installation build.Installation
	// Objects is the build of Installation.
	Objects []*unstructured.Unstructured
	// NamespaceLabels are the labels the overlay needs on namespaces that it
	// does not define (build.Tree.NamespaceLabels), applied label-only.
	NamespaceLabels []*unstructured.Unstructured
	// DryRun sends only server-side dry-run requests.
	DryRun bool
	// ForceConflicts takes over fields of kfistio's objects whose values
	// other field managers changed.
	ForceConflicts bool
	// Adopt takes over objects of the installation that other field managers
	// own (a previous installation): kfistio becomes their only manager.
	// Without it, Install stops before any write when there are such objects.
	Adopt bool
	// UnsupportedInPlace replaces an istiod more than one minor release
	// away in place, which Istio does not support (SkewError).
	UnsupportedInPlace bool
	// Timeout bounds each wait for readiness.
	Timeout time.Duration
	// Version of kfistio, for the inventory.
	Version string
}

// DefaultTimeout bounds each wait of an install.
const DefaultTimeout = 5 * time.Minute

// TimeoutOr is d, or DefaultTimeout when d is not set.
func TimeoutOr(d time.Duration) time.Duration {
	if d <= 0 {
		return DefaultTimeout
	}
	return d
}

// Install applies the installation in stages, waits for each stage, prunes
// what an earlier install applied and this one no longer has, and returns
// what it changed. A repeated install with nothing to change writes nothing.
// An interrupted install leaves an inventory that the next run completes.
func (in *Installer) Install(ctx context.Context, o Options) (_ ChangeSet, err error) {
	o.Timeout = TimeoutOr(o.Timeout)
	prev, err := readInventory(ctx, in.Client.Kube)
	if err != nil {
		return nil, err
	}
	if err := checkRevision(prev, o.Installation); err != nil {
		return nil, err
	}
	var previous []Ref
	var last map[string]string
	if prev != nil {
		previous, last = prev.Objects, prev.Applied
	}
	// base is the inventory as this run last read or wrote it.
	base := prev
	// Read what is there, and refuse before any write.
	snap, err := in.Snapshot(ctx, append(Stubs(previous), o.Objects...))
	if err != nil {
		return nil, err
	}
	adopt, err := in.preflight(ctx, o, snap)
	if err != nil {
		return nil, err
	}
	if !o.DryRun {
		release := in.Begin(prev)
		defer func() { err = errors.Join(err, release()) }()
	}
	var desired []Ref
	for _, obj := range o.Objects {
		desired = append(desired, RefOf(obj))
	}
	inv := NewInventory(o.Installation, o.Version, desired)
	if all := union(previous, desired); !o.DryRun && (prev == nil || len(all) > len(previous)) {
		// Record first what this install may create, so that an interrupted
		// run can still be pruned or uninstalled.
		during := *inv
		during.Objects = all
		if err := in.WriteInventory(ctx, &during, base); err != nil {
			return nil, err
		}
		base = &during
	}
	r := in.newRun(o, snap, adopt, last)
	if err := r.stages(ctx); err != nil {
		return r.changes, err
	}
	if gone := stale(previous, desired); len(gone) > 0 {
		err := in.Step(fmt.Sprintf("Pruning %d objects the installation no longer has", len(gone)), func() error {
			changes, err := in.remove(ctx, snap, gone, Pruned, false, o.DryRun)
			r.changes = append(r.changes, changes...)
			return err
		})
		if err != nil {
			return r.changes, err
		}
	}
	if len(adopt) > 0 {
		prune, keep := in.leftovers(snap, o, previous, adopt)
		for _, l := range keep {
			r.changes = append(r.changes, Change{Object: object.Key(l), Action: Unchanged,
				Note: "left by the previous installation; not an Istio object, so left alone: delete it if nothing needs it"})
		}
		if len(prune) > 0 {
			err := in.Step(fmt.Sprintf("Pruning %d objects the previous installation left", len(prune)), func() error {
				var errs []error
				for _, l := range prune {
					c, err := in.removeOne(ctx, l, Pruned, false, o.DryRun)
					if err != nil {
						errs = append(errs, err)
						continue
					}
					c.Note = "left by the previous installation"
					r.changes = append(r.changes, c)
				}
				return errors.Join(errs...)
			})
			if err != nil {
				return r.changes, err
			}
		}
	}
	inv.Complete = true
	inv.Applied = r.applied
	if !slices.ContainsFunc(r.changes, func(c Change) bool { return c.Action != Unchanged }) {
		// Nothing changed: a fingerprint that moved (kfistio's fields taken
		// back by hand) is not worth a write, the next install compares that
		// object with a dry run again; a fingerprint the inventory lacks is.
		for k, v := range prev.appliedOf() {
			if _, ok := inv.Applied[k]; ok {
				inv.Applied[k] = v
			}
		}
	}
	if o.DryRun || sameInventory(prev, inv) {
		return r.changes, nil
	}
	return r.changes, in.WriteInventory(ctx, inv, base)
}

// preflight refuses, before any write, an install into namespaces that are
// being deleted, over objects of a Helm release, and over another
// installation (objects of the installation that other field managers own)
// unless Adopt is set. It returns the objects to adopt.
func (in *Installer) preflight(ctx context.Context, o Options, snap *Snapshot) (map[string]*owned, error) {
	var namespaces []string
	for _, obj := range o.Objects {
		ns := obj.GetNamespace()
		if obj.GetKind() == "Namespace" {
			ns = obj.GetName()
		}
		if ns != "" && !slices.Contains(namespaces, ns) {
			namespaces = append(namespaces, ns)
		}
	}
	slices.Sort(namespaces)
	nsStubs := make([]*unstructured.Unstructured, len(namespaces))
	for i, name := range namespaces {
		nsStubs[i] = Ref{APIVersion: "v1", Kind: "Namespace", Name: name}.Stub()
	}
	// One LIST of namespaces, which the snapshot has already made when the
	// installation defines one.
	if err := snap.Read(ctx, in, nsStubs); err != nil {
		return nil, err
	}
	var errs []error
	for i, name := range namespaces {
		if ns, _ := snap.Get(in, nsStubs[i]); ns != nil && ns.GetDeletionTimestamp() != nil {
			errs = append(errs, fmt.Errorf("Namespace/%s is being deleted (since %s); nothing was changed: wait until it is gone (kubectl wait --for=delete namespace/%s), then run again",
				name, ns.GetDeletionTimestamp().UTC().Format(time.RFC3339), name))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	var helm []string
	for _, obj := range o.Objects {
		if l, _ := snap.Get(in, obj); l != nil && helmRelease(l) != "" {
			helm = append(helm, object.Key(obj)+": "+helmRelease(l))
		}
	}
	if len(helm) > 0 {
		return nil, &HelmError{Objects: helm}
	}
	image, release := in.istiodRelease(snap, o.Objects)
	if err := checkSkew(release, upstream.Release); err != nil && !o.UnsupportedInPlace {
		return nil, err
	}
	adopt, found, err := in.owners(ctx, o.Objects, snap)
	if err != nil {
		return nil, err
	}
	if len(found) > 0 && !o.Adopt {
		return nil, foreignError(found, image, release)
	}
	return adopt, nil
}

// istiodRelease returns the image and release of the live istiod that the
// installation replaces: its istiod Deployment as the cluster runs it now;
// empty when there is none.
func (in *Installer) istiodRelease(snap *Snapshot, objs []*unstructured.Unstructured) (image, release string) {
	for _, o := range objs {
		if !revision.IsIstiod(o) {
			continue
		}
		if live, _ := snap.Get(in, o); live != nil {
			return istiodImage(live)
		}
	}
	return "", ""
}

// Apply applies o.Objects, part of an installation, over the live objects
// of snap as Install does: in its stages, with its waits, the labels of
// o.NamespaceLabels label-only; objects that other field managers own are
// adopted when o.Adopt is set. last are the fingerprints the inventory
// recorded. It returns the changes and the fingerprints of what it applied.
// It neither reads nor writes the inventory, and prunes nothing: that is for
// the caller, which holds the lease (Begin).
func (in *Installer) Apply(ctx context.Context, o Options, snap *Snapshot, last map[string]string) (ChangeSet, map[string]string, error) {
	o.Timeout = TimeoutOr(o.Timeout)
	var adopt map[string]*owned
	if o.Adopt {
		if err := snap.Read(ctx, in, o.Objects); err != nil {
			return nil, nil, err
		}
		var err error
		if adopt, _, err = in.owners(ctx, o.Objects, snap); err != nil {
			return nil, nil, err
		}
	}
	r := in.newRun(o, snap, adopt, last)
	err := r.stages(ctx)
	return r.changes, r.applied, err
}

func (in *Installer) newRun(o Options, snap *Snapshot, adopt map[string]*owned, last map[string]string) *run {
	return &run{in: in, o: o, snap: snap, adopt: adopt, last: last, applied: map[string]string{},
		newNamespaces: map[string]bool{}, newKinds: map[schema.GroupKind]bool{}}
}

// stages applies the objects in install's stages and waits after each that
// needs it.
func (r *run) stages(ctx context.Context) error {
	in, o := r.in, r.o
	for _, s := range stages(o.Objects) {
		if len(s.objs) == 0 {
			continue
		}
		// Kinds whose CRDs the first stage created are listed now.
		if err := r.snap.Read(ctx, in, s.objs); err != nil {
			return err
		}
		if s.name == stageControlPlane {
			if err := r.ensureNamespaces(ctx); err != nil {
				return err
			}
			if err := r.labelNamespaces(ctx); err != nil {
				return err
			}
		}
		err := in.Step(fmt.Sprintf("Applying %s (%d objects)", s.name, len(s.objs)), func() error { return r.applyAll(ctx, s.objs) })
		if err != nil {
			return err
		}
		if s.name == stageFoundation {
			in.Client.ResetDiscovery()
		}
		if s.wait != "" && !o.DryRun {
			err := in.Step("Waiting for "+s.wait, func() error {
				if err := in.Wait(ctx, "waiting for "+s.wait, s.objs, o.Timeout); err != nil || s.name != stageWebhooks {
					return err
				}
				return in.waitValidation(ctx, "waiting for "+s.wait, s.objs, o.Timeout)
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// run is the state of one Install.
type run struct {
	in   *Installer
	o    Options
	snap *Snapshot
	// last holds the fingerprints of the previous install, applied those
	// of this one.
	last, applied map[string]string
	changes       ChangeSet
	// In a dry run, namespaces and CRDs that the run would create: objects in
	// them cannot be sent even as dry runs.
	newNamespaces map[string]bool
	newKinds      map[schema.GroupKind]bool
	// adopt are the objects of another installation to take over.
	adopt map[string]*owned
}

// applyAll applies objs, Client.Concurrency at a time, and records the changes
// in the order of objs. A failure does not stop the other objects of the
// stage: the errors are joined in the same order.
func (r *run) applyAll(ctx context.Context, objs []*unstructured.Unstructured) error {
	changes := make([]*Change, len(objs))
	fps := make([]string, len(objs))
	errs := inParallel(ctx, len(objs), r.in.concurrency(), func(i int) error {
		obj := objs[i]
		key := object.Key(obj)
		if r.o.DryRun && (r.newNamespaces[obj.GetNamespace()] || r.newKinds[obj.GroupVersionKind().GroupKind()]) {
			changes[i] = &Change{Object: key, Action: Created, Note: "its namespace or CRD does not exist yet"}
			return nil
		}
		live, _ := r.snap.Get(r.in, obj)
		if f := r.adopt[key]; f != nil && live != nil {
			c, fp, err := r.adoptOne(ctx, obj, live, f)
			if err != nil {
				return err
			}
			changes[i], fps[i] = &c, fp
			return nil
		}
		a, fp, err := r.in.apply(ctx, obj, live, r.last[key], r.o.DryRun, r.o.ForceConflicts)
		if err != nil {
			return err
		}
		changes[i], fps[i] = &Change{Object: key, Action: a}, fp
		return nil
	})
	for i, c := range changes {
		if c == nil {
			continue
		}
		r.changes = append(r.changes, *c)
		if fps[i] != "" && !r.o.DryRun {
			r.applied[c.Object] = fps[i]
		}
		if r.o.DryRun && c.Action == Created && c.Note == "" {
			r.noteNew(objs[i])
		}
	}
	return errors.Join(errs...)
}

// adoptOne takes obj over from the managers of f, then applies it, which
// removes the fields the previous release set and this one does not. A dry
// run cannot apply over the adoption it only simulated, so it asks the
// server what would stay: the dry-run apply over live, without the fields
// that only the adopted managers own, sent as a dry-run update, which
// defaults what the server defaults.
func (r *run) adoptOne(ctx context.Context, obj, live *unstructured.Unstructured, f *owned) (Change, string, error) {
	from := strings.Join(f.managers, ", ")
	if from == "" {
		from = "kubectl apply"
	}
	c := Change{Object: object.Key(obj), Action: Adopted, Note: "from " + from}
	moved, err := r.in.adopt(ctx, live, f, r.o.DryRun)
	if err != nil {
		return Change{}, "", err
	}
	res, body, err := r.in.request(obj)
	if err != nil {
		return Change{}, "", err
	}
	var after *unstructured.Unstructured
	// The dry-run update holds only while the object is what the dry-run
	// apply returned; when another writer changed it in between, both are
	// sent again.
	err = onConflict(ctx, c.Object, "adopt", func(bool) error {
		var err error
		if after, err = patch(ctx, res, obj, body, true, r.o.DryRun); err != nil || !r.o.DryRun {
			return err
		}
		trial, err := withoutAdopted(after, moved, f.managers)
		if err != nil {
			return err
		}
		trial, err = res.Update(ctx, trial, metav1.UpdateOptions{FieldManager: FieldManager, DryRun: []string{metav1.DryRunAll}})
		switch {
		case apierrors.IsConflict(err):
			return err
		case err != nil:
			return fmt.Errorf("adopt %s: dry-run update without the fields of %s: %w", c.Object, from, err)
		}
		after = trial
		return nil
	})
	if err != nil {
		return Change{}, "", err
	}
	c.Removed = staleFields(moved, after)
	return c, fingerprint(body, after), nil
}

func (r *run) noteNew(obj *unstructured.Unstructured) {
	switch obj.GetKind() {
	case "Namespace":
		r.newNamespaces[obj.GetName()] = true
	case "CustomResourceDefinition":
		group, _, _ := unstructured.NestedString(obj.Object, "spec", "group")
		kind, _, _ := unstructured.NestedString(obj.Object, "spec", "names", "kind")
		r.newKinds[schema.GroupKind{Group: group, Kind: kind}] = true
	}
}

// ensureNamespaces creates the namespaces that objects live in but the
// installation does not define (kubeflow, for kubeflow-gateway). kfistio does
// not own them: uninstall leaves them.
func (r *run) ensureNamespaces(ctx context.Context) error {
	defined := map[string]bool{}
	for _, obj := range r.o.Objects {
		if obj.GetKind() == "Namespace" {
			defined[obj.GetName()] = true
		}
	}
	var needed []string
	for _, obj := range r.o.Objects {
		ns := obj.GetNamespace()
		if ns != "" && !defined[ns] && !slices.Contains(needed, ns) {
			needed = append(needed, ns)
		}
	}
	slices.Sort(needed)
	var nss []*unstructured.Unstructured
	for _, ns := range needed {
		nss = append(nss, Ref{APIVersion: "v1", Kind: "Namespace", Name: ns}.Stub())
	}
	if err := r.snap.Read(ctx, r.in, nss); err != nil {
		return err
	}
	for _, ns := range nss {
		if live, _ := r.snap.Get(r.in, ns); live != nil {
			continue
		}
		ns := ns.GetName()
		opts := metav1.CreateOptions{FieldManager: FieldManager}
		if err := r.in.BeforeWrite(ctx); err != nil {
			return err
		}
		if r.o.DryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		r.newNamespaces[ns] = true
		_, err := r.in.Client.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, opts)
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create Namespace/%s: %w", ns, err)
		}
		r.changes = append(r.changes, Change{Object: object.KeyOf("Namespace", "", ns), Action: Created, Note: "needed by the installation; not removed by uninstall"})
	}
	return nil
}

// remove deletes refs in reverse install order: objects that still carry
// ManagedLabel are deleted, namespaces are released (they may hold more than
// Istio), CustomResourceDefinitions only with purge. Aggregated ClusterRoles
// go first: once the roles they aggregate change, the API server's
// aggregation controller applies their rules, and an apply recreates a
// ClusterRole that was just deleted.
func (in *Installer) remove(ctx context.Context, snap *Snapshot, refs []Ref, action Action, purge, dryRun bool) (ChangeSet, error) {
	ordered := installOrder(Stubs(refs))
	slices.Reverse(ordered)
	if err := snap.Read(ctx, in, ordered); err != nil {
		return nil, err
	}
	var live []*unstructured.Unstructured
	var changes ChangeSet
	for _, stub := range ordered {
		o, c := in.managed(snap, stub)
		switch {
		case c != nil:
			changes = append(changes, *c)
		case o != nil:
			live = append(live, o)
		}
	}
	slices.SortStableFunc(live, func(a, b *unstructured.Unstructured) int {
		_, aggA := a.Object["aggregationRule"]
		_, aggB := b.Object["aggregationRule"]
		switch {
		case aggA && !aggB:
			return -1
		case aggB && !aggA:
			return 1
		}
		return 0
	})
	var errs []error
	for _, o := range live {
		c, err := in.removeOne(ctx, o, action, purge, dryRun)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		changes = append(changes, c)
	}
	return changes, errors.Join(errs...)
}

// managed returns the live object of stub if kfistio still manages it; a
// change when it is there but no longer kfistio's; nothing when it is gone
// (or its kind is: its CRD was deleted).
func (in *Installer) managed(snap *Snapshot, stub *unstructured.Unstructured) (*unstructured.Unstructured, *Change) {
	live, _ := snap.Get(in, stub)
	if live == nil {
		return nil, nil
	}
	if live.GetLabels()[ManagedLabel] != "true" {
		return nil, &Change{Object: object.Key(stub), Action: Unchanged, Note: "left alone: it no longer carries " + ManagedLabel}
	}
	return live, nil
}

// Delete deletes the live object o, whoever made it (a previous
// installation's).
func (in *Installer) Delete(ctx context.Context, o *unstructured.Unstructured, dryRun bool) (Change, error) {
	return in.removeOne(ctx, o, Deleted, true, dryRun)
}

// removeOne deletes, releases or keeps the live object o.
func (in *Installer) removeOne(ctx context.Context, o *unstructured.Unstructured, action Action, purge, dryRun bool) (Change, error) {
	key := object.Key(o)
	res, err := in.Client.Resource(o)
	if err != nil {
		return Change{}, err
	}
	if kept := o.GetKind() == "CustomResourceDefinition" && !purge; !kept {
		if err := in.BeforeWrite(ctx); err != nil {
			return Change{}, err
		}
	}
	var opts []string
	if dryRun {
		opts = []string{metav1.DryRunAll}
	}
	switch {
	case o.GetKind() == "Namespace" && !(purge && o.GetName() == revision.Namespace):
		// Applying the bare identity drops every field kfistio owned.
		body := []byte(fmt.Sprintf(`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":%q}}`, o.GetName()))
		if _, err := res.Patch(ctx, o.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: FieldManager, Force: ptr.To(true), DryRun: opts}); err != nil {
			return Change{}, fmt.Errorf("release %s: %w", key, err)
		}
		return Change{Object: key, Action: Released, Note: "kfistio's labels removed; the namespace is kept"}, nil
	case o.GetKind() == "CustomResourceDefinition" && !purge:
		return Change{Object: key, Action: Unchanged, Note: "kept: only uninstall --purge deletes CRDs"}, nil
	}
	policy := metav1.DeletePropagationBackground
	precond := metav1.Preconditions{UID: ptr.To(o.GetUID())}
	if err := res.Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: &policy, Preconditions: &precond, DryRun: opts}); err != nil && !apierrors.IsNotFound(err) {
		return Change{}, fmt.Errorf("delete %s: %w", key, err)
	}
	return Change{Object: key, Action: action}, nil
}

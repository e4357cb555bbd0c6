package upgrade

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/doctor"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// Upgrader takes one cluster through an upgrade by revision.
type Upgrader struct {
	In *install.Installer
}

// Options say what the cluster is upgraded to.
type Options struct {
	// Installation is the installation to upgrade to, with its Revision;
	// Objects and NamespaceLabels are its build
	// (build.Tree.InstallationParts).
	Installation    build.Installation
	Objects         []*unstructured.Unstructured
	NamespaceLabels []*unstructured.Unstructured
	// Timeout bounds each wait.
	Timeout time.Duration
	// Version of kfistio, for the inventory.
	Version string
}

// Result is what a step did.
type Result struct {
	Changes install.ChangeSet
	// Notes are what the step has to say beyond its changes.
	Notes []string
	// InUse are the workloads whose proxies use a revision that is not the
	// default one: to restart before the upgrade can finish.
	InUse []doctor.StaleWorkload
	// Upgrade is where the upgrade stands after the step, nil once it is
	// finished.
	Upgrade *install.Upgrade
}

// UpgradeFieldManager owns the selectors of the webhooks of the previous
// control plane that the switch deactivates, and nothing else of them.
const UpgradeFieldManager = "kfistio-upgrade"

// state is what a step reads first.
type state struct {
	// inv is kfistio's inventory, nil without one.
	inv *install.Inventory
	cps []install.ControlPlane
}

func (u *Upgrader) read(ctx context.Context) (*state, error) {
	inv, err := u.In.ReadInventory(ctx)
	if errors.Is(err, install.ErrNotInstalled) {
		inv, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	cps, err := u.In.ControlPlanes(ctx)
	if err != nil {
		return nil, err
	}
	return &state{inv: inv, cps: cps}, nil
}

// underway reads the cluster and returns the upgrade under way, or an error
// that says why there is nothing to do (what).
func (u *Upgrader) underway(ctx context.Context, o Options, what string) (*state, *install.Upgrade, error) {
	st, err := u.read(ctx)
	if err != nil {
		return nil, nil, err
	}
	up, err := st.upgrade(o, what)
	return st, up, err
}

// upgrade returns the upgrade under way, or an error that says so.
func (st *state) upgrade(o Options, what string) (*install.Upgrade, error) {
	if st.inv == nil || st.inv.Upgrade == nil {
		return nil, fmt.Errorf("no upgrade by revision is under way, so there is nothing to %s; start one with kfistio upgrade start (a finished upgrade has removed the previous control plane: it cannot be rolled back)", what)
	}
	if up := st.inv.Upgrade; up.To != o.Installation.Revision {
		return nil, fmt.Errorf("the upgrade under way goes to revision %s, and this kfistio carries revision %s (Istio %s): %s it with the kfistio that started it", up.To, o.Installation.Revision, upstream.Release, what)
	}
	return st.inv.Upgrade, nil
}

// ErrAmbient refuses an upgrade by revision of an installation in ambient
// mode.
var ErrAmbient = errors.New("this cluster runs Istio in ambient mode (DaemonSet ztunnel): " + build.NoRevisionReason + "; nothing was changed")

// plan checks that the cluster can start an upgrade to o's revision and
// returns the upgrade, with what to note.
func (u *Upgrader) plan(ctx context.Context, st *state, o Options) (*install.Upgrade, []string, error) {
	to := o.Installation.Revision
	if st.inv != nil && st.inv.Upgrade != nil {
		up, err := st.upgrade(o, "start")
		if err != nil {
			return nil, nil, err
		}
		if up.Default == up.To {
			return nil, nil, fmt.Errorf("the upgrade from %s to %s is past its start: revision %s is the default already; nothing was changed", up.From, up.To, up.To)
		}
		up.RolledBack = false
		return up, []string{fmt.Sprintf("the upgrade from %s to %s was started before; this run completes its start", up.From, up.To)}, nil
	}
	var revs []string
	for _, cp := range st.cps {
		revs = append(revs, fmt.Sprintf("%s (Istio %s)", cp.Revision, cp.Release))
	}
	switch {
	case len(st.cps) == 0:
		return nil, nil, errors.New("no istiod runs on this cluster, so there is nothing to upgrade; install with kfistio install")
	case len(st.cps) > 1:
		return nil, nil, fmt.Errorf("this cluster runs %d control planes, revisions %s, and no upgrade of kfistio's is under way; an upgrade starts from one: remove the others (or finish the upgrade that left them) first; nothing was changed",
			len(st.cps), strings.Join(revs, ", "))
	}
	from := st.cps[0]
	switch {
	case from.Revision == to && from.Release == upstream.Release:
		return nil, nil, fmt.Errorf("revision %s of Istio %s already runs here: nothing to upgrade (kfistio install --revision %s keeps it as the tree has it)", to, upstream.Release, to)
	case from.Revision == to:
		return nil, nil, fmt.Errorf("the revision name %s is in use by the istiod of Istio %s (Deployment/%s/%s); nothing was changed", to, from.Release, revision.Namespace, from.Deployment.Name)
	}
	switch ambient, err := u.ambient(ctx); {
	case err != nil:
		return nil, nil, err
	case ambient:
		return nil, nil, ErrAmbient
	}
	var notes []string
	fromMinor, err1 := revision.Minor(from.Release)
	toMinor, _ := revision.Minor(upstream.Release)
	switch {
	case err1 != nil:
		notes = append(notes, fmt.Sprintf("the release of the running istiod is unknown (image %s)", from.Image))
	case fromMinor > toMinor:
		return nil, nil, fmt.Errorf("the running istiod is Istio %s, newer than this kfistio's %s; nothing was changed", from.Release, upstream.Release)
	case toMinor-fromMinor > 2:
		notes = append(notes, fmt.Sprintf("Istio %s to %s spans %d minor releases, more than Istio documents: %s. During the upgrade each proxy keeps the istiod of its own release, so no proxy meets a control plane of another release; the shared parts (CRDs, the CNI node agent) move to %s now. Try your workloads on the new revision (label a namespace istio.io/rev=%s and restart one) before the switch",
			from.Release, upstream.Release, toMinor-fromMinor, install.CanaryPolicy, upstream.Release, to))
	}
	up := &install.Upgrade{From: from.Revision, FromRelease: from.Release, To: to, Default: from.Revision}
	if st.inv != nil {
		prev := *st.inv
		up.Previous = &prev
	}
	return up, notes, nil
}

// ambient reports whether the cluster runs ztunnel.
func (u *Upgrader) ambient(ctx context.Context) (bool, error) {
	list, err := u.In.Client.Kube.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=ztunnel"})
	if err != nil {
		return false, fmt.Errorf("look for ztunnel: %w", err)
	}
	return len(list.Items) > 0, nil
}

// Start installs the new control plane next to the old one: the CRDs and
// the CNI node agent are upgraded in place, and every shared object of the
// installation is applied (those another tool applied are adopted); the
// revision's istiod, injector and validator start, and the step waits until
// they serve. The old istiod keeps injecting and configuring every proxy.
// A cluster without a validator of Istio config that carries no revision
// label (Kubeflow's 1.26 tree) gets the default validator now, on the old
// istiod.
func (u *Upgrader) Start(ctx context.Context, o Options) (_ *Result, err error) {
	st, err := u.read(ctx)
	if err != nil {
		return nil, err
	}
	up, notes, err := u.plan(ctx, st, o)
	if err != nil {
		return nil, err
	}
	res := &Result{Notes: notes, Upgrade: up}
	snap, err := u.In.Snapshot(ctx, append(st.inv.Stubs(), o.Objects...))
	if err != nil {
		return nil, err
	}
	objs := selectParts(o.Objects, up.To, shared, controlPlane)
	// The default validator, on the old istiod, where there is none (or an
	// earlier run of this step made it).
	var validator []*unstructured.Unstructured
	for _, v := range selectParts(o.Objects, up.To, tag) {
		if v.GetKind() != "ValidatingWebhookConfiguration" {
			continue
		}
		if live, _ := snap.Get(u.In, v); live == nil || saved(up, revision.StepStart, install.RefOf(v)) != nil {
			validator = append(validator, retarget(v, up.From))
		}
	}
	save(up, revision.StepStart, append(slices.Clone(objs), validator...), u.live(snap))
	release := u.In.Begin(st.inv)
	defer func() { err = errors.Join(err, release()) }()
	inv := st.record(o, up)
	if err := u.In.WriteInventory(ctx, inv, st.inv); err != nil {
		return res, err
	}
	fps := map[string]string{}
	if len(validator) > 0 {
		// First: from now on, Istio config is validated whatever its labels.
		c, more, err := u.webhooks(ctx, o, snap, validator, inv.Applied)
		res.Changes = append(res.Changes, c...)
		maps.Copy(fps, more)
		if err != nil {
			return res, err
		}
	}
	changes, more, err := u.In.Apply(ctx, u.applyOptions(o, objs), snap, inv.Applied)
	res.Changes = append(res.Changes, changes...)
	if err != nil {
		return res, err
	}
	maps.Copy(fps, more)
	return res, u.writeApplied(ctx, inv, fps)
}

// retarget returns the default validator v as the validator of revision
// rev: calling rev's istiod, labelled so that rev's istiod writes its CA
// bundle.
func retarget(v *unstructured.Unstructured, rev string) *unstructured.Unstructured {
	c := v.DeepCopy()
	labels := c.GetLabels()
	labels[revision.Label] = rev
	c.SetLabels(labels)
	hooks, _, _ := unstructured.NestedSlice(c.Object, "webhooks")
	for _, h := range hooks {
		_ = unstructured.SetNestedField(h.(map[string]any), revision.NamesOf(rev).Istiod, "clientConfig", "service", "name")
	}
	_ = unstructured.SetNestedSlice(c.Object, hooks, "webhooks")
	return c
}

// webhooks applies webhook configurations: those that do not exist yet are
// created inert first, and made to select what they should once istiod has
// written their CA bundle, so that no request meets a webhook the API server
// cannot call.
func (u *Upgrader) webhooks(ctx context.Context, o Options, snap *install.Snapshot, objs []*unstructured.Unstructured, last map[string]string) (install.ChangeSet, map[string]string, error) {
	var first []*unstructured.Unstructured
	for _, w := range objs {
		if live, _ := snap.Get(u.In, w); live == nil && strings.HasSuffix(w.GetKind(), "WebhookConfiguration") {
			first = append(first, inert(w))
		}
	}
	var changes install.ChangeSet
	if len(first) > 0 {
		c, _, err := u.In.Apply(ctx, u.applyOptions(o, first), snap, nil)
		changes = append(changes, c...)
		if err != nil {
			return changes, nil, err
		}
		// The live objects are now the inert ones.
		if snap, err = u.In.Snapshot(ctx, objs); err != nil {
			return changes, nil, err
		}
	}
	c, fps, err := u.In.Apply(ctx, u.applyOptions(o, objs), snap, last)
	return append(changes, c...), fps, err
}

func (u *Upgrader) applyOptions(o Options, objs []*unstructured.Unstructured) install.Options {
	return install.Options{Installation: o.Installation, Objects: objs, NamespaceLabels: o.NamespaceLabels,
		Adopt: true, ForceConflicts: true, Timeout: o.Timeout, Version: o.Version}
}

// live looks objects up in snap.
func (u *Upgrader) live(snap *install.Snapshot) func(*unstructured.Unstructured) *unstructured.Unstructured {
	return func(o *unstructured.Unstructured) *unstructured.Unstructured {
		l, _ := snap.Get(u.In, o)
		return l
	}
}

// record is the inventory of the cluster while the upgrade is under way:
// the new installation, whose objects and the previous inventory's are
// uninstall's to remove, and the upgrade.
func (st *state) record(o Options, up *install.Upgrade) *install.Inventory {
	var refs []install.Ref
	seen := map[string]bool{}
	add := func(r install.Ref) {
		if k := r.Key(); !seen[k] {
			seen[k] = true
			refs = append(refs, r)
		}
	}
	if st.inv != nil {
		for _, r := range st.inv.Objects {
			add(r)
		}
	}
	for _, obj := range o.Objects {
		add(install.RefOf(obj))
	}
	inv := install.NewInventory(o.Installation, o.Version, refs)
	inv.Upgrade = up
	inv.Applied = map[string]string{}
	if st.inv != nil {
		maps.Copy(inv.Applied, st.inv.Applied)
	}
	return inv
}

// writeApplied records the fingerprints of a step in the inventory base
// wrote; the step is then complete.
func (u *Upgrader) writeApplied(ctx context.Context, base *install.Inventory, fps map[string]string) error {
	next := *base
	next.Applied = map[string]string{}
	maps.Copy(next.Applied, base.Applied)
	maps.Copy(next.Applied, fps)
	next.Complete = true
	return u.In.WriteInventory(ctx, &next, base)
}

// Switch makes the new revision the default: the default tag's webhook
// injects istio-injection=enabled (and istio.io/rev=default) namespaces
// with it, the default validator calls it, the old default injector is
// deactivated (not deleted), and the gateways move to it, each step waiting
// until what it changed serves. New webhooks are created inert and made to
// select once istiod has written their CA bundle, and the old injector goes
// only after the tag injects: no pod is left uninjected, no Istio config
// unvalidated. Proxies that run keep the old istiod until their workloads
// restart.
func (u *Upgrader) Switch(ctx context.Context, o Options) (_ *Result, err error) {
	st, up, err := u.underway(ctx, o, "switch")
	if err != nil {
		return nil, err
	}
	res := &Result{Upgrade: up}
	tagObjs := selectParts(o.Objects, up.To, tag)
	gateways := selectParts(o.Objects, up.To, gateway)
	read := slices.Clone(o.Objects)
	injector := oldInjector(up)
	if injector != nil {
		read = append(read, injector)
	}
	snap, err := u.In.Snapshot(ctx, read)
	if err != nil {
		return nil, err
	}
	toSave := append(slices.Clone(tagObjs), gateways...)
	var liveInjector *unstructured.Unstructured
	if injector != nil {
		if liveInjector, _ = snap.Get(u.In, injector); liveInjector != nil {
			toSave = append(toSave, injector)
		}
	}
	save(up, revision.StepSwitch, toSave, u.live(snap))
	up.Default = up.To
	release := u.In.Begin(st.inv)
	defer func() { err = errors.Join(err, release()) }()
	inv := *st.inv
	inv.Upgrade, inv.Complete = up, false
	if err := u.In.WriteInventory(ctx, &inv, st.inv); err != nil {
		return res, err
	}
	fps := map[string]string{}
	c, more, err := u.webhooks(ctx, o, snap, tagObjs, inv.Applied)
	res.Changes = append(res.Changes, c...)
	if err != nil {
		return res, err
	}
	maps.Copy(fps, more)
	if liveInjector != nil {
		ch, err := u.applySelectors(ctx, deactivation(liveInjector), "its webhooks select nothing now: the default tag injects instead")
		res.Changes = append(res.Changes, ch)
		if err != nil {
			return res, err
		}
	}
	c, more, err = u.In.Apply(ctx, u.applyOptions(o, gateways), snap, inv.Applied)
	res.Changes = append(res.Changes, c...)
	if err != nil {
		return res, err
	}
	maps.Copy(fps, more)
	if err := u.writeApplied(ctx, &inv, fps); err != nil {
		return res, err
	}
	res.InUse, err = u.proxies(ctx, up.From, false)
	return res, err
}

// oldInjector is the webhook configuration that injects the default
// revision's pods when the previous control plane was installed without a
// revision: the one istioctl deactivates when it sets the default tag. Nil
// when the previous control plane is a revision: its own injector selects
// its revision only, and the tag that made it the default is the one the
// switch replaces.
func oldInjector(up *install.Upgrade) *unstructured.Unstructured {
	if up.From != revision.Default {
		return nil
	}
	return install.Ref{APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingWebhookConfiguration", Name: revision.NamesOf(up.From).InjectorWebhook}.Stub()
}

// applySelectors applies the selectors of a's webhooks as
// UpgradeFieldManager.
func (u *Upgrader) applySelectors(ctx context.Context, a *unstructured.Unstructured, note string) (install.Change, error) {
	key := object.Key(a)
	if err := u.In.BeforeWrite(ctx); err != nil {
		return install.Change{}, err
	}
	res, err := u.In.Client.Resource(a)
	if err != nil {
		return install.Change{}, fmt.Errorf("apply %s: %w", key, err)
	}
	body, err := json.Marshal(a.Object)
	if err != nil {
		return install.Change{}, fmt.Errorf("apply the webhook selectors of %s: %w", key, err)
	}
	if _, err := res.Patch(ctx, a.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: UpgradeFieldManager, Force: ptr.To(true)}); err != nil {
		return install.Change{}, fmt.Errorf("apply the webhook selectors of %s: %w", key, err)
	}
	return install.Change{Object: key, Action: install.Configured, Note: note}, nil
}

// InUseError refuses to remove a revision whose proxies still run.
type InUseError struct {
	Revision  string
	Workloads []doctor.StaleWorkload
}

func (e *InUseError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "revision %s still serves the proxies of %d workloads; nothing was changed: restart them (kfistio upgrade restart --all, or each command below), then run this again:", e.Revision, len(e.Workloads))
	for _, w := range e.Workloads {
		b.WriteString("\n  " + w.Line())
	}
	return b.String()
}

// proxies lists the workloads whose pods run proxies of revision rev,
// outside istio-system when gateways is false.
func (u *Upgrader) proxies(ctx context.Context, rev string, gateways bool) ([]doctor.StaleWorkload, error) {
	pods, err := u.In.Client.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	ws, err := doctor.ProxiesOf(ctx, u.In.Client, pods.Items, rev)
	if err != nil || gateways {
		return ws, err
	}
	return WithoutGateways(ws), nil
}

// namespaceOf is the namespace of a workload (Kind/namespace/name).
func namespaceOf(w doctor.StaleWorkload) string {
	_, ns, _, _ := object.SplitKey(w.Workload)
	return ns
}

// WithoutGateways drops the workloads of istio-system, the gateways, which
// the switch moves.
func WithoutGateways(ws []doctor.StaleWorkload) []doctor.StaleWorkload {
	return slices.DeleteFunc(slices.Clone(ws), func(w doctor.StaleWorkload) bool { return namespaceOf(w) == revision.Namespace })
}

// Finish removes the revision that is not the default one: after a switch,
// the previous control plane (the upgrade is done, and the inventory records
// the new installation alone); after a rollback, the new one, and the shared
// objects the start changed are put back as they were (the CRDs stay, as
// Istio's CRDs serve older releases). It refuses while a proxy uses that
// revision, naming the workloads to restart.
func (u *Upgrader) Finish(ctx context.Context, o Options) (*Result, error) {
	st, up, err := u.underway(ctx, o, "finish")
	if err != nil {
		return nil, err
	}
	return u.finish(ctx, o, st, up)
}

func (u *Upgrader) finish(ctx context.Context, o Options, st *state, up *install.Upgrade) (_ *Result, err error) {
	complete := up.Default == up.To
	if !complete && !up.RolledBack {
		return nil, fmt.Errorf("revision %s is still the default, so there is nothing to finish; nothing was changed: run kfistio upgrade switch first (or kfistio upgrade rollback to give the upgrade up)", up.From)
	}
	gone := up.To
	if complete {
		gone = up.From
	}
	inUse, err := u.proxies(ctx, gone, true)
	if err != nil {
		return nil, err
	}
	if len(inUse) > 0 {
		return &Result{InUse: inUse, Upgrade: up}, &InUseError{Revision: gone, Workloads: inUse}
	}
	// What goes: after a switch, the previous control plane (as Istio's
	// charts name it for its revision) and what the previous inventory had
	// and the new installation has not; after a rollback, what the start
	// made or changed goes back as it was.
	var candidates []*unstructured.Unstructured
	var restore []install.Saved
	if complete {
		for _, obj := range selectParts(o.Objects, up.To, controlPlane) {
			candidates = append(candidates, counterpart(obj, up.To, up.From))
		}
		if up.Previous != nil {
			for _, r := range up.Previous.Objects {
				if !slices.ContainsFunc(candidates, func(c *unstructured.Unstructured) bool { return install.RefOf(c).Key() == r.Key() }) &&
					!slices.ContainsFunc(o.Objects, func(n *unstructured.Unstructured) bool { return install.RefOf(n).Key() == r.Key() }) {
					candidates = append(candidates, r.Stub())
				}
			}
		}
	} else {
		// What the start made goes back; istiod first, as below.
		restore = savedOf(up, revision.StepStart)
		for _, obj := range selectParts(o.Objects, up.To, controlPlane) {
			if obj.GetKind() == "Deployment" {
				candidates = append(candidates, obj)
			}
		}
	}
	snap, err := u.In.Snapshot(ctx, append(candidates, install.Stubs(refsOf(restore))...))
	if err != nil {
		return nil, err
	}
	res := &Result{}
	release := u.In.Begin(st.inv)
	defer func() { err = errors.Join(err, release()) }()
	err = u.In.Step(fmt.Sprintf("Removing revision %s", gone), func() error {
		// istiod goes first, and its pods are gone before its RBAC and
		// config go: it stops as it would on a rollout, releasing its
		// leases with the permissions it had.
		slices.SortStableFunc(candidates, func(a, b *unstructured.Unstructured) int {
			return cmp.Compare(boolInt(a.GetKind() != "Deployment"), boolInt(b.GetKind() != "Deployment"))
		})
		var deleted []install.Ref
		var errs []error
		for i, c := range candidates {
			live, _ := snap.Get(u.In, c)
			if live != nil {
				ch, err := u.In.Delete(ctx, live, false)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				ch.Note = "revision " + gone
				res.Changes = append(res.Changes, ch)
				if ch.Action == install.Deleted {
					deleted = append(deleted, install.RefOf(live))
				}
			}
			if c.GetKind() == "Deployment" && (i+1 == len(candidates) || candidates[i+1].GetKind() != "Deployment") {
				if err := u.podsGone(ctx, revision.Namespace, "app=istiod,"+revision.Label+"="+gone, install.TimeoutOr(o.Timeout)); err != nil {
					return err
				}
			}
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		restore = slices.DeleteFunc(restore, func(s install.Saved) bool { return slices.Contains(deleted, s.Ref) })
		c, more, err := u.restore(ctx, o, snap, restore, "put back as before the upgrade")
		res.Changes = append(res.Changes, c...)
		if err != nil {
			return err
		}
		return u.In.WaitGone(ctx, append(deleted, more...), install.TimeoutOr(o.Timeout))
	})
	if err != nil {
		return res, err
	}
	if complete {
		inv := install.NewInventory(o.Installation, o.Version, nil)
		inv.Applied = map[string]string{}
		for _, n := range o.Objects {
			inv.Objects = append(inv.Objects, install.RefOf(n))
			if fp, ok := st.inv.Applied[object.Key(n)]; ok {
				inv.Applied[object.Key(n)] = fp
			}
		}
		inv.Complete = true
		res.Notes = append(res.Notes, fmt.Sprintf("the upgrade is finished: revision %s (Istio %s) is the control plane; revision %s is gone and cannot be rolled back to", up.To, upstream.Release, up.From))
		return res, u.In.WriteInventory(ctx, inv, st.inv)
	}
	res.Notes = append(res.Notes, fmt.Sprintf("the upgrade is rolled back: revision %s (Istio %s) is the control plane again; the CRDs stay at Istio %s, which serves older releases too", up.From, up.FromRelease, upstream.Release))
	if up.Previous != nil {
		prev := *up.Previous
		prev.Upgrade = nil
		return res, u.In.WriteInventory(ctx, &prev, st.inv)
	}
	return res, u.In.DeleteInventory(ctx, st.inv)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// podsGone waits until no pod that selector selects in ns is left.
func (u *Upgrader) podsGone(ctx context.Context, ns, selector string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pods, err := u.In.Client.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return fmt.Errorf("list the pods of %s: %w", selector, err)
		}
		if len(pods.Items) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pods %s of namespace %s still there after %s (finalizers?)", selector, ns, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func refsOf(saved []install.Saved) []install.Ref {
	out := make([]install.Ref, len(saved))
	for i, s := range saved {
		out[i] = s.Ref
	}
	return out
}

// restore puts the saved objects back: applies those that were there before
// (as they were) and deletes those the upgrade created, returning those it
// deleted.
func (u *Upgrader) restore(ctx context.Context, o Options, snap *install.Snapshot, entries []install.Saved, note string) (install.ChangeSet, []install.Ref, error) {
	var back []*unstructured.Unstructured
	var changes install.ChangeSet
	var deleted []install.Ref
	var errs []error
	for _, s := range entries {
		if s.Object != nil {
			back = append(back, &unstructured.Unstructured{Object: s.Object})
			continue
		}
		if live, _ := snap.Get(u.In, s.Ref.Stub()); live != nil {
			c, err := u.In.Delete(ctx, live, false)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			c.Note = "made by the upgrade"
			changes = append(changes, c)
			if c.Action == install.Deleted {
				deleted = append(deleted, s.Ref)
			}
		}
	}
	if err := errors.Join(errs...); err != nil || len(back) == 0 {
		return changes, deleted, err
	}
	c, _, err := u.In.Apply(ctx, u.applyOptions(o, back), snap, nil)
	for i := range c {
		if c[i].Action != install.Unchanged {
			c[i].Note = note
		}
	}
	return append(changes, c...), deleted, err
}

// Rollback makes the previous revision the default again, at any step
// before the upgrade finished: the gateways go back to it (and wait until
// they are ready), its injector selects again before the default tag goes,
// and the default validator calls it. When no proxy uses the new revision,
// it is removed at once, and what the start changed is put back (Finish);
// otherwise the workloads that use it are listed, to restart before
// kfistio upgrade finish.
func (u *Upgrader) Rollback(ctx context.Context, o Options) (_ *Result, err error) {
	st, up, err := u.underway(ctx, o, "roll back")
	if err != nil {
		return nil, err
	}
	res := &Result{Upgrade: up}
	if !up.RolledBack {
		if err := u.switchBack(ctx, o, st, up, savedOf(up, revision.StepSwitch), res); err != nil {
			return res, err
		}
		if st, up, err = u.underway(ctx, o, "roll back"); err != nil {
			return res, err
		}
	}
	inUse, err := u.proxies(ctx, up.To, true)
	if err != nil {
		return res, err
	}
	if len(inUse) > 0 {
		res.InUse = inUse
		res.Notes = append(res.Notes, fmt.Sprintf("revision %s is the default again; %d workloads still run proxies of revision %s: restart them (a namespace labelled %s=%s keeps injecting that revision until its label changes), then run kfistio upgrade finish to remove it",
			up.From, len(inUse), up.To, revision.Label, up.To))
		return res, nil
	}
	fin, err := u.finish(ctx, o, st, up)
	if fin != nil {
		res.Changes = append(res.Changes, fin.Changes...)
		res.Notes = append(res.Notes, fin.Notes...)
		res.Upgrade = nil
	}
	return res, err
}

// switchBack undoes the switch (entries, none before it): gateways, then
// the old injector, then the tag and the default validator; and records
// that the upgrade is rolled back.
func (u *Upgrader) switchBack(ctx context.Context, o Options, st *state, up *install.Upgrade, entries []install.Saved, res *Result) (err error) {
	snap, err := u.In.Snapshot(ctx, install.Stubs(refsOf(entries)))
	if err != nil {
		return err
	}
	release := u.In.Begin(st.inv)
	defer func() { err = errors.Join(err, release()) }()
	var gateways, tags []install.Saved
	var injector *install.Saved
	old := oldInjector(up)
	for i, s := range entries {
		switch {
		case old != nil && s.Ref.Kind == old.GetKind() && s.Ref.Name == old.GetName():
			injector = &entries[i]
		case s.Object != nil && partOf(&unstructured.Unstructured{Object: s.Object}, up.To) == gateway:
			gateways = append(gateways, s)
		default:
			tags = append(tags, s)
		}
	}
	c, _, err := u.restore(ctx, o, snap, gateways, "back on revision "+up.From)
	res.Changes = append(res.Changes, c...)
	if err != nil {
		return err
	}
	if injector != nil && injector.Object != nil {
		ch, err := u.applySelectors(ctx, selectors(&unstructured.Unstructured{Object: injector.Object}), "its webhooks select as before the switch")
		res.Changes = append(res.Changes, ch)
		if err != nil {
			return err
		}
	}
	c, _, err = u.restore(ctx, o, snap, tags, "back on revision "+up.From)
	res.Changes = append(res.Changes, c...)
	if err != nil {
		return err
	}
	next := *up
	next.Default, next.RolledBack = next.From, true
	next.Saved = slices.DeleteFunc(slices.Clone(next.Saved), func(s install.Saved) bool { return s.Step == revision.StepSwitch })
	inv := *st.inv
	inv.Upgrade = &next
	res.Upgrade = &next
	return u.In.WriteInventory(ctx, &inv, st.inv)
}

// Next says what to run after the step that left the upgrade up, with
// inUse workloads on a revision that is not the default one.
func Next(up *install.Upgrade, inUse int) string {
	switch {
	case up.Default == up.From && !up.RolledBack:
		return "kfistio upgrade switch (or kfistio upgrade rollback)"
	case inUse > 0:
		return "kfistio upgrade restart --all (or per namespace), then kfistio upgrade finish"
	}
	return "kfistio upgrade finish"
}

package install

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kubeflow/kfistio/internal/object"
)

// LeaseName is the Lease in InventoryNamespace that an install or uninstall
// holds while it writes, so that only one runs at a time.
const LeaseName = "kfistio"

// LeaseDuration is how long a lease lasts without renewal: a run that was
// killed holds it that long at most.
const LeaseDuration = 30 * time.Second

// HeldError says another run holds the lease.
type HeldError struct {
	Holder    string
	Since     time.Time
	ExpiresAt time.Time
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("another kfistio operation is running: %s is held by %s since %s (renewed until %s); wait until it ends, or, if it was killed, run again after %s",
		leaseKey, e.Holder, e.Since.UTC().Format(time.RFC3339), e.ExpiresAt.UTC().Format(time.RFC3339), e.ExpiresAt.UTC().Format(time.RFC3339))
}

// lease is a Lease this process holds; it renews it until released.
type lease struct {
	kc     kubernetes.Interface
	holder string
	mu     sync.Mutex
	obj    *coordinationv1.Lease
	lost   error
	stop   chan struct{}
	done   chan struct{}
}

// newHolder names this run: host, process and a random suffix, so that two
// runs on one host differ.
func newHolder() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s/pid-%d/%s", host, os.Getpid(), hex.EncodeToString(b))
}

// acquireLease takes the lease, or fails at once with a HeldError when
// another run holds it. An expired lease (its holder was killed) is taken
// over. Every write carries the resourceVersion that was read, so two runs
// that race for it cannot both win; when the lease changed between the read
// and the write, it is read again and judged anew.
func acquireLease(ctx context.Context, kc kubernetes.Interface, holder string) (*lease, error) {
	leases := kc.CoordinationV1().Leases(InventoryNamespace)
	var got *coordinationv1.Lease
	err := onConflict(ctx, leaseKey, "take", func(bool) error {
		now := metav1.NewMicroTime(time.Now())
		spec := coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: ptr.To(int32(LeaseDuration / time.Second)),
			AcquireTime: &now, RenewTime: &now}
		cur, err := leases.Get(ctx, LeaseName, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			got, err = leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: LeaseName, Namespace: InventoryNamespace,
				Labels: map[string]string{ManagedLabel: "true"}}, Spec: spec}, metav1.CreateOptions{FieldManager: FieldManager})
		case err != nil:
		case ownLease(cur, holder):
			// This run's own earlier attempt took it.
			got = cur
		case held(cur, time.Now()):
			return heldError(cur)
		default:
			next := cur.DeepCopy()
			next.Spec = spec
			if cur.Spec.LeaseTransitions != nil {
				next.Spec.LeaseTransitions = ptr.To(*cur.Spec.LeaseTransitions + 1)
			}
			got, err = leases.Update(ctx, next, metav1.UpdateOptions{FieldManager: FieldManager})
		}
		switch {
		case changedMeanwhile(err):
			// Another run created or took it between the read and the
			// write: read it again.
			return err
		case err != nil:
			return leaseError("take", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	l := &lease{kc: kc, holder: holder, obj: got, stop: make(chan struct{}), done: make(chan struct{})}
	go l.renew()
	return l, nil
}

var leaseKey = object.KeyOf("Lease", InventoryNamespace, LeaseName)

// ownLease reports whether holder holds l.
func ownLease(l *coordinationv1.Lease, holder string) bool {
	return l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == holder
}

// held reports whether l is held by a run that renewed it in time.
func held(l *coordinationv1.Lease, now time.Time) bool {
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return false
	}
	return now.Before(expiry(l))
}

func expiry(l *coordinationv1.Lease) time.Time {
	return l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
}

func heldError(l *coordinationv1.Lease) error {
	e := &HeldError{}
	if l.Spec.HolderIdentity != nil {
		e.Holder = *l.Spec.HolderIdentity
	}
	if l.Spec.AcquireTime != nil {
		e.Since = l.Spec.AcquireTime.Time
	}
	if l.Spec.RenewTime != nil && l.Spec.LeaseDurationSeconds != nil {
		e.ExpiresAt = expiry(l)
	}
	return e
}

func leaseError(what string, err error) error {
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("%s %s: permission denied (kfistio needs get, create, update and delete on leases.coordination.k8s.io in %s): %w",
			what, leaseKey, InventoryNamespace, err)
	}
	return fmt.Errorf("%s %s: %w", what, leaseKey, err)
}

// renew renews the lease at a third of its duration until released. A lease
// that cannot be renewed before it expires is lost: the run stops writing.
func (l *lease) renew() {
	defer close(l.done)
	t := time.NewTicker(LeaseDuration / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), LeaseDuration/3)
		l.mu.Lock()
		var taken error
		err := onConflict(ctx, leaseKey, "renew", func(first bool) error {
			if !first {
				// Changed by someone else: while still this run's, it is
				// renewed over the new version.
				cur, err := l.kc.CoordinationV1().Leases(InventoryNamespace).Get(ctx, LeaseName, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if !ownLease(cur, l.holder) {
					taken = heldError(cur)
					return nil
				}
				l.obj = cur
			}
			next := l.obj.DeepCopy()
			next.Spec.RenewTime = ptr.To(metav1.NewMicroTime(time.Now()))
			got, err := l.kc.CoordinationV1().Leases(InventoryNamespace).Update(ctx, next, metav1.UpdateOptions{FieldManager: FieldManager})
			if err == nil {
				l.obj = got
			}
			return err
		})
		cancel()
		var kept *ConflictError
		switch {
		case taken != nil:
			l.lost = leaseError("renew", taken)
		case err != nil && (apierrors.IsNotFound(err) || errors.As(err, &kept) || time.Now().After(expiry(l.obj))):
			// Other failures are tried again at the next renewal, while the
			// lease lasts.
			l.lost = leaseError("renew", err)
		}
		lost := l.lost != nil
		l.mu.Unlock()
		if lost {
			return
		}
	}
}

// check returns an error once the lease is lost.
func (l *lease) check() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// release stops renewing and deletes the lease, if it is still this run's.
func (l *lease) release() error {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), LeaseDuration/3)
	defer cancel()
	leases := l.kc.CoordinationV1().Leases(InventoryNamespace)
	err := onConflict(ctx, leaseKey, "release", func(first bool) error {
		if !first {
			cur, err := leases.Get(ctx, LeaseName, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err) || (err == nil && !ownLease(cur, l.holder)):
				// Gone, or another run's now: nothing of this run to delete.
				return nil
			case err != nil:
				return err
			}
			l.obj = cur
		}
		return leases.Delete(ctx, LeaseName, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &l.obj.UID, ResourceVersion: &l.obj.ResourceVersion}})
	})
	if err != nil && !apierrors.IsNotFound(err) {
		return leaseError("release", err)
	}
	return nil
}

// writes is the lease of one operation, taken just before its first write,
// so that an operation with nothing to change writes nothing, not even the
// lease.
type writes struct {
	mu sync.Mutex
	// prev is the inventory as the operation first read it.
	prev  *Inventory
	lease *lease
	err   error
}

// Begin starts an operation that may write, over the inventory it read.
// The function it returns releases the lease, if it was taken.
func (in *Installer) Begin(prev *Inventory) func() error {
	w := &writes{prev: prev}
	in.writes = w
	return func() error {
		in.writes = nil
		if w.lease == nil {
			return nil
		}
		return w.lease.release()
	}
}

// BeforeWrite is called before every write of an operation: the first
// takes the lease, then checks that the inventory is still the one the
// operation read (another operation may have ended in between); every one
// checks that the lease is still held. Outside an operation (dry runs) it
// does nothing.
func (in *Installer) BeforeWrite(ctx context.Context) error {
	w := in.writes
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	if w.lease == nil {
		l, err := acquireLease(ctx, in.Client.Kube, newHolder())
		if err != nil {
			w.err = err
			return err
		}
		w.lease = l
		now, err := readInventory(ctx, in.Client.Kube)
		if err == nil && now.data() != w.prev.data() {
			err = ErrInventoryMoved
		}
		if err != nil {
			w.err = err
			return err
		}
	}
	return w.lease.check()
}

// ErrInventoryMoved says the inventory changed between the operation's first
// read and the moment it took the lease: another operation ended in between.
var ErrInventoryMoved = errors.New("the inventory " + inventoryKey + " changed while this run read the cluster (another kfistio operation ended meanwhile); nothing was changed: run again")

package install

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"
)

// ConflictAttempts bounds how often a write that holds only while its
// object is unchanged (a resourceVersion precondition) is read and tried
// again after the server refused it because the object changed: a running
// mesh writes too (istiod its webhooks, autoscalers replicas, controllers
// status), and those writers settle within a few attempts.
const ConflictAttempts = 8

// conflictBackoff spaces the attempts: 50 ms, then half again each time,
// with jitter, so that two writers do not meet again.
var conflictBackoff = wait.Backoff{Duration: 50 * time.Millisecond, Factor: 1.5, Jitter: 0.5, Steps: ConflictAttempts}

// ConflictError says that an object kept changing between a read and the
// write that depended on it.
type ConflictError struct {
	// Object is Kind/namespace/name, What the write.
	Object, What string
	Attempts     int
	Err          error
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s %s: the object changed between each read and write, %d times in a row (another writer keeps updating it: %v); nothing more was written to it: find the writer (kubectl get %s --show-managed-fields -o yaml), then run again",
		e.What, e.Object, e.Attempts, e.Err, e.Object)
}

func (e *ConflictError) Unwrap() error { return e.Err }

// changedMeanwhile reports whether a write was refused because the object
// changed since it was read (a resourceVersion or UID precondition failed),
// or was created by someone else meanwhile.
func changedMeanwhile(err error) bool {
	return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)
}

// onConflict calls attempt, which reads the object and writes it with the
// resourceVersion it read, until it succeeds or fails otherwise than with a
// conflict, at most ConflictAttempts times; the first attempt may use what
// an earlier read returned. It gives up with a ConflictError naming key.
func onConflict(ctx context.Context, key, what string, attempt func(first bool) error) error {
	b := conflictBackoff
	var err error
	for i := range ConflictAttempts {
		if err = attempt(i == 0); !changedMeanwhile(err) {
			return err
		}
		if i == ConflictAttempts-1 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s %s: %w", what, key, ctx.Err())
		case <-time.After(b.Step()):
		}
	}
	return &ConflictError{Object: key, What: what, Attempts: ConflictAttempts, Err: err}
}

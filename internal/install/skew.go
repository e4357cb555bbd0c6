package install

import (
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
)

// Istio's upgrade policy, as its documentation words it.
const (
	InPlacePolicy = `Istio upgrades in place across at most one minor release ("The installed Istio version is no more than one minor version less than the upgrade version", https://istio.io/latest/docs/setup/upgrade/in-place/)`
	CanaryPolicy  = `an upgrade by revision (canary) may span two ("jumping across two minor versions is supported", https://istio.io/latest/docs/setup/upgrade/canary/)`
)

// SkewError refuses to replace an istiod in place across more minor
// releases than Istio supports.
type SkewError struct {
	From, To string
	Minors   int
}

func (e *SkewError) Error() string {
	return fmt.Sprintf("this would replace istiod of Istio %s by %s in place, across %d minor releases; nothing was changed. %s, and %s. "+
		"Upgrade by revision instead: the new control plane runs next to the old one, each proxy keeps the istiod of its own release until its workload restarts, "+
		"and every step can be rolled back (kfistio upgrade start; see kfistio upgrade --help). "+
		"To replace istiod in place anyway, re-run with --unsupported-in-place, then restart every injected workload",
		e.From, e.To, e.Minors, InPlacePolicy, CanaryPolicy)
}

// checkSkew returns a SkewError when the running release and the release to
// install are more than one minor release apart; nil when nothing runs or
// either is not an Istio release number.
func checkSkew(running, next string) error {
	from, err1 := revision.Minor(running)
	to, err2 := revision.Minor(next)
	if err1 != nil || err2 != nil {
		return nil
	}
	if d := max(to-from, from-to); d > 1 {
		return &SkewError{From: running, To: next, Minors: d}
	}
	return nil
}

// istiodImage returns the image and release of the discovery container of
// an istiod Deployment.
func istiodImage(d *unstructured.Unstructured) (image, release string) {
	tpl, err := object.PodTemplate(d)
	if err != nil || tpl == nil {
		return "", ""
	}
	return inject.IstiodRelease(&tpl.Spec)
}

// RevisionError refuses an install that would change the control plane
// revision of kfistio's installation, or that comes during an upgrade by
// revision: that is the upgrade's work.
type RevisionError struct{ Reason string }

func (e *RevisionError) Error() string { return e.Reason + "; nothing was changed" }

// checkRevision refuses to install in over prev when the revisions differ or
// an upgrade by revision is under way.
func checkRevision(prev *Inventory, in build.Installation) error {
	switch {
	case prev == nil:
		return nil
	case prev.Upgrade != nil:
		u := prev.Upgrade
		return &RevisionError{fmt.Sprintf("an upgrade by revision from %s (Istio %s) to %s is under way, and revision %s is the default; install would undo it: "+
			"continue it (kfistio upgrade switch, restart, finish) or roll it back (kfistio upgrade rollback); kfistio status shows where it stands",
			u.From, u.FromRelease, u.To, u.Default)}
	case prev.Revision == in.Revision:
		return nil
	case in.Revision == "":
		return &RevisionError{fmt.Sprintf("kfistio installed Istio %s here as control plane revision %s; an install without a revision would add a second control plane: "+
			"keep the revision (kfistio install --revision %s), or, for another release, upgrade by revision (kfistio upgrade start)", prev.IstioRelease, prev.Revision, prev.Revision)}
	}
	from := prev.Revision
	if from == "" {
		from = revision.Default
	}
	return &RevisionError{fmt.Sprintf("kfistio installed Istio %s here as control plane revision %s; installing revision %s next to it is an upgrade by revision, which moves the default tag, the gateways and the workloads step by step: run kfistio upgrade start",
		prev.IstioRelease, from, in.Revision)}
}

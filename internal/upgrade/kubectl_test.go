package upgrade

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kubeflow/kfistio/internal/doctor"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/testcluster"
	"github.com/kubeflow/kfistio/internal/testutil"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// readmeStep matches a step of the README's upgrade with kubectl: the
// fenced block after its marker.
var readmeStep = regexp.MustCompile("(?s)<!-- kubectl-upgrade: ([a-z]+) -->\n```sh\n(.*?)```")

// kubectlSteps returns the README's kubectl commands of each step of an
// upgrade by revision.
func kubectlSteps(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	steps := map[string]string{}
	for _, m := range readmeStep.FindAllStringSubmatch(string(b), -1) {
		steps[m[1]] = m[2]
	}
	for _, s := range []string{"start", "switch", "restart", "finish", "rollback"} {
		if steps[s] == "" {
			t.Fatalf("the README has no kubectl commands for the step %q (<!-- kubectl-upgrade: %s --> before a sh block)", s, s)
		}
	}
	return steps
}

// runStep runs the commands of a step as a user would, with bash in dir (a
// copy of manifests/) and the kubectl of the control-plane build on PATH.
func runStep(t *testing.T, dir, step, script string) {
	t.Helper()
	bin, err := testcluster.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KUBECONFIG="+cluster.Kubeconfig, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	t.Logf("%s:\n%s", step, out)
	if err != nil {
		t.Fatalf("the README's kubectl commands of the step %s: %v", step, err)
	}
}

// kubectlUpgrade applies Kubeflow's 1.26.1 tree with kubectl, runs a
// notebook in a profile namespace, and returns the README's steps and the
// copy of manifests/ they run from.
func kubectlUpgrade(t *testing.T) (steps map[string]string, dir string) {
	t.Helper()
	steps = kubectlSteps(t)
	applyKubeflow(t, "")
	namespace(t, profile, map[string]string{"istio-injection": "enabled"})
	expectProxy(t, workload(t, profile, "notebook"), previous, revision.Default)
	return steps, testutil.CopyDir(t, "../../manifests")
}

// kubectlStep runs a step while pods are created in the profile namespace
// and invalid Istio config labelled istio.io/rev=default is sent: no pod may
// come out uninjected, no invalid config be admitted. refusedPods says
// whether the API server may refuse pods meanwhile, as it does in the
// moment after kubectl creates a webhook and before istiod writes its CA
// bundle.
func kubectlStep(t *testing.T, dir string, steps map[string]string, step string, refusedPods bool) {
	t.Helper()
	stop := watch(t, profile, validationLabels[1])
	runStep(t, dir, step, steps[step])
	problems, pods, configs := stop()
	var refused int
	problems = slices.DeleteFunc(problems, func(p string) bool {
		ok := refusedPods && strings.HasPrefix(p, "pod refused: ") && strings.Contains(p, "failed calling webhook")
		if ok {
			refused++
		}
		return ok
	})
	if len(problems) > 0 {
		t.Errorf("%s: of %d pods and %d invalid configs created meanwhile: %s", step, pods, configs, strings.Join(problems, "; "))
	}
	t.Logf("%s: %d pods created (%d refused while a webhook had no CA bundle yet), %d invalid configs refused", step, pods, refused, configs)
}

// neverMatchSelector is neverMatch as a typed selector.
var neverMatchSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
	Key: "istio.io/deactivated", Operator: metav1.LabelSelectorOpIn, Values: []string{"never-match"},
}}}

// stale returns the pods doctor finds running a proxy of another release
// than the default revision's istiod (KF106).
func stale(t *testing.T) []string {
	t.Helper()
	u, _ := upgrader(t)
	r, err := doctor.CheckCluster(context.Background(), u.In.Client, nil)
	if err != nil {
		t.Fatal(err)
	}
	var pods []string
	for _, f := range r.Findings {
		if f.ID == doctor.OutdatedProxy {
			pods = append(pods, f.Object)
		}
	}
	return pods
}

// The README's upgrade with kubectl, run as written on Kubeflow's 1.26.1
// tree applied with kubectl and its real istiod: after the start, pods are
// still injected by the old istiod; after the switch, by the new revision,
// the gateways run it, and doctor names the notebook to restart; after the
// restart, nothing is left on the old revision; after the finish, no object
// of the old control plane remains, pods are injected and invalid config is
// refused with and without a revision label; no istiod logs an error.
func TestUpgradeWithKubectl(t *testing.T) {
	ctx := context.Background()
	steps, dir := kubectlUpgrade(t)
	mark := cluster.IstiodLogMark()
	u, _ := upgrader(t)

	kubectlStep(t, dir, steps, "start", false)
	waitIstiod(t, next.Istiod)
	p, err := newPod(ctx, u.In.Client, profile)
	if err != nil {
		t.Fatal(err)
	}
	expectProxy(t, p, previous, revision.Default)
	expectRevisions(t, "after start", map[string]string{
		revision.Default:  previous + " default 3 pods",
		upstream.Revision: upstream.Release + " 0 pods",
	})

	kubectlStep(t, dir, steps, "switch", true)
	if p, err = newPod(ctx, u.In.Client, profile); err != nil {
		t.Fatal(err)
	}
	expectProxy(t, p, upstream.Release, upstream.Revision)
	expectProxy(t, runningPod(t, revision.Namespace, "app=istio-ingressgateway"), upstream.Release, upstream.Revision)
	expectProxy(t, runningPod(t, revision.Namespace, "app=cluster-local-gateway"), upstream.Release, upstream.Revision)
	// The old injector selects nothing, as after kfistio upgrade switch
	// (with the tag injecting first by name, a pod would not show it).
	mwc, err := u.In.Client.Kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, previousDefault.InjectorWebhook, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range mwc.Webhooks {
		if !reflect.DeepEqual(h.NamespaceSelector, neverMatchSelector) || !reflect.DeepEqual(h.ObjectSelector, neverMatchSelector) {
			t.Errorf("after the switch, webhook %s of %s still selects namespaces %v, objects %v", h.Name, mwc.Name, h.NamespaceSelector, h.ObjectSelector)
		}
	}
	if got := stale(t); len(got) != 1 || !strings.HasPrefix(got[0], "Pod/"+profile+"/notebook-") {
		t.Errorf("after the switch, doctor finds the proxies of %v outdated, want the notebook's", got)
	}

	kubectlStep(t, dir, steps, "restart", false)
	expectProxy(t, runningPod(t, profile, "app=notebook"), upstream.Release, upstream.Revision)
	if got := stale(t); len(got) != 0 {
		t.Errorf("after the restart, doctor finds the proxies of %v outdated", got)
	}
	expectRevisions(t, "after the restart", map[string]string{
		revision.Default:  previous + " 0 pods",
		upstream.Revision: upstream.Release + " default 3 pods",
	})

	kubectlStep(t, dir, steps, "finish", false)
	// The old control plane: what Kubeflow's tree has and the revision's
	// installation does not, but for Kubeflow's namespace.
	_, rest, err := testcluster.PreviousKubeflow("")
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string]bool{}
	for _, o := range options(t).Objects {
		kept[object.Key(o)] = true
	}
	removed := 0
	for _, o := range rest {
		if kept[object.Key(o)] || o.GetKind() == "Namespace" {
			continue
		}
		removed++
		res, err := u.In.Client.Resource(o)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := res.Get(ctx, o.GetName(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("after finish, %s of the old control plane is still there (%v)", object.Key(o), err)
		}
	}
	if removed != 17 {
		t.Errorf("the old control plane has %d objects, want istiod and its Service, ServiceAccount, HPA, Role(Binding), three ConfigMaps, two webhooks, three ClusterRoles and their bindings", removed)
	}
	if p, err = newPod(ctx, u.In.Client, profile); err != nil {
		t.Fatal(err)
	}
	expectProxy(t, p, upstream.Release, upstream.Revision)
	expectValidated(t, "after finish")
	expectRevisions(t, "after finish", map[string]string{upstream.Revision: upstream.Release + " default 3 pods"})
	istiodErrors(t, mark, "after finish")
}

// The README's rollback with kubectl, after its start and switch, run as
// written on Kubeflow's 1.26.1 tree: the previous installation applied again
// (previous.yaml, as the README has users keep it), the tag, the default
// validator and the new revision gone; pods are injected throughout and,
// after it, by the old istiod alone, the CNI node agent and the gateways
// run the old release, and no object of the new revision is left.
func TestRollbackWithKubectl(t *testing.T) {
	ctx := context.Background()
	steps, dir := kubectlUpgrade(t)
	mark := cluster.IstiodLogMark()
	u, _ := upgrader(t)
	_, rest, err := testcluster.PreviousKubeflow("")
	if err != nil {
		t.Fatal(err)
	}
	testutil.WriteYAML(t, filepath.Join(dir, "previous.yaml"), rest)
	kubectlStep(t, dir, steps, "start", false)
	waitIstiod(t, next.Istiod)
	kubectlStep(t, dir, steps, "switch", true)
	p, err := newPod(ctx, u.In.Client, profile)
	if err != nil {
		t.Fatal(err)
	}
	expectProxy(t, p, upstream.Release, upstream.Revision)

	kubectlStep(t, dir, steps, "rollback", false)
	expectPrevious(t, "after rollback")
	expectProxy(t, runningPod(t, revision.Namespace, "app=istio-ingressgateway"), previous, revision.Default)
	expectProxy(t, runningPod(t, profile, "app=notebook"), previous, revision.Default)
	for _, o := range selectParts(options(t).Objects, upstream.Revision, controlPlane, tag) {
		res, err := u.In.Client.Resource(o)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := res.Get(ctx, o.GetName(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("after rollback, %s of the new revision is still there (%v)", object.Key(o), err)
		}
	}
	istiodErrors(t, mark, "after rollback")
}

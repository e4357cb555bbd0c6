package upgrade

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/testutil"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// fakeIstiod creates a Deployment that looks like istiod of release, named
// for revision rev, with no pod.
func fakeIstiod(t *testing.T, rev, release string) {
	t.Helper()
	create(t, fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: istio-system, labels: {app: istiod, istio.io/rev: %[2]s}}
spec:
  replicas: 0
  selector: {matchLabels: {app: istiod, istio.io/rev: %[2]s}}
  template:
    metadata: {labels: {app: istiod, istio.io/rev: %[2]s}}
    spec:
      containers:
      - {name: discovery, image: gcr.io/istio-release/pilot:%[3]s}
`, revision.NamesOf(rev).Istiod, rev, release))
}

// What cannot be upgraded by revision is refused with the reason, and with
// no write; steps without an upgrade under way say so.
func TestUpgradeRefusals(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() { wipe(t) })
	namespace(t, revision.Namespace, nil)
	u, counter := upgrader(t)
	o := options(t)
	expect := func(what string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error saying %q", what, err, want)
		}
	}
	_, err := u.Start(ctx, o)
	expect("no istiod", err, "no istiod runs on this cluster")
	for name, step := range map[string]func(context.Context, Options) (*Result, error){"switch": u.Switch, "finish": u.Finish, "rollback": u.Rollback} {
		_, err := step(ctx, o)
		expect(name+" without an upgrade", err, "no upgrade by revision is under way")
	}

	fakeIstiod(t, upstream.Revision, "1.28.3")
	_, err = u.Start(ctx, o)
	expect("revision name in use", err, "revision name "+upstream.Revision+" is in use by the istiod of Istio 1.28.3")

	fakeIstiod(t, revision.Default, "1.27.9")
	_, err = u.Start(ctx, o)
	expect("two control planes", err, "runs 2 control planes")
	deleteIstiod(t, upstream.Revision)

	ztunnel := testutil.WriteYAML(t, "objects.yaml", []*unstructured.Unstructured{{Object: map[string]any{
		"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": map[string]any{"name": "ztunnel", "namespace": "kube-system"},
		"spec": map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"app": "ztunnel"}},
			"template": map[string]any{"metadata": map[string]any{"labels": map[string]any{"app": "ztunnel"}},
				"spec": map[string]any{"containers": []any{map[string]any{"name": "istio-proxy", "image": "gcr.io/istio-release/ztunnel:1.27.9"}}}}},
	}}})
	kubectl(t, "apply", "-f", ztunnel)
	t.Cleanup(func() { _, _ = cluster.Kubectl("delete", "--ignore-not-found", "-f", ztunnel) })
	_, err = u.Start(ctx, o)
	if !errors.Is(err, ErrAmbient) {
		t.Errorf("ambient: %v", err)
	}
	kubectl(t, "delete", "daemonset", "ztunnel", "-n", "kube-system")

	deleteIstiod(t, revision.Default)
	fakeIstiod(t, revision.Default, "1.30.0")
	_, err = u.Start(ctx, o)
	expect("newer istiod", err, "newer than this kfistio's")
	if w := counter.Writes(); w != 0 {
		t.Errorf("the refusals made %d writes (%s)", w, counter)
	}
}

func deleteIstiod(t *testing.T, rev string) {
	t.Helper()
	kubectl(t, "delete", "deployment", "-n", revision.Namespace, revision.NamesOf(rev).Istiod)
}

package e2e

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/testcluster"
)

// mesh is an installation on the cluster, with istiod running.
type mesh struct {
	in   build.Installation
	objs []*unstructured.Unstructured
	// labels are the labels the overlay puts on other namespaces.
	labels []*unstructured.Unstructured
	// logMark is where istiod's log stood when the installation began.
	logMark testcluster.LogMark
	// warnings are what the API server warned of during the install.
	warnings *bytes.Buffer
}

const timeout = 2 * time.Minute

// connect returns an admin client of the cluster that counts its requests.
func connect(t *testing.T) (*kube.Client, *kube.RequestCounter) {
	t.Helper()
	counter := &kube.RequestCounter{}
	c, err := kube.Connect(context.Background(), kube.Options{Kubeconfig: cluster.Kubeconfig, WrapTransport: counter.Wrap})
	if err != nil {
		t.Fatal(err)
	}
	return c, counter
}

// objects builds in from tree (the embedded tree when nil).
func objects(t *testing.T, tree *build.Tree, in build.Installation) []*unstructured.Unstructured {
	t.Helper()
	if tree == nil {
		var err error
		if tree, err = build.Embedded(); err != nil {
			t.Fatal(err)
		}
	}
	objs, err := tree.InstallationObjects(in)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// installMesh installs objs as in, waits until istiod answers, and
// uninstalls when the test ends.
func installMesh(t *testing.T, in build.Installation, objs []*unstructured.Unstructured) *mesh {
	t.Helper()
	m, err := tryInstall(t, in, objs, timeout)
	if err != nil {
		t.Fatalf("install %s: %v\nistiod:\n%s", in.Name(), err, cluster.IstiodLogSince(m.logMark))
	}
	return m
}

// tryInstall is installMesh that returns the error of the install, with
// waits bounded by wait.
func tryInstall(t *testing.T, in build.Installation, objs []*unstructured.Unstructured, wait time.Duration) (*mesh, error) {
	t.Helper()
	ctx := context.Background()
	labels, err := build.EmbeddedNamespaceLabels(in)
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{in: in, objs: objs, labels: labels, logMark: cluster.IstiodLogMark(), warnings: &bytes.Buffer{}}
	t.Cleanup(func() { uninstall(t) })
	c, err := kube.Connect(ctx, kube.Options{Kubeconfig: cluster.Kubeconfig, Warnings: m.warnings})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (&install.Installer{Client: c}).Install(ctx, install.Options{Installation: in, Objects: objs, NamespaceLabels: labels, Timeout: wait, Version: "e2e"}); err != nil {
		return m, err
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return m, cluster.WaitIstiod(wctx)
}

// envoyFilterWarning is what istiod's validation says of every EnvoyFilter;
// the tree's one strips the session cookie, which no other API can do.
const envoyFilterWarning = "Warning: EnvoyFilter exposes internal implementation details that may change at any time. Prefer other APIs if possible, and exercise extreme caution, especially around upgrades."

// noWarnings fails t when the API server warned during the install of
// anything but envoyFilterWarning: the tree uses nothing it warns about
// (deprecated annotations and fields), and istiod's warnings on Istio config
// count too.
func (m *mesh) noWarnings(t *testing.T) {
	t.Helper()
	for _, w := range strings.Split(strings.TrimSpace(m.warnings.String()), "\n") {
		if w != "" && w != envoyFilterWarning {
			t.Errorf("the API server warned during the install: %s", w)
		}
	}
}

// uninstall removes what an installation left, CRDs aside, as `kfistio
// uninstall` does.
func uninstall(t *testing.T) {
	t.Helper()
	c, _ := connect(t)
	_, err := (&install.Installer{Client: c}).Uninstall(context.Background(), install.UninstallOptions{Timeout: timeout})
	if err != nil && !errors.Is(err, install.ErrNotInstalled) {
		t.Errorf("uninstall: %v", err)
	}
}

// reinstall installs m again and returns the changes and the writes it made.
func (m *mesh) reinstall(t *testing.T) (install.ChangeSet, int, string) {
	t.Helper()
	c, counter := connect(t)
	cs, err := (&install.Installer{Client: c}).Install(context.Background(), install.Options{Installation: m.in, Objects: m.objs, NamespaceLabels: m.labels, Timeout: timeout, Version: "e2e"})
	if err != nil {
		t.Fatalf("re-install %s: %v", m.in.Name(), err)
	}
	return cs, counter.Writes(), counter.String()
}

// knownUpstreamErrors are errors that istiod of the pinned release logs
// for configuration that is right, fixed in later Istio releases.
var knownUpstreamErrors = []struct{ message, why string }{{
	// pilot/pkg/serviceregistry/kube/controller/ambient/authorization.go
	// parses the annotation even when a policy does not carry it, then goes
	// on as without dry run (istio/istio#60480, after 1.29.1).
	message: `Unable to parse dry run annotation, encountered error strconv.ParseBool: parsing "": invalid syntax`,
	why:     "ambient mode logs it for every AuthorizationPolicy without istio.io/dry-run",
}}

// istiodErrors fails the test with every line istiod logged at error level
// since the installation began, but for the known upstream ones and the
// write conflicts its controllers retry.
func (m *mesh) istiodErrors(t *testing.T) {
	t.Helper()
	for _, l := range cluster.IstiodErrors(m.logMark) {
		if !slices.ContainsFunc(knownUpstreamErrors, func(k struct{ message, why string }) bool { return strings.Contains(l, k.message) }) && !retriedConflict(l) {
			t.Errorf("istiod logged an error: %s", l)
		}
	}
}

// retriedConflict reports whether l is a write of one of istiod's
// controllers that the API server refused because the object changed since
// it was read, and that the controller retries. istiod's namespace
// controller writes a namespace's istio-ca-root-cert for each of several
// keys (the namespace, that ConfigMap, istio-ca-crl) from its informer's
// copy, which may not hold its previous write yet.
func retriedConflict(l string) bool {
	return strings.Contains(l, "the object has been modified") && strings.Contains(l, "retrying (retry count: ")
}

package testcluster

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/object"
)

// PreviousRelease is the Istio release of Kubeflow's Istio tree before this
// one. hack/build-istiod.sh builds its istiod and its render program (what
// `istioctl manifest generate` of that release prints) into
// _output/bin/istio-<release>.
const PreviousRelease = "1.26.1"

//go:embed testdata/kubeflow-1.26.1
var previousTree embed.FS

const previousTreeDir = "testdata/kubeflow-1.26.1"

// PreviousKubeflow returns the objects of Kubeflow's Istio tree of
// PreviousRelease, as its users apply it: rendered by the render program of
// that release from testdata/kubeflow-1.26.1/profile.yaml, with Kubeflow's
// kustomize changes of that tree. With rev empty the control plane is the
// default one, as that tree had it; with a revision name it is that
// revision, with the default tag pointing at it (an installation made by
// revision). The objects Istio does not render (the istio-system Namespace
// and its NetworkPolicies, the gateways' Gateways and AuthorizationPolicies,
// kubeflow-gateway and the Kubeflow ClusterRoles) are those of this tree's
// default installation, and the kubeflow Namespace is added for
// kubeflow-gateway. The CustomResourceDefinitions come apart, to be applied
// first.
func PreviousKubeflow(rev string) (crds, rest []*unstructured.Unstructured, err error) {
	bin, err := BinDir()
	if err != nil {
		return nil, nil, err
	}
	render := filepath.Join(bin, "istio-"+PreviousRelease, "render")
	profile, err := previousTree.ReadFile(path.Join(previousTreeDir, "profile.yaml"))
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "kfistio-previous-")
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if err := os.WriteFile(filepath.Join(dir, "profile.yaml"), profile, 0o600); err != nil {
		return nil, nil, err
	}
	args := []string{"-f", filepath.Join(dir, "profile.yaml")}
	if rev != "" {
		args = append(args, "--set", "revision="+rev, "--set", "values.defaultRevision="+rev, "--set", "values.revisionTags[0]=default")
	}
	cmd := exec.Command(render, args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, nil, fmt.Errorf("render Istio %s (%s; run hack/build-istiod.sh): %w\n%s", PreviousRelease, render, err, stderr.String())
	}
	patched, err := kubeflowChanges(out.Bytes())
	if err != nil {
		return nil, nil, err
	}
	own, err := unrendered()
	if err != nil {
		return nil, nil, err
	}
	for _, o := range append(patched, own...) {
		if o.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, o)
		} else {
			rest = append(rest, o)
		}
	}
	object.Sort(crds)
	object.Sort(rest)
	return crds, rest, nil
}

// kubeflowChanges applies the kustomization of testdata/kubeflow-1.26.1 to
// the render.
func kubeflowChanges(render []byte) ([]*unstructured.Unstructured, error) {
	fs := filesys.MakeFsInMemory()
	k, err := previousTree.ReadFile(path.Join(previousTreeDir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	if err := fs.WriteFile("/tree/kustomization.yaml", k); err != nil {
		return nil, err
	}
	if err := fs.WriteFile("/tree/render.yaml", render); err != nil {
		return nil, err
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fs, "/tree")
	if err != nil {
		return nil, fmt.Errorf("Kubeflow's changes to the Istio %s render: %w", PreviousRelease, err)
	}
	y, err := m.AsYaml()
	if err != nil {
		return nil, err
	}
	return object.Parse("Kubeflow's Istio "+PreviousRelease, y)
}

// unrendered returns the objects of this tree's default installation that
// Istio's renderer does not make, and the kubeflow Namespace.
func unrendered() ([]*unstructured.Unstructured, error) {
	t, err := build.Embedded()
	if err != nil {
		return nil, err
	}
	objs, err := t.InstallationObjects(build.DefaultInstallation(build.DefaultOverlay))
	if err != nil {
		return nil, err
	}
	out := []*unstructured.Unstructured{{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "kubeflow"}}}}
	for _, o := range objs {
		if _, rendered := o.GetLabels()["helm.sh/chart"]; !rendered && o.GetKind() != "EnvoyFilter" {
			out = append(out, o)
		}
	}
	return out, nil
}

// Kubectl runs the kubectl of the control-plane build against the cluster,
// as its admin, and returns what it printed.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	bin, err := BinDir()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(bin, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// KeepWriting plays the controllers that write next to kfistio on a running
// mesh: until stop is called it keeps updating each of objs in turn, through
// an update guarded by the resourceVersion it read (an annotation of its
// own), as a GitOps controller adding labels or a controller writing
// annotations would. stop returns how many updates went through.
func (c *Cluster) KeepWriting(objs ...*unstructured.Unstructured) (stop func() int) {
	cfg := rest.CopyConfig(c.Config)
	cfg.QPS, cfg.Burst = 1000, 1000
	dyn := dynamic.NewForConfigOrDie(cfg)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(cfg)))
	ctx, cancel := context.WithCancel(context.Background())
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ctx.Err() == nil; i++ {
			o := objs[i%len(objs)]
			m, err := mapper.RESTMapping(o.GroupVersionKind().GroupKind(), o.GroupVersionKind().Version)
			if err != nil {
				mapper.Reset()
				time.Sleep(50 * time.Millisecond)
				continue
			}
			var res dynamic.ResourceInterface = dyn.Resource(m.Resource)
			if o.GetNamespace() != "" {
				res = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
			}
			if live, err := res.Get(ctx, o.GetName(), metav1.GetOptions{}); err == nil {
				a := live.GetAnnotations()
				if a == nil {
					a = map[string]string{}
				}
				a["example.com/seen"] = strconv.Itoa(i)
				live.SetAnnotations(a)
				if _, err := res.Update(ctx, live, metav1.UpdateOptions{FieldManager: "busy-controller"}); err == nil {
					n.Add(1)
				}
			}
			time.Sleep(time.Duration(5+rand.IntN(20)) * time.Millisecond)
		}
	}()
	return func() int {
		cancel()
		<-done
		return int(n.Load())
	}
}

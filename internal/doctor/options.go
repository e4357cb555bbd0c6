package doctor

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
)

// InstallationOptions are the options for manifests that will run under the
// installation built as objs: its injector, the labels it puts on
// namespaces, and its mesh-wide traffic policy. nativeSidecars, when not
// nil, replaces istiod's ENABLE_NATIVE_SIDECARS, to judge the manifests under
// an istiod without native sidecars. Istio's analyzers run over manifests
// with the installation's objects.
//
// An installation labels namespaces only in part: one whose labels say
// nothing about the data plane (istio-injection, istio.io/rev,
// istio.io/dataplane-mode) is taken as labelled istio-injection=enabled, as
// Kubeflow labels the namespaces where its workloads run.
func InstallationOptions(objs []*unstructured.Unstructured, nativeSidecars *bool) (WorkloadOptions, error) {
	if nativeSidecars != nil {
		var err error
		if objs, err = withNativeSidecars(objs, *nativeSidecars); err != nil {
			return WorkloadOptions{}, err
		}
	}
	in, err := inject.New(objs)
	if err != nil {
		return WorkloadOptions{}, err
	}
	o := WorkloadOptions{Injector: in, Namespaces: map[string]map[string]string{}}
	for _, obj := range objs {
		switch {
		case obj.GetKind() == "Namespace":
			l := maps.Clone(obj.GetLabels())
			if l == nil {
				l = map[string]string{}
			}
			if l[injectionLabel] == "" && l[revisionLabel] == "" && l[dataplaneModeLabel] == "" {
				l[injectionLabel] = "enabled"
			}
			o.Namespaces[obj.GetName()] = l
		case isTrafficObject(obj):
			o.Mesh = append(o.Mesh, obj)
		case isIstio(obj, "Gateway"), isIstio(obj, "VirtualService"), obj.GetKind() == "Deployment":
			o.Routing = append(o.Routing, obj)
		}
	}
	if o.Analysis, err = NewAnalysis(objs); err != nil {
		return WorkloadOptions{}, err
	}
	return o, nil
}

// withNativeSidecars is objs with istiod's ENABLE_NATIVE_SIDECARS set to on.
func withNativeSidecars(objs []*unstructured.Unstructured, on bool) ([]*unstructured.Unstructured, error) {
	out := slices.Clone(objs)
	for i, o := range out {
		if !revision.IsIstiod(o) {
			continue
		}
		d := o.DeepCopy()
		err := object.EditPodSpec(d, func(spec *corev1.PodSpec) {
			c := object.Container(spec, inject.DiscoveryContainer)
			if c == nil {
				return
			}
			c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == inject.NativeSidecarsEnv })
			c.Env = append(c.Env, corev1.EnvVar{Name: inject.NativeSidecarsEnv, Value: fmt.Sprint(on)})
		})
		if err != nil {
			return nil, err
		}
		out[i] = d
		return out, nil
	}
	return nil, errors.New("no istiod Deployment in the installation")
}

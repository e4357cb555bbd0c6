package inject

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/object"
)

func injector(t *testing.T, overlay string) *Injector {
	t.Helper()
	tree, err := build.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	o, _ := build.LookupOverlay(overlay)
	objs, err := tree.BuildObjects(o.Path)
	if err != nil {
		t.Fatal(err)
	}
	in, err := New(objs)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func injectSample(t *testing.T, in *Injector, name string) *corev1.PodSpec {
	t.Helper()
	samples, err := Samples()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range samples {
		if s.GetName() != name {
			continue
		}
		out, err := in.Inject(s)
		if err != nil {
			t.Fatal(err)
		}
		spec, err := object.PodSpec(out)
		if err != nil {
			t.Fatal(err)
		}
		return spec
	}
	t.Fatalf("no sample %s", name)
	return nil
}

func initNames(spec *corev1.PodSpec) []string {
	var names []string
	for _, c := range spec.InitContainers {
		names = append(names, c.Name)
	}
	return names
}

func TestInjectCNI(t *testing.T) {
	spec := injectSample(t, injector(t, "oauth2-proxy"), "with-init")
	got := initNames(spec)
	want := []string{ValidationContainer, ProxyContainer, "prepare"}
	if len(got) != len(want) {
		t.Fatalf("init containers %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("init containers %v, want %v", got, want)
		}
	}
	proxy := spec.InitContainers[1]
	if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("istio-proxy restartPolicy %v, want Always", proxy.RestartPolicy)
	}
	for _, v := range spec.Volumes {
		if (v.VolumeSource == corev1.VolumeSource{}) {
			t.Errorf("volume %s has no source", v.Name)
		}
	}
}

func TestInjectInsecure(t *testing.T) {
	spec := injectSample(t, injector(t, "insecure"), "web-app")
	got := initNames(spec)
	if len(got) == 0 || got[0] != InitContainer {
		t.Fatalf("init containers %v, want %s first", got, InitContainer)
	}
}

func TestNativeSidecarsFollowIstiod(t *testing.T) {
	in := injector(t, "oauth2-proxy")
	in.native = nativeMode("false")
	spec := injectSample(t, in, "web-app")
	for _, c := range spec.InitContainers {
		if c.Name == ProxyContainer {
			t.Fatalf("istio-proxy is an init container although ENABLE_NATIVE_SIDECARS=false")
		}
	}
}

func TestNewNeedsInjectorConfig(t *testing.T) {
	_, err := New([]*unstructured.Unstructured{})
	if err == nil {
		t.Fatal("New without objects: no error")
	}
}

// The injection webhooks of the tree send pods of namespaces labelled for
// injection, and not those of ambient namespaces.
func TestSelects(t *testing.T) {
	in := injector(t, "oauth2-proxy")
	cases := []struct {
		ns, pod map[string]string
		want    bool
	}{
		{map[string]string{"istio-injection": "enabled"}, nil, true},
		{map[string]string{"istio.io/rev": "default"}, nil, true},
		{map[string]string{"istio.io/dataplane-mode": "ambient"}, nil, false},
		{nil, nil, false},
		{map[string]string{"istio-injection": "enabled"}, map[string]string{"sidecar.istio.io/inject": "false"}, false},
		{map[string]string{"istio-injection": "disabled"}, nil, false},
		{nil, map[string]string{"sidecar.istio.io/inject": "true"}, true},
	}
	for _, c := range cases {
		if got := in.Selects(c.ns, c.pod); got != c.want {
			t.Errorf("namespace %v, pod %v: %v, want %v", c.ns, c.pod, got, c.want)
		}
	}
}

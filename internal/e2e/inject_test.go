package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
)

// fieldManager is the field manager of what the tests apply, standing for
// Kubeflow's own manifests and its users.
const fieldManager = "e2e"

// injectionProblems creates each sample workload through the API server,
// where istiod's webhook injects its pods, and compares each pod with
// verify's simulation of the same injection, made to look as the API server
// stores it: the simulated pod is created as a server-side dry run in a
// namespace that no webhook injects, so the API server's defaulting and
// admission apply to both alike. Every field that differs is a problem, by
// path; so is a pod that cannot be injected, really or offline.
func (m *mesh) injectionProblems(t *testing.T) []string {
	c, _ := connect(t)
	injector, err := inject.New(m.objs)
	if err != nil {
		return []string{"verify's injector: " + err.Error()}
	}
	samples, err := inject.Samples()
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	for _, s := range samples {
		key := object.Key(s)
		nsLabels := inject.SampleNamespaceLabels(append(slices.Clone(m.objs), m.labels...), s.GetNamespace())
		prepareNamespace(t, c, s.GetNamespace(), nsLabels)
		tpl, err := object.PodTemplate(s)
		if err != nil {
			t.Fatal(err)
		}
		injected := injector.Selects(nsLabels, tpl.Labels)
		if injected {
			out, err := injector.Inject(s)
			if err == nil {
				tpl, err = object.PodTemplate(out)
			}
			if err != nil {
				problems = append(problems, key+": verify's injection: "+err.Error())
				continue
			}
		}
		simulated := defaulted(t, c, s.GetName(), tpl)
		real, err := createPod(t, c, s)
		if err != nil {
			problems = append(problems, key+": "+err.Error())
			continue
		}
		if got, want := hasProxy(real), injected; got != want {
			problems = append(problems, fmt.Sprintf("%s: istiod injected a sidecar: %v; verify's simulation: %v", key, got, want))
		}
		for _, d := range podDiff(comparablePod(real), comparablePod(simulated)) {
			problems = append(problems, key+": real injection differs from verify's simulation: "+d)
		}
	}
	return problems
}

func hasProxy(p *corev1.Pod) bool {
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name == inject.ProxyContainer {
			return true
		}
	}
	return false
}

// prepareNamespace gives the namespace the labels Kubeflow gives it (it is
// created when missing), and the ServiceAccounts the samples run as.
// Cleanup takes back what it added.
func prepareNamespace(t *testing.T, c *kube.Client, name string, nsLabels map[string]string) {
	t.Helper()
	ctx := context.Background()
	nss := c.Kube.CoreV1().Namespaces()
	if _, err := nss.Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		if _, err := nss.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deleteNamespace(t, c, name) })
	} else if err != nil {
		t.Fatal(err)
	}
	applyLabels := func(l map[string]string) {
		body, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name, "labels": l}})
		if _, err := nss.Patch(ctx, name, types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: fieldManager, Force: ptr(true)}); err != nil {
			t.Fatalf("label Namespace/%s: %v", name, err)
		}
	}
	applyLabels(nsLabels)
	t.Cleanup(func() { applyLabels(nil) })
	for _, ns := range []string{name, defaulting} {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default-editor", Namespace: ns}}
		if _, err := c.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
}

func deleteNamespace(t *testing.T, c *kube.Client, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := c.Kube.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete Namespace/%s: %v", name, err)
		return
	}
	for {
		if _, err := c.Kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return
		}
		select {
		case <-ctx.Done():
			t.Errorf("Namespace/%s not deleted: %v", name, ctx.Err())
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// defaulted is the pod of tpl as the API server would store it, from a
// server-side dry run of its creation in a namespace no webhook injects.
func defaulted(t *testing.T, c *kube.Client, name string, tpl *corev1.PodTemplateSpec) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: name + "-", Namespace: defaulting, Labels: tpl.Labels, Annotations: tpl.Annotations},
		Spec:       tpl.Spec,
	}
	out, err := c.Kube.CoreV1().Pods(defaulting).Create(context.Background(), pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatalf("dry run of the simulated pod: %v", err)
	}
	return out
}

// createPod applies the sample workload and returns the first pod that the
// cluster runs for it: the pod itself, or the pod its controller creates.
// A pod the API server refuses (an injection webhook that fails) is an
// error. Cleanup deletes the workload.
func createPod(t *testing.T, c *kube.Client, s *unstructured.Unstructured) (*corev1.Pod, error) {
	t.Helper()
	ctx := context.Background()
	res, err := c.Resource(s)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(s.Object)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := res.Patch(ctx, s.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
		return nil, fmt.Errorf("create %s: %w", object.Key(s), err)
	}
	t.Cleanup(func() {
		policy := metav1.DeletePropagationForeground
		if err := res.Delete(context.Background(), s.GetName(), metav1.DeleteOptions{PropagationPolicy: &policy}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete %s: %v", object.Key(s), err)
		}
	})
	sel := labels.Everything()
	if s.GetKind() != "Pod" {
		tpl, err := object.PodTemplate(s)
		if err != nil {
			t.Fatal(err)
		}
		sel = labels.SelectorFromSet(tpl.Labels)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		pods, err := c.Kube.CoreV1().Pods(s.GetNamespace()).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range pods.Items {
			if s.GetKind() != "Pod" || p.Name == s.GetName() {
				return &pods.Items[i], nil
			}
		}
		if why := failedCreate(ctx, c, s); why != "" {
			return nil, fmt.Errorf("%s creates no pod: %s", object.Key(s), why)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no pod of %s: %w", object.Key(s), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// failedCreate returns why the controllers of s fail to create its pods, from
// their FailedCreate events.
func failedCreate(ctx context.Context, c *kube.Client, s *unstructured.Unstructured) string {
	events, err := c.Kube.CoreV1().Events(s.GetNamespace()).List(ctx, metav1.ListOptions{FieldSelector: "reason=FailedCreate"})
	if err != nil {
		return ""
	}
	for _, e := range events.Items {
		if strings.HasPrefix(e.InvolvedObject.Name, s.GetName()) {
			return e.Message
		}
	}
	return ""
}

// controllerLabels are the labels the workload controllers add to the pods
// they create, which a pod template does not carry.
var controllerLabels = []string{"pod-template-hash", "controller-revision-hash", "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index"}

// apiAccessVolume matches the projected service account token volume that
// the API server adds to each pod under a random name.
var apiAccessVolume = regexp.MustCompile(`^kube-api-access-[a-z0-9]+$`)

// comparablePod is what injection decides of a pod: its labels (without the
// controllers' own), annotations, containers, init containers, volumes and
// security context.
func comparablePod(p *corev1.Pod) map[string]any {
	l := map[string]string{}
	for k, v := range p.Labels {
		if !slices.Contains(controllerLabels, k) {
			l[k] = v
		}
	}
	spec := p.Spec.DeepCopy()
	rename := func(name string) string {
		if apiAccessVolume.MatchString(name) {
			return "kube-api-access"
		}
		return name
	}
	for i := range spec.Volumes {
		spec.Volumes[i].Name = rename(spec.Volumes[i].Name)
	}
	for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for i := range cs {
			for j := range cs[i].VolumeMounts {
				cs[i].VolumeMounts[j].Name = rename(cs[i].VolumeMounts[j].Name)
			}
		}
	}
	v := map[string]any{
		"metadata.labels": l, "metadata.annotations": p.Annotations,
		"spec.containers": spec.Containers, "spec.initContainers": spec.InitContainers,
		"spec.volumes": spec.Volumes, "spec.securityContext": spec.SecurityContext,
	}
	b, _ := json.Marshal(v)
	out := map[string]any{}
	_ = json.Unmarshal(b, &out)
	return out
}

// podDiff lists the paths where a and b differ, with both values; list
// items with a name are named by it.
func podDiff(a, b map[string]any) []string {
	var out []string
	diffValues("", a, b, &out)
	sort.Strings(out)
	return out
}

func diffValues(path string, a, b any, out *[]string) {
	if reflect.DeepEqual(a, b) {
		return
	}
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			break
		}
		for k := range keysOf(av, bv) {
			diffValues(join(path, k), av[k], bv[k], out)
		}
		return
	case []any:
		bv, ok := b.([]any)
		if !ok {
			break
		}
		if an, bn := names(av), names(bv); an != nil && bn != nil {
			for k := range keysOf(an, bn) {
				diffValues(fmt.Sprintf("%s[%s]", path, k), an[k], bn[k], out)
			}
			if slices.Equal(order(av), order(bv)) || len(an) != len(bn) {
				return
			}
			*out = append(*out, fmt.Sprintf("%s: order %v, simulated %v", path, order(av), order(bv)))
			return
		}
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	*out = append(*out, fmt.Sprintf("%s: istiod %s, simulated %s", path, ja, jb))
}

// keysOf returns the keys of a and b.
func keysOf(a, b map[string]any) map[string]bool {
	keys := map[string]bool{}
	for _, m := range []map[string]any{a, b} {
		for k := range m {
			keys[k] = true
		}
	}
	return keys
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// names indexes list items by their name, or returns nil when they have
// none.
func names(l []any) map[string]any {
	m := map[string]any{}
	for _, v := range l {
		o, ok := v.(map[string]any)
		n, named := o["name"].(string)
		if !ok || !named {
			return nil
		}
		m[n] = v
	}
	return m
}

func order(l []any) []string {
	var out []string
	for _, v := range l {
		out = append(out, v.(map[string]any)["name"].(string))
	}
	return out
}

func ptr[T any](v T) *T { return &v }

package verify

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/object"
)

// problems collects the problems of one check.
type problems []Problem

func (p *problems) wrong(obj, field string, found any, want string) {
	*p = append(*p, Problem{Object: obj, Field: field, Found: show(found), Want: want})
}

func (p *problems) because(obj, field, reason string) {
	*p = append(*p, Problem{Object: obj, Field: field, Reason: reason})
}

func (p *problems) missing(kind, ns, name string) {
	*p = append(*p, Problem{Object: object.KeyOf(kind, ns, name), Reason: "missing"})
}

// show renders a found value compactly: strings as quoted strings, the rest
// as JSON.
func show(v any) string {
	if v == nil {
		return ""
	}
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// require returns the object or records that it is missing.
func (t *target) require(p *problems, kind, ns, name string) *unstructured.Unstructured {
	o := t.get(kind, ns, name)
	if o == nil {
		p.missing(kind, ns, name)
	}
	return o
}

// field returns the value at the dotted path of o ("spec.action").
func field(o *unstructured.Unstructured, path string) (any, bool) {
	v, ok, err := unstructured.NestedFieldNoCopy(o.Object, strings.Split(path, ".")...)
	return v, ok && err == nil
}

// expect records a problem unless o has want at path.
func expect(p *problems, o *unstructured.Unstructured, path string, want any) {
	got, _ := field(o, path)
	if !equalJSON(got, want) {
		p.wrong(object.Key(o), path, got, show(want))
	}
}

// equalJSON compares two values as their JSON forms, so that int64(80) and
// float64(80) are equal.
func equalJSON(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	if errA != nil || errB != nil {
		return reflect.DeepEqual(a, b)
	}
	var va, vb any
	_ = json.Unmarshal(ja, &va)
	_ = json.Unmarshal(jb, &vb)
	return reflect.DeepEqual(va, vb)
}

// lookup returns the value at the dotted path of a decoded YAML/JSON map.
func lookup(m map[string]any, path string) (any, bool) {
	var cur any = m
	for _, k := range strings.Split(path, ".") {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		cur, ok = mm[k]
		if !ok {
			return nil, false
		}
	}
	return cur, true
}

// leaves flattens m into dotted paths of its non-map values.
func leaves(m map[string]any, prefix string, out map[string]any) {
	for k, v := range m {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		if sub, ok := v.(map[string]any); ok && len(sub) > 0 {
			leaves(sub, p, out)
			continue
		}
		out[p] = v
	}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// podTemplate returns the pod template of o, recording a problem when it
// cannot be read.
func podTemplate(p *problems, o *unstructured.Unstructured) *corev1.PodTemplateSpec {
	tpl, err := object.PodTemplate(o)
	if err != nil {
		p.because(object.Key(o), "pod template", err.Error())
		return nil
	}
	return tpl
}

func container(spec *corev1.PodSpec, name string) *corev1.Container {
	return object.Container(spec, name)
}

func initContainer(spec *corev1.PodSpec, name string) (*corev1.Container, int) {
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == name {
			return &spec.InitContainers[i], i
		}
	}
	return nil, -1
}

func envValue(c *corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// expectEnv records a problem unless container c of o sets env name to want.
func expectEnv(p *problems, o *unstructured.Unstructured, c, name, want string) {
	tpl := podTemplate(p, o)
	if tpl == nil {
		return
	}
	ctr := container(&tpl.Spec, c)
	if ctr == nil {
		p.because(object.Key(o), "container "+c, "missing")
		return
	}
	got, ok := envValue(ctr, name)
	field := fmt.Sprintf("containers[%s].env[%s]", c, name)
	if !ok {
		p.wrong(object.Key(o), field, nil, show(want))
		return
	}
	if got != want {
		p.wrong(object.Key(o), field, got, show(want))
	}
}

// expectPodSeccomp records a problem unless the pods of o have the
// RuntimeDefault seccomp profile.
func expectPodSeccomp(p *problems, o *unstructured.Unstructured) {
	tpl := podTemplate(p, o)
	if tpl == nil {
		return
	}
	var got any
	if sc := tpl.Spec.SecurityContext; sc != nil && sc.SeccompProfile != nil {
		got = string(sc.SeccompProfile.Type)
	}
	if got != string(corev1.SeccompProfileTypeRuntimeDefault) {
		p.wrong(object.Key(o), "pod securityContext.seccompProfile.type", got, show("RuntimeDefault"))
	}
}

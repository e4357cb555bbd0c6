package install

import (
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/sets"
)

func entry(manager string, op metav1.ManagedFieldsOperationType, fields string) metav1.ManagedFieldsEntry {
	return metav1.ManagedFieldsEntry{Manager: manager, Operation: op, APIVersion: "apps/v1", FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(fields)}}
}

const (
	envDebug = `{"f:spec":{"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"discovery\"}":{".":{},"f:name":{},"f:env":{"k:{\"name\":\"DEBUG\"}":{".":{},"f:name":{},"f:value":{}}}}}}}}}`
	envLimit = `{"f:spec":{"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"discovery\"}":{".":{},"f:name":{},"f:env":{"k:{\"name\":\"GOMEMLIMIT\"}":{".":{},"f:name":{},"f:value":{}}}}}}}}}`
	caBundle = `{"f:spec":{"f:template":{"f:spec":{"f:containers":{"k:{\"name\":\"discovery\"}":{"f:image":{}}}}}}}`
)

// Other managers count where they own a leaf kfistio applies, not where they
// only own fields beside it.
func TestSharedFields(t *testing.T) {
	live := &unstructured.Unstructured{}
	live.SetManagedFields([]metav1.ManagedFieldsEntry{
		entry("kubectl", metav1.ManagedFieldsOperationApply, envLimit),
		entry("istiod", metav1.ManagedFieldsOperationUpdate, caBundle),
		entry("kfistio", metav1.ManagedFieldsOperationUpdate, envDebug),
	})
	ours, err := fieldSet(entry("kfistio", metav1.ManagedFieldsOperationApply, envDebug))
	if err != nil {
		t.Fatal(err)
	}
	shared, err := sharedFields(live, ours)
	if err != nil {
		t.Fatal(err)
	}
	if len(shared) != 1 || !slices.Equal(shared["kubectl"], []string{`.spec.template.spec.containers[name="discovery"].name`}) {
		t.Errorf("shared %v, want only kubectl's container name", shared)
	}
}

// Other appliers' entries merge into kfistio's; the rest stay.
func TestMergeApplyEntries(t *testing.T) {
	in := []metav1.ManagedFieldsEntry{
		entry("kubectl", metav1.ManagedFieldsOperationApply, envLimit),
		entry("istiod", metav1.ManagedFieldsOperationUpdate, caBundle),
		entry("kfistio", metav1.ManagedFieldsOperationApply, envDebug),
	}
	out, err := mergeApplyEntries(in, sets.New("kubectl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].Manager != "kfistio" || out[1].Manager != "istiod" {
		t.Fatalf("entries %v", out)
	}
	merged, err := fieldSet(out[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{envLimit, envDebug} {
		s, _ := fieldSet(entry("x", metav1.ManagedFieldsOperationApply, f))
		if !s.Difference(merged).Empty() {
			t.Errorf("kfistio's entry lacks %s", f)
		}
	}
}

// A field is stale when the object no longer has it, named once at its top.
func TestStaleFields(t *testing.T) {
	moved, err := fieldSet(entry("kubectl", metav1.ManagedFieldsOperationApply, envLimit))
	if err != nil {
		t.Fatal(err)
	}
	obj := func(env ...string) *unstructured.Unstructured {
		var list []any
		for _, e := range env {
			list = append(list, map[string]any{"name": e, "value": "1"})
		}
		return &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"template": map[string]any{"spec": map[string]any{
			"containers": []any{map[string]any{"name": "discovery", "env": list}}}}}}}
	}
	if got := staleFields(moved, obj("DEBUG")); !slices.Equal(got, []string{`.spec.template.spec.containers[name="discovery"].env[name="GOMEMLIMIT"]`}) {
		t.Errorf("stale %v", got)
	}
	if got := staleFields(moved, obj("DEBUG", "GOMEMLIMIT")); len(got) != 0 {
		t.Errorf("stale %v while the object still has them", got)
	}
}

// The dry run of an adoption removes what only the adopted managers hold:
// GOMEMLIMIT goes, the container kfistio also applies stays, and so does a
// field another manager writes through a subresource.
func TestWithoutAdopted(t *testing.T) {
	moved, err := fieldSet(entry("kubectl", metav1.ManagedFieldsOperationApply, envLimit))
	if err != nil {
		t.Fatal(err)
	}
	live := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"template": map[string]any{"spec": map[string]any{
		"containers": []any{map[string]any{"name": "discovery", "image": "pilot", "env": []any{
			map[string]any{"name": "DEBUG", "value": "1"}, map[string]any{"name": "GOMEMLIMIT", "value": "1"},
		}}}}}}}}
	status := entry("istiod", metav1.ManagedFieldsOperationUpdate, envLimit)
	status.Subresource = "status"
	for _, c := range []struct {
		name    string
		entries []metav1.ManagedFieldsEntry
		env     []string
	}{
		{"kfistio sets DEBUG", []metav1.ManagedFieldsEntry{entry("kubectl", metav1.ManagedFieldsOperationApply, envLimit), entry("kfistio", metav1.ManagedFieldsOperationApply, envDebug)}, []string{"DEBUG"}},
		{"a subresource writer holds GOMEMLIMIT", []metav1.ManagedFieldsEntry{entry("kubectl", metav1.ManagedFieldsOperationApply, envLimit), status}, []string{"DEBUG", "GOMEMLIMIT"}},
	} {
		o := live.DeepCopy()
		o.SetManagedFields(c.entries)
		out, err := withoutAdopted(o, moved, []string{"kubectl"})
		if err != nil {
			t.Fatal(err)
		}
		if got, image := envNames(out), containerField(out, "image"); !slices.Equal(got, c.env) || image != "pilot" || out.GetManagedFields() != nil {
			t.Errorf("%s: env %v, image %v, managedFields %v; want env %v", c.name, got, image, out.GetManagedFields(), c.env)
		}
		if got := envNames(o); len(got) != 2 {
			t.Errorf("%s: withoutAdopted changed its input: env %v", c.name, got)
		}
	}
}

// containerField returns the field of the first container of a pod template.
func containerField(o *unstructured.Unstructured, name string) any {
	cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if len(cs) == 0 {
		return nil
	}
	return cs[0].(map[string]any)[name]
}

// envNames lists the env names of the first container of a pod template.
func envNames(o *unstructured.Unstructured) []string {
	env, _ := containerField(o, "env").([]any)
	var out []string
	for _, e := range env {
		out = append(out, e.(map[string]any)["name"].(string))
	}
	return out
}

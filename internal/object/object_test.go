package object

import (
	"reflect"
	"strings"
	"testing"
)

func TestCanonical(t *testing.T) {
	a := map[string]any{
		"metadata": map[string]any{"name": "x", "annotations": map[string]any{}, "labels": nil},
		"spec": map[string]any{
			"volumes": []any{map[string]any{"name": "b", "emptyDir": map[string]any{}}, map[string]any{"name": "a"}},
			"args":    []any{"z", "a"},
		},
	}
	b := map[string]any{
		"metadata": map[string]any{"name": "x"},
		"spec": map[string]any{
			"volumes": []any{map[string]any{"name": "a"}, map[string]any{"name": "b", "emptyDir": map[string]any{}}},
			"args":    []any{"z", "a"},
		},
	}
	if !reflect.DeepEqual(Canonical(a), Canonical(b)) {
		t.Errorf("%v != %v", Canonical(a), Canonical(b))
	}
	// Meaningful differences stay: an emptyDir source, the order of args.
	c := map[string]any{"spec": map[string]any{"volumes": []any{map[string]any{"name": "b"}}, "args": []any{"a", "z"}}}
	d := map[string]any{"spec": map[string]any{"volumes": []any{map[string]any{"name": "b", "emptyDir": map[string]any{}}}, "args": []any{"a", "z"}}}
	if reflect.DeepEqual(Canonical(c), Canonical(d)) {
		t.Error("an emptyDir source was dropped")
	}
	e := map[string]any{"args": []any{"z", "a"}}
	f := map[string]any{"args": []any{"a", "z"}}
	if reflect.DeepEqual(Canonical(e), Canonical(f)) {
		t.Error("the order of args was dropped")
	}
}

func TestParse(t *testing.T) {
	objs, err := Parse("x.yaml", []byte("# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n"))
	if err != nil || len(objs) != 1 || Key(objs[0]) != "ConfigMap/a" {
		t.Fatalf("%v %v", objs, err)
	}
	for _, bad := range []string{"kind: [\n", "apiVersion: v1\nkind: ConfigMap\n", "- a\n- b\n"} {
		if _, err := Parse("bad.yaml", []byte(bad)); err == nil || !strings.Contains(err.Error(), "bad.yaml: document 1") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

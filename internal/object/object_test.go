package object

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
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

// The Services of webhooks, with the API server's default port; webhooks
// called by URL and objects that are no webhook configuration have none.
func TestWebhookServices(t *testing.T) {
	var o unstructured.Unstructured
	if err := yaml.Unmarshal([]byte(`apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: injector}
webhooks:
- name: a
  clientConfig: {service: {namespace: istio-system, name: istiod, path: /inject, port: 15017}}
- name: b
  clientConfig: {url: "https://127.0.0.1:9443/inject"}
- name: c
  clientConfig: {service: {namespace: istio-system, name: istiod-1-29-1, path: /inject}}
`), &o.Object); err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(WebhookServices(&o))
	want := "[{a istio-system istiod /inject 15017} {c istio-system istiod-1-29-1 /inject 443}]"
	if got != want {
		t.Errorf("WebhookServices = %s, want %s", got, want)
	}
	o.SetKind("ConfigMap")
	if ws := WebhookServices(&o); ws != nil {
		t.Errorf("a ConfigMap calls %v", ws)
	}
}

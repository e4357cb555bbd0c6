package upgrade

import (
	"encoding/json"
	"io/fs"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/doctor"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/upstream"
	"github.com/kubeflow/kfistio/manifests"
)

func parse(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	o := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &o.Object); err != nil {
		t.Fatal(err)
	}
	return o
}

// Each object of the revision's installation belongs to the step the tree
// labels it with, and the control plane's own objects are told from the
// shared ones by their names.
func TestPartOf(t *testing.T) {
	o := options(t)
	counts := map[part]int{}
	for _, obj := range o.Objects {
		p := partOf(obj, upstream.Revision)
		counts[p]++
		step := obj.GetLabels()[revision.StepLabel]
		switch {
		case (p == tag || p == gateway) && step != revision.StepSwitch:
			t.Errorf("%s is applied at the switch, but labelled %q", obj.GetName(), step)
		case p == controlPlane && step != revision.StepStart:
			t.Errorf("%s is applied at the start, but labelled %q", obj.GetName(), step)
		}
	}
	// istiod and its Service, ServiceAccount, HPA, Role(Binding), three
	// ConfigMaps, two webhooks, three ClusterRoles and their bindings; the
	// tag's webhook and Service, the default validator; six objects of each
	// gateway.
	if counts[controlPlane] != 17 || counts[tag] != 3 || counts[gateway] != 12 {
		t.Errorf("parts %v", counts)
	}
}

// What a rollback puts back leaves out what the cluster manages: status,
// bookkeeping, CA bundles, replicas of autoscaled workloads.
func TestRestorable(t *testing.T) {
	d := restorable(parse(t, `apiVersion: apps/v1
kind: Deployment
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  uid: 1
  resourceVersion: "2"
  generation: 3
  creationTimestamp: "2026-01-01T00:00:00Z"
  managedFields: [{manager: kubectl}]
  annotations:
    deployment.kubernetes.io/revision: "4"
    kubectl.kubernetes.io/last-applied-configuration: "{}"
    keep: "yes"
spec:
  replicas: 3
  template: {}
status: {replicas: 3}
`))
	b, _ := json.Marshal(d)
	if want := `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"annotations":{"keep":"yes"},"name":"istio-ingressgateway","namespace":"istio-system"},"spec":{"template":{}}}`; string(b) != want {
		t.Errorf("restorable:\n%s\nwant\n%s", b, want)
	}
	w := restorable(parse(t, `apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: istio-sidecar-injector}
webhooks:
- name: a
  clientConfig: {caBundle: Zm9v, service: {name: istiod}}
`))
	if b, _ := json.Marshal(w); strings.Contains(string(b), "caBundle") {
		t.Errorf("the CA bundle is kept: %s", b)
	}
}

// The switch deactivates the old injector by its selectors alone, and the
// rollback gives the saved ones back; new webhooks start inert.
func TestSelectors(t *testing.T) {
	old := parse(t, `apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: istio-sidecar-injector, labels: {istio.io/rev: default}}
webhooks:
- name: namespace.sidecar-injector.istio.io
  clientConfig: {service: {name: istiod}}
  namespaceSelector: {matchLabels: {istio-injection: enabled}}
- name: object.sidecar-injector.istio.io
  clientConfig: {service: {name: istiod}}
  objectSelector: {matchLabels: {sidecar.istio.io/inject: "true"}}
`)
	off := deactivation(old)
	b, _ := json.Marshal(off.Object)
	if strings.Contains(string(b), "clientConfig") || strings.Count(string(b), "never-match") != 4 {
		t.Errorf("deactivation: %s", b)
	}
	back := selectors(old)
	b, _ = json.Marshal(back.Object)
	if want := `{"apiVersion":"admissionregistration.k8s.io/v1","kind":"MutatingWebhookConfiguration","metadata":{"name":"istio-sidecar-injector"},"webhooks":[{"name":"namespace.sidecar-injector.istio.io","namespaceSelector":{"matchLabels":{"istio-injection":"enabled"}}},{"name":"object.sidecar-injector.istio.io","objectSelector":{"matchLabels":{"sidecar.istio.io/inject":"true"}}}]}`; string(b) != want {
		t.Errorf("selectors:\n%s\nwant\n%s", b, want)
	}
	in := inert(old)
	b, _ = json.Marshal(in.Object)
	if strings.Count(string(b), "never-match") != 4 || !strings.Contains(string(b), "clientConfig") {
		t.Errorf("inert: %s", b)
	}
	if b, _ := json.Marshal(old.Object); strings.Contains(string(b), "never-match") {
		t.Error("inert changed its argument")
	}
}

// save records each object once per step, as it was before that step's
// first run, and leaves CRDs out: they are never rolled back.
func TestSave(t *testing.T) {
	up := &install.Upgrade{}
	cm := parse(t, `{apiVersion: v1, kind: ConfigMap, metadata: {name: a, namespace: istio-system}, data: {v: "1"}}`)
	crd := parse(t, `{apiVersion: apiextensions.k8s.io/v1, kind: CustomResourceDefinition, metadata: {name: x.istio.io}}`)
	live := map[string]*unstructured.Unstructured{"a": cm}
	get := func(o *unstructured.Unstructured) *unstructured.Unstructured { return live[o.GetName()] }
	created := parse(t, `{apiVersion: v1, kind: ConfigMap, metadata: {name: b, namespace: istio-system}}`)
	save(up, revision.StepStart, []*unstructured.Unstructured{cm, crd, created}, get)
	changed := cm.DeepCopy()
	changed.Object["data"] = map[string]any{"v": "2"}
	live["a"] = changed
	save(up, revision.StepSwitch, []*unstructured.Unstructured{cm}, get)
	// A step run again keeps what was there before its first run.
	live["a"] = parse(t, `{apiVersion: v1, kind: ConfigMap, metadata: {name: a, namespace: istio-system}, data: {v: "3"}}`)
	save(up, revision.StepStart, []*unstructured.Unstructured{cm, created}, get)
	save(up, revision.StepSwitch, []*unstructured.Unstructured{cm}, get)
	data := func(i int) any { return up.Saved[i].Object["data"].(map[string]any)["v"] }
	if len(up.Saved) != 3 || up.Saved[0].Step != revision.StepStart || data(0) != "1" || up.Saved[1].Object != nil ||
		up.Saved[2].Step != revision.StepSwitch || data(2) != "2" {
		t.Errorf("saved %+v", up.Saved)
	}
}

// The file kubectl users apply at the switch makes the same webhooks select
// nothing as the switch does: every webhook of the injector of a control
// plane installed without a revision.
func TestDeactivationFile(t *testing.T) {
	tree, err := build.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	objs, _, err := tree.InstallationParts(build.DefaultInstallation(build.DefaultOverlay))
	if err != nil {
		t.Fatal(err)
	}
	var injector *unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "MutatingWebhookConfiguration" && o.GetName() == "istio-sidecar-injector" {
			injector = o
		}
	}
	if injector == nil {
		t.Fatal("no MutatingWebhookConfiguration/istio-sidecar-injector in the default installation")
	}
	b, err := fs.ReadFile(manifests.FS, "istio-install/revision/deactivate-default-injector.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.Marshal(deactivation(injector).Object)
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(parse(t, string(b)).Object)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("deactivate-default-injector.yaml is\n%s\nthe switch applies\n%s", got, want)
	}
}

// The gateways are left out of a copy: the caller's list stays whole.
func TestWithoutGateways(t *testing.T) {
	ws := []doctor.StaleWorkload{
		{Workload: "Deployment/istio-system/istio-ingressgateway"},
		{Workload: "Deployment/kubeflow-user-example-com/notebook"},
	}
	got := WithoutGateways(ws)
	if len(got) != 1 || got[0].Workload != "Deployment/kubeflow-user-example-com/notebook" {
		t.Errorf("WithoutGateways = %+v", got)
	}
	if ws[0].Workload != "Deployment/istio-system/istio-ingressgateway" || ws[1].Workload != "Deployment/kubeflow-user-example-com/notebook" {
		t.Errorf("WithoutGateways changed its input: %+v", ws)
	}
}

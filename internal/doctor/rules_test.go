package doctor

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// judge checks the manifests of docs (YAML documents) under s.
func judge(t *testing.T, s setting, docs ...string) (*File, *Report) {
	t.Helper()
	return checkWith(t, options(t, s), docs...)
}

// checkWith checks docs, as one file in.yaml, with o.
func checkWith(t *testing.T, o WorkloadOptions, docs ...string) (*File, *Report) {
	t.Helper()
	f, err := parseFile("in.yaml", []byte(strings.Join(docs, "---\n")))
	if err != nil {
		t.Fatal(err)
	}
	return f, CheckWorkloads([]*File{f}, o)
}

// A pod whose init container downloads from outside the mesh before a
// regular (not native) istio-proxy has started: it fails wherever Istio
// injects it.
const failingPod = `apiVersion: v1
kind: Pod
metadata:
  name: fetch
  namespace: team-a
  annotations:
    sidecar.istio.io/nativeSidecar: "false"
spec:
  initContainers:
  - name: get
    image: curlimages/curl:8.8.0
    args: ["-fsSL", "https://raw.githubusercontent.com/kubeflow/manifests/master/README.md"]
  containers:
  - name: app
    image: registry.example.com/app:1
`

func namespace(labels string) string {
	return "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n  labels:\n" + labels
}

// Pods that Istio does not inject have no sidecar findings: namespaces
// labelled against injection, for another revision or for ambient mode, and
// pods that opt out.
func TestInjectionScope(t *testing.T) {
	failing := []string{"Pod/team-a/fetch KF001 error get"}
	cases := map[string]struct {
		docs []string
		want []string
	}{
		"namespace unknown":                {[]string{failingPod}, failing},
		"namespace injected":               {[]string{namespace("    istio-injection: enabled\n"), failingPod}, failing},
		"namespace default revision":       {[]string{namespace("    istio.io/rev: default\n"), failingPod}, failing},
		"namespace not injected":           {[]string{namespace("    istio-injection: disabled\n"), failingPod}, nil},
		"namespace of another revision":    {[]string{namespace("    istio.io/rev: canary\n"), failingPod}, nil},
		"ambient namespace":                {[]string{namespace("    istio.io/dataplane-mode: ambient\n"), failingPod}, nil},
		"namespace without injection":      {[]string{namespace("    team: a\n"), failingPod}, nil},
		"pod opts out with a label":        {[]string{strings.Replace(failingPod, "  annotations:", "  labels:\n    sidecar.istio.io/inject: \"false\"\n  annotations:", 1)}, nil},
		"pod opts out with an annotation":  {[]string{strings.Replace(failingPod, "  annotations:", "  annotations:\n    sidecar.istio.io/inject: \"false\"", 1)}, nil},
		"pod opts in, namespace unlabeled": {[]string{namespace("    team: a\n"), strings.Replace(failingPod, "  annotations:", "  labels:\n    sidecar.istio.io/inject: \"true\"\n  annotations:", 1)}, failing},
		"host network":                     {[]string{strings.Replace(failingPod, "spec:\n", "spec:\n  hostNetwork: true\n", 1)}, nil},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, r := judge(t, overlay("oauth2-proxy"), c.docs...)
			wantFindings(t, r, c.want)
		})
	}
}

// The namespace labels an overlay applies to Kubeflow's namespaces count:
// with the ambient overlays, pods in kubeflow run without a sidecar.
func TestOverlayNamespaceLabels(t *testing.T) {
	pod := strings.ReplaceAll(failingPod, "namespace: team-a", "namespace: kubeflow")
	want := map[string][]string{
		"oauth2-proxy": {"Pod/kubeflow/fetch KF001 error get"},
		"ambient":      nil,
	}
	for name, w := range want {
		t.Run(name, func(t *testing.T) {
			_, r := judge(t, overlay(name), pod)
			wantFindings(t, r, w)
		})
	}
}

const isvc = `apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: model
  namespace: team-a
spec:
  predictor:
    model:
      modelFormat:
        name: sklearn
      storageUri: STORAGE
`

// The storage initializer runs for every storageUri scheme that KServe
// downloads through the pod's network, and for custom containers with a
// STORAGE_URI variable; not for volumes and model images.
func TestKServeStorage(t *testing.T) {
	si := []string{"InferenceService/team-a/model KF003 info predictor/storage-initializer"}
	for uri, want := range map[string][]string{
		"gs://kfserving-examples/models/sklearn/1.0/model": si,
		"s3://bucket/model":                               si,
		"hdfs://namenode.example.com:8020/models/m":       si,
		"webhdfs://namenode.example.com/models/m":         si,
		"hf://meta-llama/Llama-3.1-8B":                    si,
		"modelscope://qwen/Qwen2-7B":                      si,
		"https://models.example.com/sklearn/model.joblib": si,
		"oci+fetch://ghcr.io/org/model:v1":                si,
		"pvc://models/sklearn":                            nil,
		"oci://ghcr.io/org/model:v1":                      nil,
		"oci+native://ghcr.io/org/model:v1":               nil,
		"file:///mnt/models":                              nil,
	} {
		t.Run(uri, func(t *testing.T) {
			_, r := judge(t, overlay("oauth2-proxy"), strings.Replace(isvc, "STORAGE", uri, 1))
			wantFindings(t, r, want)
		})
	}
	custom := `apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: custom
  namespace: team-a
spec:
  predictor:
    containers:
    - name: kserve-container
      image: registry.example.com/server:1
      env:
      - name: STORAGE_URI
        value: gs://kfserving-examples/models/torchserve/bert
  transformer:
    containers:
    - name: kserve-container
      image: registry.example.com/transformer:1
`
	_, r := judge(t, overlay("oauth2-proxy"), custom)
	wantFindings(t, r, []string{"InferenceService/team-a/custom KF003 info predictor/storage-initializer"})
}

// The predictor's own annotations reach its pod: opting out of injection,
// or bypassing the sidecar, there silences the findings.
func TestKServeAnnotations(t *testing.T) {
	blocked := strings.Replace(isvc, "STORAGE", "gs://kfserving-examples/models/sklearn/1.0/model", 1)
	registryOnly, err := os.ReadFile("testdata/settings/registry-only.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, r := judge(t, overlay("oauth2-proxy"), string(registryOnly), blocked)
	wantFindings(t, r, []string{"InferenceService/team-a/model KF003 error predictor/storage-initializer"})
	for name, annotations := range map[string]string{
		"no injection":        `sidecar.istio.io/inject: "false"`,
		"bypass":              `traffic.sidecar.istio.io/excludeOutboundIPRanges: "0.0.0.0/0"`,
		"storage as UID 1337": `serving.kserve.io/storage-initializer-uid: "1337"`,
	} {
		t.Run(name, func(t *testing.T) {
			doc := strings.Replace(blocked, "  predictor:\n", "  predictor:\n    annotations:\n      "+annotations+"\n", 1)
			_, r := judge(t, overlay("oauth2-proxy"), string(registryOnly), doc)
			wantFindings(t, r, nil)
		})
	}
}

// Without native sidecars, KServe runs the storage initializer as the
// proxy's UID under Istio CNI, so only istio-init (no CNI) leaves it stuck.
func TestKServeWithoutNativeSidecars(t *testing.T) {
	doc := strings.Replace(isvc, "STORAGE", "gs://kfserving-examples/models/sklearn/1.0/model", 1)
	_, r := judge(t, setting{overlay: "oauth2-proxy", native: ptr(false)}, doc)
	wantFindings(t, r, nil)
	_, r = judge(t, setting{overlay: "insecure", native: ptr(false)}, doc)
	wantFindings(t, r, []string{"InferenceService/team-a/model KF001 error predictor/storage-initializer"})
	if !r.Findings[0].Fixable() || !strings.Contains(r.Findings[0].Fix, "excludeOutboundIPRanges") {
		t.Errorf("an InferenceService's fix is its annotation: %+v", r.Findings[0])
	}
}

// The S3 endpoint of the component's ServiceAccount decides where the
// download goes; one in the cluster is served by the sidecar.
func TestKServeS3Endpoint(t *testing.T) {
	doc := strings.Replace(isvc, "STORAGE", "s3://models/iris", 1)
	doc = strings.Replace(doc, "  predictor:\n", "  predictor:\n    serviceAccountName: s3\n", 1)
	account := func(endpoint string) string {
		return `apiVersion: v1
kind: Secret
metadata:
  name: s3-creds
  namespace: team-a
  annotations:
    serving.kserve.io/s3-endpoint: ` + endpoint + `
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: s3
  namespace: team-a
secrets:
- name: s3-creds
`
	}
	_, r := judge(t, overlay("oauth2-proxy"), account("minio-service.kubeflow:9000"), doc)
	wantFindings(t, r, nil)
	_, r = judge(t, overlay("oauth2-proxy"), account("s3.us-east-2.amazonaws.com"), doc)
	wantFindings(t, r, []string{"InferenceService/team-a/model KF003 info predictor/storage-initializer"})
	if !strings.Contains(r.Findings[0].Reason, "s3.us-east-2.amazonaws.com") {
		t.Errorf("reason: %s", r.Findings[0].Reason)
	}
	// KServe's cluster-wide default endpoint, when no Secret names one.
	config := `apiVersion: v1
kind: ConfigMap
metadata:
  name: inferenceservice-config
  namespace: kubeflow
data:
  credentials: |-
    {"s3": {"s3Endpoint": "seaweedfs.kubeflow:8333", "s3UseHttps": "0"}}
`
	_, r = judge(t, overlay("oauth2-proxy"), config, doc)
	wantFindings(t, r, nil)
}

// A pod init container that reaches out with a native sidecar: the mesh's
// rules decide the severity.
const egressPod = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: docs
  namespace: team-a
spec:
  selector:
    matchLabels: {app: docs}
  template:
    metadata:
      labels: {app: docs}
    spec:
      initContainers:
      - name: clone
        image: alpine/git:2.45.2
        args: ["clone", "HOST", "/src"]
      containers:
      - name: web
        image: nginx:1.27
`

func TestTrafficRules(t *testing.T) {
	external := strings.Replace(egressPod, "HOST", "https://github.com/kubeflow/website", 1)
	internal := strings.Replace(egressPod, "HOST", "http://gitea-http.git.svc.cluster.local:3000/team/site", 1)
	meshRegistryOnly := `apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |-
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
`
	entry := func(ns, exportTo string) string {
		return `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: github
  namespace: ` + ns + `
spec:
  hosts: ["github.com"]
  exportTo: ["` + exportTo + `"]
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
`
	}
	nsOnly := `apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: team-a
spec:
  egress:
  - hosts: ["./*", "istio-system/*"]
`
	strict := func(ns, mode string) string {
		return "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: " + ns + "\nspec:\n  mtls:\n    mode: " + mode + "\n"
	}
	key := "Deployment/team-a/docs KF002 "
	cases := map[string]struct {
		docs []string
		want []string
	}{
		"public host, any outbound":              {[]string{external}, []string{key + "info clone"}},
		"public host, mesh REGISTRY_ONLY":        {[]string{meshRegistryOnly, external}, []string{key + "error clone"}},
		"public host known by a ServiceEntry":    {[]string{meshRegistryOnly, entry("istio-system", "*"), external}, nil},
		"ServiceEntry exported elsewhere":        {[]string{meshRegistryOnly, entry("istio-system", "."), external}, []string{key + "error clone"}},
		"in-cluster host":                        {[]string{internal}, nil},
		"in-cluster host outside the Sidecar":    {[]string{nsOnly, internal}, []string{key + "info clone"}},
		"... which requires mTLS":                {[]string{nsOnly, strict("git", "STRICT"), internal}, []string{key + "error clone"}},
		"... mesh-wide STRICT":                   {[]string{nsOnly, strict("istio-system", "STRICT"), internal}, []string{key + "error clone"}},
		"... namespace PERMISSIVE over the mesh": {[]string{nsOnly, strict("istio-system", "STRICT"), strict("git", "PERMISSIVE"), internal}, []string{key + "info clone"}},
		"... REGISTRY_ONLY":                      {[]string{meshRegistryOnly, nsOnly, internal}, []string{key + "error clone"}},
		"a Sidecar of the workload wins":         {[]string{nsOnly, strings.NewReplacer("name: default", "name: docs", "spec:\n", "spec:\n  workloadSelector:\n    labels: {app: docs}\n", `"istio-system/*"]`, `"istio-system/*", "git/*"]`).Replace(nsOnly), strict("git", "STRICT"), internal}, nil},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, r := judge(t, overlay("oauth2-proxy"), c.docs...)
			wantFindings(t, r, c.want)
		})
	}
	// A container as the proxy's UID reaches a STRICT namespace as plain
	// text: refused.
	asProxy := strings.Replace(internal, "      - name: clone\n", "      - name: clone\n        securityContext: {runAsUser: 1337}\n", 1)
	_, r := judge(t, overlay("oauth2-proxy"), asProxy)
	wantFindings(t, r, []string{"Deployment/team-a/docs KF004 info clone"})
	_, r = judge(t, overlay("oauth2-proxy"), strict("git", "STRICT"), asProxy)
	wantFindings(t, r, []string{"Deployment/team-a/docs KF004 error clone"})

	// The opt-in egress component leaves public hosts to the passthrough
	// cluster, as it documents.
	_, r = judge(t, setting{overlay: "oauth2-proxy", components: []string{"sidecar-egress"}}, external)
	wantFindings(t, r, []string{key + "info clone"})
	_, r = judge(t, setting{overlay: "oauth2-proxy", components: []string{"sidecar-egress"}}, internal)
	wantFindings(t, r, []string{key + "info clone"})
}

// Traffic that the pod's annotations keep away from the sidecar is no
// finding, even before a regular proxy has started.
func TestTrafficAnnotations(t *testing.T) {
	for annotation, want := range map[string][]string{
		"": {"Pod/team-a/fetch KF001 error get"},
		`sidecar.istio.io/interceptionMode: NONE`:                          nil,
		`traffic.sidecar.istio.io/excludeOutboundIPRanges: "0.0.0.0/0"`:    nil,
		`traffic.sidecar.istio.io/excludeOutboundIPRanges: "10.0.0.0/8"`:   {"Pod/team-a/fetch KF001 error get"},
		`traffic.sidecar.istio.io/includeOutboundIPRanges: ""`:             nil,
		`traffic.sidecar.istio.io/includeOutboundIPRanges: "10.96.0.0/12"`: nil,
		`traffic.sidecar.istio.io/includeOutboundIPRanges: "*"`:            {"Pod/team-a/fetch KF001 error get"},
	} {
		t.Run(annotation, func(t *testing.T) {
			doc := failingPod
			if annotation != "" {
				doc = strings.Replace(failingPod, "  annotations:\n", "  annotations:\n    "+annotation+"\n", 1)
			}
			_, r := judge(t, overlay("oauth2-proxy"), doc)
			wantFindings(t, r, want)
		})
	}
}

// Pods as kubectl get prints them (a List, already injected) are judged as
// they are: Istio's containers are never findings nor fixed, and a fix goes
// to the user's container at its place in the document.
func TestAlreadyInjected(t *testing.T) {
	list := `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: regular-proxy
    namespace: team-a
    annotations:
      sidecar.istio.io/status: '{"initContainers":["istio-init"],"containers":["istio-proxy"]}'
  spec:
    initContainers:
    - name: istio-init
      image: gcr.io/istio-release/proxyv2:1.29.1
      args: ["istio-iptables", "-p", "15001", "-u", "1337", "-m", "REDIRECT"]
      securityContext:
        runAsUser: 0
        capabilities:
          add: ["NET_ADMIN", "NET_RAW"]
    - name: get
      image: curlimages/curl:8.8.0
      args: ["https://github.com/kubeflow/manifests/archive/refs/heads/master.tar.gz"]
    containers:
    - name: app
      image: registry.example.com/app:1
    - name: istio-proxy
      image: gcr.io/istio-release/proxyv2:1.29.1
      securityContext:
        runAsUser: 1337
- apiVersion: v1
  kind: Pod
  metadata:
    name: native-proxy
    namespace: team-a
    annotations:
      sidecar.istio.io/status: '{"initContainers":["istio-validation","istio-proxy"]}'
  spec:
    initContainers:
    - name: istio-validation
      image: gcr.io/istio-release/proxyv2:1.29.1
      securityContext:
        runAsUser: 1337
    - name: istio-proxy
      image: gcr.io/istio-release/proxyv2:1.29.1
      restartPolicy: Always
      securityContext:
        runAsUser: 1337
    - name: get
      image: curlimages/curl:8.8.0
      args: ["https://github.com/kubeflow/manifests/archive/refs/heads/master.tar.gz"]
    containers:
    - name: app
      image: registry.example.com/app:1
`
	f, r := judge(t, overlay("oauth2-proxy"), list)
	wantFindings(t, r, []string{
		"Pod/team-a/native-proxy KF002 info get",
		"Pod/team-a/regular-proxy KF001 error get",
	})
	if len(f.Docs) != 2 || f.Docs[0].Source != "in.yaml, document 1, item 1" {
		t.Fatalf("List items: %d, %s", len(f.Docs), f.Docs[0].Source)
	}
	fixed := r.Fix([]*File{f}, Error)[f]
	again, err := parseFile("in.yaml", fixed)
	if err != nil {
		t.Fatal(err)
	}
	spec := again.Docs[0].Object.Object["spec"].(map[string]any)
	inits := spec["initContainers"].([]any)
	uid := func(c any) any {
		sc, _ := c.(map[string]any)["securityContext"].(map[string]any)
		return sc["runAsUser"]
	}
	if uid(inits[0]) != int64(0) || uid(inits[1]) != int64(1337) {
		t.Errorf("istio-init runs as %v, get as %v; want 0 and 1337:\n%s", uid(inits[0]), uid(inits[1]), fixed)
	}
}

// UID 1337 is never the fix for a container that needs root or
// capabilities.
func TestNoProxyUIDForRoot(t *testing.T) {
	for name, sc := range map[string]string{
		"privileged":          "        securityContext:\n          privileged: true\n",
		"NET_ADMIN":           "        securityContext:\n          capabilities:\n            add: [NET_ADMIN]\n",
		"SYS_ADMIN":           "        securityContext:\n          capabilities:\n            add: [\"SYS_ADMIN\"]\n",
		"root":                "        securityContext:\n          runAsUser: 0\n",
		"root for every one":  "",
		"an unprivileged one": "        securityContext:\n          runAsUser: 1000\n",
	} {
		t.Run(name, func(t *testing.T) {
			doc := `apiVersion: apps/v1
kind: Deployment
metadata:
  name: es
  namespace: team-a
spec:
  template:
    metadata:
      annotations:
        sidecar.istio.io/nativeSidecar: "false"
    spec:
      initContainers:
      - name: init-sysctl
        image: busybox:1.36
        command: ["sh", "-c", "sysctl -w vm.max_map_count=262144 && wget -q https://example.com/plugins.zip"]
` + sc + `      containers:
      - name: es
        image: elasticsearch:8.15.0
`
			if name == "root for every one" {
				doc = strings.Replace(doc, "    spec:\n", "    spec:\n      securityContext:\n        runAsUser: 0\n", 1)
			}
			_, r := judge(t, overlay("oauth2-proxy"), doc)
			wantFindings(t, r, []string{"Deployment/team-a/es KF001 error init-sysctl"})
			f := r.Findings[0]
			if name == "an unprivileged one" {
				if !f.Fixable() {
					t.Errorf("no fix: %s", f.Fix)
				}
				return
			}
			if f.Fixable() || !strings.HasPrefix(f.Fix, "by hand:") || !strings.Contains(f.Fix, excludeOutboundAnnotation) {
				t.Errorf("fix for a container that needs root: %s", f.Fix)
			}
		})
	}
}

// Fixes keep the file's line endings and make valid YAML and JSON; fixing
// twice changes nothing more; values that anchors share are not edited.
func TestFixShapes(t *testing.T) {
	o := options(t, overlay("oauth2-proxy"))
	fixOnce := func(t *testing.T, name string, data []byte) ([]byte, *Report) {
		t.Helper()
		f, err := parseFile(name, data)
		if err != nil {
			t.Fatal(err)
		}
		r := CheckWorkloads([]*File{f}, o)
		out := r.Fix([]*File{f}, Info)[f]
		if _, err := parseFile(name, out); err != nil {
			t.Fatalf("fixed %s does not parse: %v\n%s", name, err, out)
		}
		return out, r
	}
	src, err := os.ReadFile(filepath.Join(fixtures, "init-before-proxy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("CRLF", func(t *testing.T) {
		out, _ := fixOnce(t, "crlf.yaml", crlf(src))
		if bytes.Count(out, []byte("\n")) != bytes.Count(out, []byte("\r\n")) || bytes.Equal(out, crlf(src)) {
			t.Errorf("mixed line endings or no fix:\n%q", out)
		}
		if again, _ := fixOnce(t, "crlf.yaml", out); !bytes.Equal(again, out) {
			t.Errorf("second fix changed the file:\n%q", again)
		}
	})
	t.Run("JSON", func(t *testing.T) {
		in := []byte(`{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a", "annotations": {"sidecar.istio.io/nativeSidecar": "false"}},
 "spec": {"initContainers": [{"name": "get", "image": "curlimages/curl", "args": ["https://example.com/x"]}, {"name": "sc", "image": "curl", "args": ["https://example.com/y"], "securityContext": {}}],
  "containers": [{"name": "app", "image": "app"}]}}
`)
		out, r := fixOnce(t, "pod.json", in)
		if !json.Valid(out) {
			t.Errorf("fixed JSON is not JSON:\n%s", out)
		}
		for _, f := range r.Findings {
			if !f.Fixed {
				t.Errorf("not fixed: %s %s", f.Container, f.NotFixed)
			}
		}
	})
	t.Run("anchors", func(t *testing.T) {
		in := []byte(`apiVersion: v1
kind: Pod
metadata:
  name: p
  namespace: team-a
  annotations: {sidecar.istio.io/nativeSidecar: "false"}
spec:
  initContainers:
  - name: get
    image: curl
    args: ["https://example.com/x"]
    securityContext: &shared
      runAsNonRoot: true
  containers:
  - name: app
    image: app
    securityContext: *shared
`)
		out, r := fixOnce(t, "anchors.yaml", in)
		if !bytes.Equal(out, in) || r.Findings[0].Fixed || !strings.Contains(r.Findings[0].NotFixed, "by hand") {
			t.Errorf("an edit of a shared value: fixed %v (%s)\n%s", r.Findings[0].Fixed, r.Findings[0].NotFixed, out)
		}
	})
	t.Run("only at or above the severity", func(t *testing.T) {
		f, err := parseFile("egress.yaml", []byte(strings.Replace(egressPod, "HOST", "https://github.com/kubeflow/website", 1)))
		if err != nil {
			t.Fatal(err)
		}
		r := CheckWorkloads([]*File{f}, o)
		if out := r.Fix([]*File{f}, Warning)[f]; !bytes.Equal(out, f.Data) || r.Findings[0].Fixed {
			t.Errorf("an info finding was fixed at --fail-on warning:\n%s", out)
		}
	})
	t.Run("annotation where the predictor has it", func(t *testing.T) {
		doc := strings.Replace(isvc, "STORAGE", "gs://b/m", 1)
		doc = strings.Replace(doc, "  predictor:\n", "  predictor:\n    annotations:\n      traffic.sidecar.istio.io/excludeOutboundIPRanges: \"10.0.0.0/8\"\n", 1)
		out, _ := fixOnce(t, "isvc.yaml", []byte(doc))
		if !strings.Contains(string(out), "      traffic.sidecar.istio.io/excludeOutboundIPRanges: \"0.0.0.0/0\"\n") || strings.Contains(string(out), "10.0.0.0/8") {
			t.Errorf("fix of the predictor's annotation:\n%s", out)
		}
	})
}

// Several files make one stream: separators on lines of their own, final
// newlines where another file follows, each file's line endings.
func TestWriteFixed(t *testing.T) {
	pod := func(name string) string { return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\n" }
	files := []*File{
		{Path: "a.yaml", Data: []byte(strings.TrimSuffix(pod("a"), "\n"))},
		{Path: "b.yaml", Data: crlf([]byte(pod("b")))},
		{Path: "c.yaml", Data: []byte("%YAML 1.1\n---\n" + pod("c"))},
		{Path: "d.yaml", Data: []byte("# comment\n---\n" + pod("d"))},
	}
	var out bytes.Buffer
	if err := WriteFixed(&out, files, nil); err != nil {
		t.Fatal(err)
	}
	want := "# Source: a.yaml\n" + strings.TrimSuffix(pod("a"), "\n") + "\n" +
		"---\r\n# Source: b.yaml\r\n" + string(crlf([]byte(pod("b")))) +
		"...\n# Source: c.yaml\n%YAML 1.1\n---\n" + pod("c") +
		"# Source: d.yaml\n# comment\n---\n" + pod("d")
	if out.String() != want {
		t.Errorf("stream:\n%q\nwant:\n%q", out.String(), want)
	}
	f, err := parseFile("stream.yaml", out.Bytes())
	if err != nil || len(f.Docs) != 4 {
		t.Errorf("stream reads as %v, %v", f, err)
	}
	out.Reset()
	if err := WriteFixed(&out, files[:1], nil); err != nil || out.String() != string(files[0].Data) {
		t.Errorf("one file is written as it is: %q %v", out.String(), err)
	}
}

// Lists are read item by item; files that are not Kubernetes manifests are
// a short note; a directory with one broken file still reads the others.
func TestReadInputs(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("payload.json", `{"instances": [[6.8, 2.8, 4.8, 1.4]], "image": "`+strings.Repeat("A", 70000)+`"}`)
	write("list.yaml", "apiVersion: apps/v1\nkind: DeploymentList\nitems:\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: a}\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: b}\n- just a string\n")
	write("broken.yaml", "kind: [\n")
	write("values.yaml", "replicas: 3\nimage:\n  tag: v1\n")
	files, err := ReadFiles([]string{dir}, nil)
	if err == nil || !strings.Contains(err.Error(), "broken.yaml: document 1") || strings.Count(err.Error(), "\n") > 0 {
		t.Errorf("error: %v", err)
	}
	var notes []string
	docs := 0
	for _, f := range files {
		notes = append(notes, f.Notes...)
		docs += len(f.Docs)
	}
	if docs != 2 || len(notes) != 3 {
		t.Errorf("%d objects, notes %q", docs, notes)
	}
	for _, n := range notes {
		if len(n) > 200 {
			t.Errorf("long note: %.300s", n)
		}
	}
	var out bytes.Buffer
	if err := json.NewEncoder(&out).Encode(CheckWorkloads(nil, options(t, overlay("oauth2-proxy")))); err != nil || !strings.Contains(out.String(), `"findings":[]`) {
		t.Errorf("JSON without findings: %s %v", out.String(), err)
	}
}

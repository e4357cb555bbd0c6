package doctor

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
	sigsyaml "sigs.k8s.io/yaml"
)

// seedShapes are seeds of the fuzz targets: the manifests under dir as they
// are, and rewritten into the shapes users feed doctor: CRLF line endings, no
// final newline, a byte order mark, JSON, flow style, a List of the
// documents; and hand-written anchors, aliases and merge keys.
func seedShapes(t testing.TB, dir string) [][]byte {
	t.Helper()
	var seeds [][]byte
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") && !strings.HasSuffix(p, ".json") {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		seeds = append(seeds, data, crlf(data), bytes.TrimRight(data, "\n"), append([]byte("\ufeff"), data...))
		seeds = append(seeds, reshaped(data)...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return append(seeds, handWritten...)
}

func crlf(data []byte) []byte { return bytes.ReplaceAll(data, []byte("\n"), []byte("\r\n")) }

// reshaped is data as JSON documents, in flow style, and as a List.
func reshaped(data []byte) [][]byte {
	f, err := parseFile("seed", data)
	if err != nil || len(f.Docs) == 0 {
		return nil
	}
	var js, flow, list bytes.Buffer
	list.WriteString("apiVersion: v1\nkind: List\nitems:\n")
	for _, d := range f.Docs {
		j, err := d.Object.MarshalJSON()
		if err != nil {
			return nil
		}
		js.Write(j)
		js.WriteString("\n")
		n := *d.node
		setFlow(&n)
		b, err := yaml.Marshal(&n)
		if err != nil {
			return nil
		}
		flow.WriteString("---\n")
		flow.Write(b)
		y, err := sigsyaml.JSONToYAML(j)
		if err != nil {
			return nil
		}
		for i, l := range strings.Split(strings.TrimRight(string(y), "\n"), "\n") {
			prefix := "  "
			if i == 0 {
				prefix = "- "
			}
			list.WriteString(prefix + l + "\n")
		}
	}
	return [][]byte{js.Bytes(), flow.Bytes(), list.Bytes()}
}

func setFlow(n *yaml.Node) {
	if n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode {
		n.Style = yaml.FlowStyle
	}
	for _, c := range n.Content {
		setFlow(c)
	}
}

var handWritten = [][]byte{
	[]byte(`apiVersion: apps/v1
kind: Deployment
metadata: {name: anchors, namespace: team-a}
spec:
  template:
    spec:
      initContainers:
      - &fetch
        name: fetch
        image: curlimages/curl
        args: ["https://example.com/data"]
        securityContext: &sc {runAsNonRoot: true}
      - <<: *fetch
        name: fetch-again
      containers:
      - name: app
        image: app
        securityContext: *sc
`),
	[]byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{"sidecar.istio.io/nativeSidecar":"false"}},"spec":{"initContainers":[{"name":"get","image":"curlimages/curl","args":["https://example.com"]}],"containers":[{"name":"app","image":"app"}]}}`),
	[]byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: ünïcode # ✓\n  annotations: {sidecar.istio.io/nativeSidecar: \"false\"}\nspec:\n  initContainers:\n  - {name: 'é', image: \"git\", args: [\"git clone https://github.com/x/y\"]}\n  containers: [{name: app, image: app}]\n"),
	[]byte("%YAML 1.1\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: directive\nspec:\n  securityContext:\n  initContainers:\n  - name: get\n    image: curl\n    securityContext: null\n    args: [\"https://example.com\"]\n  containers:\n  - name: app\n    image: app\n...\n"),
	[]byte("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: a\n  annotations:\n    sidecar.istio.io/nativeSidecar: \"false\"\n    traffic.sidecar.istio.io/excludeOutboundIPRanges: '10.0.0.0/8'\nspec:\n  predictor:\n    annotations:\n      traffic.sidecar.istio.io/excludeOutboundIPRanges: \"\"\n    sklearn: {storageUri: \"s3://b/m\"}\n"),
}

// FuzzReadFiles feeds the manifest reader arbitrary bytes: it never panics,
// what it reads are Kubernetes objects (with apiVersion and kind) at mapping
// nodes, and its errors and notes stay short. Its seeds are the shapes of the
// workload fixtures and the public manifests of the corpus.
func FuzzReadFiles(f *testing.F) {
	seeds := seedShapes(f, fixtures)
	err := filepath.WalkDir("testdata/corpus", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(p) == ".md" {
			return err
		}
		data, err := os.ReadFile(p)
		seeds = append(seeds, data)
		return err
	})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := parseFile("fuzz.yaml", data)
		if err != nil {
			if len(err.Error()) > 2*maxMessage {
				t.Errorf("error of %d bytes: %.200s", len(err.Error()), err)
			}
			return
		}
		for _, d := range file.Docs {
			if d.Object.GetKind() == "" || d.Object.GetAPIVersion() == "" || d.node.Kind != yaml.MappingNode {
				t.Errorf("%s: not a Kubernetes object: %v", d.Source, d.Object.Object)
			}
			if !strings.HasPrefix(d.Source, "fuzz.yaml, document ") {
				t.Errorf("source %q", d.Source)
			}
		}
		for _, n := range file.Notes {
			if len(n) > 2*maxMessage {
				t.Errorf("note of %d bytes: %.200s", len(n), n)
			}
		}
	})
}

// FuzzFix checks, on arbitrary manifests cut into two files and under
// native and regular sidecars, that the fixed stream parses with every
// object in it, that fixing the fixed files again changes nothing, and that
// a second look has none of the fixed findings. Its seeds are the shapes of
// the workload fixtures, whose findings have fixes, and of corpus manifests
// with init containers, Lists and injected pods.
func FuzzFix(f *testing.F) {
	seeds := seedShapes(f, fixtures)
	for _, name := range []string{"kserve/sklearn.yaml", "k8s-examples/elasticsearch-rc.yaml", "istio/list.yaml", "istio/multi-init.injected.yaml", "kubeflow/metadata-grpc-tls-patch.yaml"} {
		data, err := os.ReadFile(filepath.Join("testdata/corpus", name))
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, data)
	}
	for _, s := range seeds {
		f.Add(s, uint16(0))
		// Cut at a document separator, the first file with its final
		// newline and without.
		if i := bytes.Index(s, []byte("\n---")); i > 0 {
			f.Add(s, uint16(i+1)|1<<15)
			f.Add(s, uint16(i))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		s := setting{overlay: "oauth2-proxy"}
		if cut&(1<<15) != 0 {
			s.native = ptr(false)
		}
		k := int(cut&^(1<<15)) % (len(data) + 1)
		parts := [][]byte{data[:k], data[k:]}
		if k == 0 {
			parts = parts[1:]
		}
		var files []*File
		for i, p := range parts {
			file, err := parseFile(filepath.Join("in", string(rune('a'+i))+".yaml"), p)
			if err != nil {
				return
			}
			files = append(files, file)
		}
		o := options(t, s)
		r := CheckWorkloads(files, o)
		fixed := r.Fix(files, Info)
		var out bytes.Buffer
		if err := WriteFixed(&out, files, fixed); err != nil {
			t.Fatal(err)
		}
		stream, err := parseFile("out.yaml", out.Bytes())
		if err != nil {
			t.Fatalf("the fixed stream does not parse: %v\n%s", err, out.Bytes())
		}
		want := 0
		var again []*File
		for _, file := range files {
			want += len(file.Docs)
			a, err := parseFile(file.Path, fixed[file])
			if err != nil {
				t.Fatalf("fixed %s does not parse: %v\n%s", file.Path, err, fixed[file])
			}
			again = append(again, a)
		}
		if len(stream.Docs) != want {
			t.Fatalf("the fixed stream has %d objects, the input %d:\n%s", len(stream.Docs), want, out.Bytes())
		}
		r2 := CheckWorkloads(again, o)
		fixed2 := r2.Fix(again, Info)
		for i, a := range again {
			if !bytes.Equal(fixed2[a], fixed[files[i]]) {
				t.Fatalf("fixing %s twice changed it again:\n%s\n---- then ----\n%s", a.Path, fixed[files[i]], fixed2[a])
			}
		}
		for _, fd := range r.Findings {
			if !fd.Fixed {
				continue
			}
			if slices.ContainsFunc(r2.Findings, func(g Finding) bool {
				return g.ID == fd.ID && g.Object == fd.Object && g.Container == fd.Container && g.Source == fd.Source
			}) {
				t.Fatalf("fixed %s %s %s is found again in:\n%s", fd.ID, fd.Object, fd.Container, fixed[files[0]])
			}
		}
	})
}

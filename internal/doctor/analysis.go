package doctor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-multierror"
	"istio.io/istio/pilot/pkg/config/file"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/analysis/diag"
	kubesource "istio.io/istio/pkg/config/analysis/legacy/source/kube"
	"istio.io/istio/pkg/config/analysis/legacy/util/kuberesource"
	analysislocal "istio.io/istio/pkg/config/analysis/local"
	"istio.io/istio/pkg/config/analysis/msg"
	"istio.io/istio/pkg/config/schema/collection"
	"istio.io/istio/pkg/config/schema/collections"
	istiokube "istio.io/istio/pkg/kube"
	istioinject "istio.io/istio/pkg/kube/inject"
	_ "istio.io/istio/pkg/kube/kclient" // sets the CRD watcher of Istio's clients
	istiolog "istio.io/istio/pkg/log"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// Suppression hides the findings of one Istio analyzer code on the
// resources whose name, as Istio prints it ("Kind namespace/name"), matches a
// glob: istioctl analyze's --suppress.
type Suppression struct {
	Code     string `json:"code"`
	Resource string `json:"resource"`
}

// ParseSuppressions reads --suppress values, CODE=Kind namespace/name. A
// value without "=", or with an empty code or resource, is an error; a code
// that no analyzer of this release reports is a note, since the suppression
// then hides nothing.
func ParseSuppressions(values []string) ([]Suppression, []string, error) {
	var out []Suppression
	var notes []string
	for _, v := range values {
		code, res, ok := strings.Cut(v, "=")
		code, res = strings.TrimSpace(code), strings.TrimSpace(res)
		if !ok || code == "" || res == "" {
			return nil, nil, fmt.Errorf(`--suppress %q: want CODE=RESOURCE, as in "IST0102=Namespace team-a" or "IST0101=VirtualService kubeflow/*"`, v)
		}
		if !knownCode(code) {
			notes = append(notes, fmt.Sprintf("--suppress %s: no analyzer of Istio %s reports code %s, so it hides nothing", v, upstream.Release, code))
		}
		out = append(out, Suppression{Code: code, Resource: res})
	}
	return out, notes, nil
}

func knownCode(code string) bool {
	return slices.ContainsFunc(msg.All(), func(t *diag.MessageType) bool { return t.Code() == code })
}

// Analysis runs Istio's configuration analyzers, the ones istioctl analyze
// runs, over manifests together with the objects of an installation, which
// are read once.
type Analysis struct {
	// schemas are the kinds the analyzers read from files (istioctl analyze
	// reads no Services, Pods, Namespaces, Nodes or Secrets from files).
	schemas collection.Schemas
	// installation holds the objects of the installation of those kinds.
	installation *file.KubeSource
	// mesh is the installation's mesh config (the data of ConfigMap
	// istio-system/istio), "" for Istio's defaults.
	mesh string
	// Suppressions hide findings, as istioctl analyze --suppress does.
	Suppressions []Suppression
}

// installationSource names the installation's objects in findings.
const installationSource = "installation"

// NewAnalysis prepares the analyzers for manifests that will run under the
// installation built as objs.
func NewAnalysis(objs []*unstructured.Unstructured) (*Analysis, error) {
	quietIstioLogs()
	a := &Analysis{schemas: fileSchemas()}
	var read []*unstructured.Unstructured
	for _, o := range objs {
		if isMeshConfig(o) {
			a.mesh, _, _ = unstructured.NestedString(o.Object, "data", "mesh")
		}
		if _, ok := a.schemas.FindByGroupVersionAliasesKind(gvkOf(o)); ok {
			read = append(read, withoutSchemas(o))
		}
	}
	y, err := object.Marshal(read)
	if err != nil {
		return nil, err
	}
	a.installation = newKubeSource(a.schemas)
	if err := a.installation.ApplyContent(installationSource, string(y)); err != nil {
		return nil, fmt.Errorf("read the installation for Istio's analyzers: %w", err)
	}
	return a, nil
}

// withoutSchemas is o, or a CustomResourceDefinition without the schemas
// of its versions: the analyzers read its group and kind only, and parsing
// the schemas of Istio's CRDs would be most of their work.
func withoutSchemas(o *unstructured.Unstructured) *unstructured.Unstructured {
	if o.GetKind() != "CustomResourceDefinition" {
		return o
	}
	c := o.DeepCopy()
	versions, _, _ := unstructured.NestedSlice(c.Object, "spec", "versions")
	for _, v := range versions {
		if m, ok := v.(map[string]any); ok {
			delete(m, "schema")
		}
	}
	_ = unstructured.SetNestedSlice(c.Object, versions, "spec", "versions")
	return c
}

// fileSchemas are the kinds istioctl analyze reads from files.
func fileSchemas() collection.Schemas {
	inputs := kuberesource.ConvertInputsToSchemas(combinedAnalyzers().Metadata().Inputs)
	return inputs.Remove(kuberesource.DefaultExcludedSchemas().All()...)
}

// newKubeSource is a store of objects read from YAML, as istioctl analyze
// makes for files: without the objects of the namespaces Istio ignores.
func newKubeSource(schemas collection.Schemas) *file.KubeSource {
	src := file.NewKubeSource(schemas)
	src.SetNamespacesFilter(func(obj any) bool {
		cfg, ok := obj.(config.Config)
		if !ok {
			return false
		}
		ns := cfg.Namespace
		if cfg.GroupVersionKind.Kind == "Namespace" {
			ns = cfg.Name
		}
		return !istioinject.IgnoredNamespaces.Contains(ns)
	})
	return src
}

func gvkOf(o *unstructured.Unstructured) config.GroupVersionKind {
	gv, _ := schema.ParseGroupVersion(o.GetAPIVersion())
	return config.GroupVersionKind{Group: gv.Group, Version: gv.Version, Kind: o.GetKind()}
}

// Files runs the analyzers over files and the installation, as istioctl
// analyze --use-kube=false --all-namespaces does over the same manifests, and
// says what the analyzers could not read.
func (a *Analysis) Files(files []*File) ([]Finding, []string) {
	notes := unknownVersions(files)
	sa := analysislocal.NewIstiodAnalyzer(combinedAnalyzers(), "", inject.Namespace, nil)
	sa.SetSuppressions(suppressions(a.Suppressions))
	if err := a.useMesh(sa); err != nil {
		notes = append(notes, "the installation's mesh config: "+err.Error()+"; Istio's defaults used")
	}
	sa.AddSource(a.installation)
	var readers []analysislocal.ReaderSource
	for _, f := range files {
		if len(f.Docs) == 0 {
			continue // not a manifest: its File says so
		}
		readers = append(readers, analysislocal.ReaderSource{Name: f.Path, Reader: bytes.NewReader(f.Data)})
	}
	if err := sa.AddReaderKubeSource(readers); err != nil {
		for _, e := range unwrapMulti(err) {
			notes = append(notes, "Istio's analyzers could not read "+shorten(e.Error()))
		}
	}
	findings, err := analyze(context.Background(), sa, func(path string, line int) string { return documentAt(files, path, line) })
	if err != nil {
		notes = append(notes, "Istio's analyzers did not run: "+err.Error())
	}
	return findings, notes
}

// documentAt is the source of the document of files at line of path: the
// installation, a document of an input file, or "path, line N".
func documentAt(files []*File, path string, line int) string {
	if path == installationSource {
		return installationSource
	}
	for _, f := range files {
		if f.Path != path {
			continue
		}
		at := ""
		for i, d := range f.Docs {
			if i > 0 && d.node.Line > line {
				break
			}
			at = d.Source // the first document also holds the comments above it
		}
		if at != "" {
			return at
		}
	}
	return fmt.Sprintf("%s, line %d", path, line)
}

// useMesh gives the analyzer the installation's mesh config.
func (a *Analysis) useMesh(sa *analysislocal.IstiodAnalyzer) error {
	if a.mesh == "" {
		return nil
	}
	f, err := os.CreateTemp("", "kfistio-mesh-*.yaml")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(a.mesh); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return sa.AddFileKubeMeshConfig(f.Name())
}

func suppressions(s []Suppression) []analysislocal.AnalysisSuppression {
	var out []analysislocal.AnalysisSuppression
	for _, x := range s {
		out = append(out, analysislocal.AnalysisSuppression{Code: x.Code, ResourceName: x.Resource})
	}
	return out
}

// unknownVersions notes the Istio objects of files whose API version this
// release's analyzers do not know: they are not analyzed.
func unknownVersions(files []*File) []string {
	var notes []string
	for _, f := range files {
		for _, d := range f.Docs {
			gvk := gvkOf(d.Object)
			if !strings.HasSuffix(gvk.Group, ".istio.io") {
				continue
			}
			if _, ok := collections.All.FindByGroupVersionAliasesKind(gvk); ok {
				continue
			}
			known := "no version of this kind"
			if s, ok := collections.All.FindByGroupKind(gvk); ok {
				var versions []string
				for _, g := range s.GroupVersionAliasKinds() {
					versions = append(versions, g.Version)
				}
				slices.Sort(versions)
				known = "versions " + strings.Join(slices.Compact(versions), ", ")
			}
			notes = append(notes, fmt.Sprintf("%s (%s): Istio %s knows %s of %s, not %s; not analyzed",
				object.Key(d.Object), d.Source, upstream.Release, known, gvk.Group+"/"+gvk.Kind, gvk.Version))
		}
	}
	return notes
}

func unwrapMulti(err error) []error {
	var m *multierror.Error
	if errors.As(err, &m) {
		var out []error
		for _, e := range m.Errors {
			out = append(out, unwrapMulti(e)...)
		}
		return out
	}
	return []error{err}
}

// analyzerSync bounds how long the analyzers wait for their informers to
// list the cluster: a kind this user may not list never syncs.
var analyzerSync = 2 * time.Minute

// analyzeCluster runs the analyzers over the live resources of the cluster,
// as istioctl analyze --all-namespaces does, with the pods doctor lists.
// When some of the pods they read could not be listed, or their informers
// have not listed the cluster within analyzerSync, it says so in a note and
// reports nothing of a partial view.
func analyzeCluster(ctx context.Context, c *kube.Client, s []Suppression, pods *podFeed) ([]Finding, []string, error) {
	quietIstioLogs()
	ic, err := istiokube.NewCLIClient(istiokube.NewClientConfigForRestConfig(c.Config))
	if err != nil {
		return nil, nil, fmt.Errorf("connect Istio's analyzers: %w", err)
	}
	defer ic.Shutdown()
	sa := analysislocal.NewIstiodAnalyzer(combinedAnalyzers(), "", inject.Namespace, nil)
	sa.SetSuppressions(suppressions(s))
	sa.AddRunningKubeSourceWithRevision(analysisClient{istiokube.EnableCrdWatcher(ic), inject.Namespace, pods}, "default", false)
	// Where doctor could not list pods they read, they stop at once rather
	// than wait for a LIST that cannot succeed.
	unreadable, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	go func() {
		select {
		case <-pods.refused:
			stop(errPodsDenied)
		case <-unreadable.Done():
		}
	}()
	synced, cancel := context.WithTimeout(unreadable, analyzerSync)
	defer cancel()
	findings, err := analyze(synced, sa, nil)
	switch {
	case ctx.Err() != nil:
	case errors.Is(context.Cause(unreadable), errPodsDenied):
		return nil, []string{fmt.Sprintf("Istio's analyzers did not run: they read the pods of %d namespaces where this user may not list them (named in the note on Pods)", len(pods.unread))}, nil
	case errors.Is(err, context.DeadlineExceeded):
		return nil, []string{fmt.Sprintf("Istio's analyzers did not run: they could not list the cluster within %s (may this user list every kind Istio reads, in every namespace?)", analyzerSync)}, nil
	}
	return findings, nil, err
}

// errPodsDenied stops the analyzers when pods they read could not be
// listed.
var errPodsDenied = errors.New("the pods of some namespaces may not be listed")

// analyze runs the analyzers and turns their messages into findings; locate
// names where a file's resource was read (nil when none come from files).
// The stores it reads run until it returns, or until ctx ends.
func analyze(ctx context.Context, sa *analysislocal.IstiodAnalyzer, locate func(path string, line int) string) ([]Finding, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res, err := sa.Analyze(ctx.Done())
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var out []Finding
	for _, m := range res.Messages {
		out = append(out, findingOf(m, locate))
	}
	return out, nil
}

// findingOf is an analyzer's message as a finding: Istio's code, level,
// message and documentation page; a resource read from a file is located
// with locate, the others were read from the cluster.
func findingOf(m diag.Message, locate func(path string, line int) string) Finding {
	f := Finding{
		ID:       m.Type.Code(),
		Severity: severityOf(m.Type.Level()),
		Reason:   fmt.Sprintf(m.Type.Template(), m.Parameters...),
		Doc:      m.Unstructured(false)["documentationUrl"].(string),
	}
	f.Fix = "Istio's page for " + f.ID + " gives the causes and fixes: " + f.Doc
	if r := m.Resource; r != nil {
		f.Object = object.KeyOf(r.Metadata.Schema.Kind(), string(r.Metadata.FullName.Namespace), string(r.Metadata.FullName.Name))
		f.Source = "cluster"
		if p, ok := r.Origin.Reference().(*kubesource.Position); ok && locate != nil {
			line := p.Line
			if m.Line != 0 {
				line = m.Line
			}
			f.Source = locate(p.Filename, line)
		}
	}
	return f
}

func severityOf(l diag.Level) Severity {
	switch l {
	case diag.Error:
		return Error
	case diag.Warning:
		return Warning
	}
	return Info
}

var quietOnce sync.Once

// quietIstioLogs turns off the logs of Istio's packages: what the analyzers
// could not read comes back as notes.
func quietIstioLogs() {
	quietOnce.Do(func() {
		for _, s := range istiolog.Scopes() {
			s.SetOutputLevel(istiolog.NoneLevel)
		}
	})
}

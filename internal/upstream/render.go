package upstream

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"istio.io/istio/manifests"
	"istio.io/istio/operator/pkg/render"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/kubeflow/kfistio/internal/object"
)

// Inputs are what `istioctl manifest generate -f FILE... --set PATH=VALUE...`
// takes: IstioOperator files, merged in order, then --set flags.
type Inputs struct {
	Files []string
	Set   []string
}

// Renderer renders the pinned release. Istio's module carries its charts with the
// placeholder version 1.0.0, which Istio's release tooling rewrites in release
// artifacts; the Renderer does the same on a private copy of the charts, so the
// chart labels carry Release exactly as istioctl of that release prints them.
type Renderer struct {
	dir string
}

// NewRenderer prepares the chart copy. Call Close when done.
func NewRenderer() (*Renderer, error) {
	dir, err := os.MkdirTemp("", "kfistio-charts-")
	if err != nil {
		return nil, fmt.Errorf("prepare Istio %s charts: %w", Release, err)
	}
	r := &Renderer{dir: dir}
	if err := r.prepare(); err != nil {
		_ = r.Close()
		return nil, fmt.Errorf("prepare Istio %s charts: %w", Release, err)
	}
	return r, nil
}

// Close removes the chart copy.
func (r *Renderer) Close() error { return os.RemoveAll(r.dir) }

// Rendered is the output of one render.
type Rendered struct {
	// Objects in object.Less order.
	Objects []*unstructured.Unstructured
	// Warnings Istio's validation and charts printed.
	Warnings []string
}

// Render runs Istio's manifest generation for in. The image tag is always Release
// and the charts come from the release copy, whatever the input files say.
func (r *Renderer) Render(in Inputs) (*Rendered, error) {
	files := append(append([]string{}, in.Files...), r.pin())
	log := &warnings{}
	sets, _, err := render.GenerateManifest(files, in.Set, false, nil, log)
	if err != nil {
		return nil, fmt.Errorf("render Istio %s from %s: %w", Release, strings.Join(in.Files, ", "), err)
	}
	out := &Rendered{Warnings: log.lines}
	for _, set := range sets {
		for _, m := range set.Manifests {
			out.Objects = append(out.Objects, m.Unstructured)
		}
	}
	object.Sort(out.Objects)
	return out, nil
}

// pin is the IstioOperator fragment that fixes the tag and chart source. It is
// merged after the caller's files, so no input can move them.
func (r *Renderer) pin() string { return filepath.Join(r.dir, "pin.yaml") }

// prepare writes the release charts and the pin file.
func (r *Renderer) prepare() error {
	if err := copyCharts(r.dir); err != nil {
		return err
	}
	iop := map[string]any{
		"apiVersion": "install.istio.io/v1alpha1",
		"kind":       "IstioOperator",
		"spec": map[string]any{
			"tag":                Release,
			"installPackagePath": r.dir,
		},
	}
	b, err := yaml.Marshal(iop)
	if err != nil {
		return err
	}
	return os.WriteFile(r.pin(), b, 0o600)
}

// copyCharts writes Istio's embedded charts and profiles under dir, with the
// release version in every Chart.yaml.
func copyCharts(dir string) error {
	return fs.WalkDir(manifests.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.FromSlash(p))
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := fs.ReadFile(manifests.FS, p)
		if err != nil {
			return err
		}
		if path.Base(p) == "Chart.yaml" {
			if b, err = releaseChart(b); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		return os.WriteFile(target, b, 0o644)
	})
}

// releaseChart sets version and appVersion of a Chart.yaml to Release.
func releaseChart(b []byte) ([]byte, error) {
	m := map[string]any{}
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if _, ok := m["version"]; !ok {
		return nil, errors.New("chart has no version")
	}
	m["version"] = Release
	m["appVersion"] = Release
	return yaml.Marshal(m)
}

// warnings collects what Istio's renderer logs; it satisfies clog.Logger.
type warnings struct{ lines []string }

func (w *warnings) add(s string) { w.lines = append(w.lines, strings.TrimSpace(s)) }

func (w *warnings) LogAndPrint(v ...any)            { w.add(fmt.Sprint(v...)) }
func (w *warnings) LogAndError(v ...any)            { w.add(fmt.Sprint(v...)) }
func (w *warnings) LogAndFatal(v ...any)            { w.add(fmt.Sprint(v...)) }
func (w *warnings) LogAndPrintf(f string, v ...any) { w.add(fmt.Sprintf(f, v...)) }
func (w *warnings) LogAndErrorf(f string, v ...any) { w.add(fmt.Sprintf(f, v...)) }
func (w *warnings) LogAndFatalf(f string, v ...any) { w.add(fmt.Sprintf(f, v...)) }
func (w *warnings) Print(s string)                  { w.add(s) }
func (w *warnings) PrintErr(s string)               { w.add(s) }

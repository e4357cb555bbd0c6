// Command render prints what `istioctl manifest generate` of Istio 1.26.1
// prints for the same inputs, with that release's own renderer
// (istio.io/istio/operator/pkg/render) run in-process:
//
//	render [-f FILE]... [--set PATH=VALUE]...
//
// IstioOperator files are merged in order, then the --set flags. Every
// rendered object goes to stdout as multi-document YAML, sorted by kind (then
// API group), namespace and name, so two runs print the same bytes; the
// renderer's warnings go to stderr.
//
// The charts are the ones embedded in the module, as they are: their chart
// version is the placeholder 1.0.0 (Istio's release tooling rewrites it in
// release artifacts only), so the chart labels say 1.0.0. The image tag is
// what the inputs say, for example --set tag=1.26.1.
package main

import (
	"cmp"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"

	"istio.io/istio/operator/pkg/manifest"
	"istio.io/istio/operator/pkg/render"
	"sigs.k8s.io/yaml"
)

func main() {
	var files, sets list
	flag.Var(&files, "f", "IstioOperator `FILE` (repeatable, merged in order)")
	flag.Var(&sets, "set", "`PATH=VALUE` to set (repeatable)")
	flag.Parse()
	if flag.NArg() > 0 {
		fail(fmt.Errorf("unexpected arguments: %s", strings.Join(flag.Args(), " ")))
	}
	if err := run(files, sets); err != nil {
		fail(err)
	}
}

func run(files, sets []string) error {
	rendered, _, err := render.GenerateManifest(files, sets, false, nil, stderrLogger{})
	if err != nil {
		return err
	}
	var all []manifest.Manifest
	for _, set := range rendered {
		all = append(all, set.Manifests...)
	}
	slices.SortFunc(all, func(a, b manifest.Manifest) int {
		return cmp.Or(
			cmp.Compare(a.GetKind(), b.GetKind()),
			cmp.Compare(a.GroupVersionKind().Group, b.GroupVersionKind().Group),
			cmp.Compare(a.GetNamespace(), b.GetNamespace()),
			cmp.Compare(a.GetName(), b.GetName()))
	})
	var out strings.Builder
	for _, m := range all {
		b, err := yaml.Marshal(m.Object)
		if err != nil {
			return fmt.Errorf("%s/%s/%s: %w", m.GetKind(), m.GetNamespace(), m.GetName(), err)
		}
		out.WriteString("---\n")
		out.Write(b)
	}
	_, err = os.Stdout.WriteString(out.String())
	return err
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "render (Istio 1.26.1):", err)
	os.Exit(1)
}

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

// stderrLogger prints the renderer's messages on stderr; it satisfies
// clog.Logger.
type stderrLogger struct{}

func (stderrLogger) LogAndPrint(v ...any)            { warn(fmt.Sprint(v...)) }
func (stderrLogger) LogAndError(v ...any)            { warn(fmt.Sprint(v...)) }
func (stderrLogger) LogAndFatal(v ...any)            { warn(fmt.Sprint(v...)) }
func (stderrLogger) LogAndPrintf(f string, v ...any) { warn(fmt.Sprintf(f, v...)) }
func (stderrLogger) LogAndErrorf(f string, v ...any) { warn(fmt.Sprintf(f, v...)) }
func (stderrLogger) LogAndFatalf(f string, v ...any) { warn(fmt.Sprintf(f, v...)) }
func (stderrLogger) Print(s string)                  { warn(s) }
func (stderrLogger) PrintErr(s string)               { warn(s) }

func warn(s string) { fmt.Fprintln(os.Stderr, strings.TrimSpace(s)) }

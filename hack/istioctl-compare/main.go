// Command istioctl-compare shows that kfistio's in-process render is what
// `istioctl manifest generate` of the same Istio commit prints for the same
// inputs. It runs every render of `kfistio sync` both ways and compares the
// objects. Run it with hack/compare-istioctl.sh, which builds istioctl from the
// pinned module.
//
// istioctl built from the module carries the charts' placeholder version
// 1.0.0, which Istio's release tooling rewrites to the release in release
// binaries; the comparison applies that rewrite to istioctl's output (chart
// labels only) and nothing else.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/tree"
	"github.com/kubeflow/kfistio/internal/upstream"
)

func main() {
	istioctl := flag.String("istioctl", "_output/bin/istioctl", "istioctl built from "+upstream.ModulePath+" "+upstream.ModuleVersion)
	root := flag.String("root", ".", "repository root")
	flag.Parse()
	if err := compare(*istioctl, *root); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func compare(istioctl, root string) error {
	r, err := upstream.NewRenderer()
	if err != nil {
		return err
	}
	defer func() { _ = r.Close() }()
	failed := 0
	for _, rd := range tree.Renders() {
		in := rd.Inputs(root)
		ours, err := r.Render(in)
		if err != nil {
			return err
		}
		args := []string{"manifest", "generate", "--set", "tag=" + upstream.Release}
		for _, f := range in.Files {
			args = append(args, "-f", f)
		}
		for _, s := range in.Set {
			args = append(args, "--set", s)
		}
		var stderr bytes.Buffer
		cmd := exec.Command(istioctl, args...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("istioctl %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
		}
		theirs, err := object.Parse("istioctl output", out)
		if err != nil {
			return err
		}
		for _, o := range theirs {
			releaseLabels(o)
		}
		diffs := diff(object.Index(ours.Objects), object.Index(theirs))
		fmt.Printf("%s: istioctl %s\n", rd.Name, strings.Join(args, " "))
		if len(diffs) == 0 {
			fmt.Printf("  ✓ %d objects, identical\n", len(ours.Objects))
			continue
		}
		failed++
		for _, d := range diffs {
			fmt.Printf("  ✗ %s\n", d)
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d renders differ from istioctl", failed)
	}
	return nil
}

// releaseLabels applies the release tooling's chart version to the labels of
// o and of its pod template.
func releaseLabels(o *unstructured.Unstructured) {
	fix := func(labels map[string]any) {
		if chart, ok := labels["helm.sh/chart"].(string); ok {
			labels["helm.sh/chart"] = strings.TrimSuffix(chart, "-1.0.0") + "-" + upstream.Release
			if labels["app.kubernetes.io/version"] == "1.0.0" {
				labels["app.kubernetes.io/version"] = upstream.Release
			}
		}
	}
	if l, ok, _ := unstructured.NestedMap(o.Object, "metadata", "labels"); ok {
		fix(l)
		_ = unstructured.SetNestedMap(o.Object, l, "metadata", "labels")
	}
	if path := object.PodTemplatePath(o); path != nil {
		p := append(append([]string{}, path...), "metadata", "labels")
		if l, ok, _ := unstructured.NestedMap(o.Object, p...); ok {
			fix(l)
			_ = unstructured.SetNestedMap(o.Object, l, p...)
		}
	}
}

func diff(ours, theirs map[string]*unstructured.Unstructured) []string {
	var out []string
	for k, o := range ours {
		t, ok := theirs[k]
		switch {
		case !ok:
			out = append(out, k+": only in kfistio's render")
		case !reflect.DeepEqual(asJSON(o), asJSON(t)):
			a, _ := json.Marshal(o.Object)
			b, _ := json.Marshal(t.Object)
			out = append(out, fmt.Sprintf("%s differs:\n    kfistio:  %s\n    istioctl: %s", k, a, b))
		}
	}
	for k := range theirs {
		if _, ok := ours[k]; !ok {
			out = append(out, k+": only in istioctl's output")
		}
	}
	sort.Strings(out)
	return out
}

// asJSON is the object as JSON would decode it, so number types do not
// count as differences.
func asJSON(o *unstructured.Unstructured) any {
	b, _ := json.Marshal(o.Object)
	var v any
	_ = json.Unmarshal(b, &v)
	return v
}

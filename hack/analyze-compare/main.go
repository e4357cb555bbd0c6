// Command analyze-compare shows that the Istio analyzer findings of
// `kfistio doctor -f FILE` (the ids starting with IST) are exactly what
// `istioctl analyze` of the same Istio release reports for FILE together with
// the objects and the mesh config of the default installation, file by file.
// Run it with hack/compare-istioctl.sh, which builds istioctl from the pinned
// module and kfistio from this tree.
//
// The inputs are the manifests under internal/doctor/testdata/corpus,
// internal/doctor/testdata/analysis and internal/doctor/testdata/routing, and
// an empty file, so that the installation alone is compared too. Both sides
// are reduced to lines "CODE Kind/namespace/name: message" and compared as
// multisets; everything else a side prints (doctor's KF findings, notes and
// errors, istioctl's parse errors) is left out.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// inputDirs are the directories, relative to the repository root, whose
// manifests are compared. A directory that does not exist is skipped.
var inputDirs = []string{
	"internal/doctor/testdata/corpus",
	"internal/doctor/testdata/analysis",
	"internal/doctor/testdata/routing",
}

// workers is how many files are compared at once.
const workers = 3

// emptyInput names the run with an empty input file in the results.
const emptyInput = "(empty input)"

func main() {
	istioctl := flag.String("istioctl", "_output/bin/istioctl", "istioctl built from "+upstream.ModulePath+" "+upstream.ModuleVersion)
	kfistio := flag.String("kfistio", "_output/bin/kfistio", "kfistio built from this tree")
	root := flag.String("root", ".", "repository root")
	flag.Parse()
	if err := compare(*istioctl, *kfistio, *root); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

// input is one file to compare: name is what the results call it, path is
// what both commands read.
type input struct {
	name, path string
}

// result is the comparison of one input.
type result struct {
	findings     int      // IST findings, when both sides agree
	onlyDoctor   []string // lines only doctor reports
	onlyIstioctl []string // lines only istioctl reports
	err          error    // a side could not run
}

func compare(istioctl, kfistio, root string) error {
	tmp, err := os.MkdirTemp("", "analyze-compare-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	installation, mesh, err := writeInstallation(tmp)
	if err != nil {
		return err
	}
	empty := filepath.Join(tmp, "empty.yaml")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		return err
	}
	inputs, err := findInputs(root)
	if err != nil {
		return err
	}
	if len(inputs) == 0 {
		return fmt.Errorf("no manifests to compare under %s in %s", strings.Join(inputDirs, ", "), root)
	}
	inputs = append(inputs, input{name: emptyInput, path: empty})

	results := make([]result, len(inputs))
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				results[i] = compareFile(istioctl, kfistio, installation, mesh, inputs[i].path)
			}
		}()
	}
	for i := range inputs {
		next <- i
	}
	close(next)
	wg.Wait()

	var differ, broken, findings int
	for i, in := range inputs {
		r := results[i]
		switch {
		case r.err != nil:
			broken++
			fmt.Printf("✗ %s: %v\n", in.name, r.err)
		case len(r.onlyDoctor) > 0 || len(r.onlyIstioctl) > 0:
			differ++
			fmt.Printf("✗ %s differs\n", in.name)
			for _, l := range r.onlyDoctor {
				fmt.Printf("    only in doctor:   %s\n", l)
			}
			for _, l := range r.onlyIstioctl {
				fmt.Printf("    only in istioctl: %s\n", l)
			}
		default:
			findings += r.findings
			fmt.Printf("ok %s (%d findings)\n", in.name, r.findings)
		}
	}
	fmt.Printf("%d files compared: %d identical (with %d IST findings in all), %d differ, %d could not be compared\n",
		len(inputs), len(inputs)-differ-broken, findings, differ, broken)
	if differ > 0 || broken > 0 {
		return fmt.Errorf("%d of %d files differ from istioctl analyze or could not be compared", differ+broken, len(inputs))
	}
	return nil
}

// writeInstallation writes the objects of the default installation as one
// multi-document YAML file and its mesh config as another, for istioctl.
func writeInstallation(dir string) (installation, mesh string, err error) {
	tree, err := build.Embedded()
	if err != nil {
		return "", "", err
	}
	objs, labels, err := tree.InstallationParts(build.DefaultInstallation(build.DefaultOverlay))
	if err != nil {
		return "", "", err
	}
	objs = append(objs, labels...)
	meshKey := object.KeyOf("ConfigMap", revision.Namespace, revision.NamesOf(revision.Default).Mesh)
	cm := object.Index(objs)[meshKey]
	if cm == nil {
		return "", "", errors.New("the default installation has no " + meshKey)
	}
	meshConfig, found, err := unstructured.NestedString(cm.Object, "data", "mesh")
	if err != nil || !found {
		return "", "", fmt.Errorf("%s: no data.mesh (%v)", meshKey, err)
	}
	stream, err := object.Marshal(objs)
	if err != nil {
		return "", "", err
	}
	installation = filepath.Join(dir, "installation.yaml")
	mesh = filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(installation, stream, 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(mesh, []byte(meshConfig), 0o644); err != nil {
		return "", "", err
	}
	return installation, mesh, nil
}

// findInputs returns the manifests of inputDirs, sorted by path.
func findInputs(root string) ([]input, error) {
	var out []input
	for _, d := range inputDirs {
		dir := filepath.Join(root, d)
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			switch strings.ToLower(filepath.Ext(p)) {
			case ".yaml", ".yml", ".json":
			default:
				return nil // README.md and anything else that is not a manifest
			}
			name, err := filepath.Rel(root, p)
			if err != nil {
				name = p
			}
			out = append(out, input{name: filepath.ToSlash(name), path: p})
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// compareFile runs both sides on file and compares their IST findings.
func compareFile(istioctl, kfistio, installation, mesh, file string) result {
	ours, err := doctorFindings(kfistio, file)
	if err != nil {
		return result{err: err}
	}
	theirs, err := analyzeFindings(istioctl, installation, mesh, file)
	if err != nil {
		return result{err: err}
	}
	onlyOurs, onlyTheirs := multisetDiff(ours, theirs)
	return result{findings: len(ours), onlyDoctor: onlyOurs, onlyIstioctl: onlyTheirs}
}

// doctorReport is the part of doctor's JSON report the comparison reads.
type doctorReport struct {
	Findings []struct {
		ID     string `json:"id"`
		Object string `json:"object"`
		Reason string `json:"reason"`
	} `json:"findings"`
	Errors []string `json:"errors"`
}

// doctorFindings returns the IST findings of `kfistio doctor -f file`.
// Exit status 1 means findings; 2 is accepted when doctor still printed a
// report that names its errors (a file it cannot read), which then has to
// have no IST findings to agree with istioctl.
func doctorFindings(kfistio, file string) ([]string, error) {
	args := []string{"doctor", "-f", file, "-o", "json"}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(kfistio, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	code := 0
	if runErr != nil {
		var exit *exec.ExitError
		if !errors.As(runErr, &exit) {
			return nil, fmt.Errorf("kfistio %s: %w", strings.Join(args, " "), runErr)
		}
		code = exit.ExitCode()
	}
	var rep doctorReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil || code > 2 || (code == 2 && len(rep.Errors) == 0) {
		if runErr == nil {
			runErr = err
		}
		return nil, fmt.Errorf("kfistio %s: %v\n%s%s", strings.Join(args, " "), runErr, stdout.String(), stderr.String())
	}
	var out []string
	for _, f := range rep.Findings {
		if strings.HasPrefix(f.ID, "IST") {
			out = append(out, f.ID+" "+f.Object+": "+f.Reason)
		}
	}
	sort.Strings(out)
	return out, nil
}

// analyzeMessage is the part of a message of `istioctl analyze -o json` the
// comparison reads.
type analyzeMessage struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Origin  string `json:"origin"`
}

// analyzeFindings returns what `istioctl analyze` reports for file with the
// installation's objects and mesh config, as doctor's lines. istioctl exits
// non-zero when it finds errors; only output that is not a result counts as
// a failure.
func analyzeFindings(istioctl, installation, mesh, file string) ([]string, error) {
	args := []string{"analyze", "--use-kube=false", "--all-namespaces", "--meshConfigFile", mesh, "-o", "json", file, installation}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(istioctl, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	if runErr != nil {
		var exit *exec.ExitError
		if !errors.As(runErr, &exit) {
			return nil, fmt.Errorf("istioctl %s: %w", strings.Join(args, " "), runErr)
		}
	}
	fail := func(why string) error {
		return fmt.Errorf("istioctl %s: %s\n%s%s", strings.Join(args, " "), why, stdout.String(), stderr.String())
	}
	// istioctl logs what it cannot parse to standard output, before the
	// result: the result starts at the first line that opens a JSON list.
	body, found := jsonList(stdout.Bytes())
	if !found {
		if strings.Contains(stderr.String(), "No validation issues") {
			return nil, nil
		}
		if runErr != nil {
			return nil, fail(runErr.Error())
		}
		return nil, fail("no result")
	}
	var msgs []analyzeMessage
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&msgs); err != nil {
		return nil, fail("output is not a list of messages: " + err.Error())
	}
	var out []string
	for _, m := range msgs {
		if strings.HasPrefix(m.Code, "IST") {
			out = append(out, m.Code+" "+originObject(m.Origin)+": "+m.Message)
		}
	}
	sort.Strings(out)
	return out, nil
}

// jsonList returns out from its first line that starts with "[".
func jsonList(out []byte) ([]byte, bool) {
	for len(out) > 0 {
		if bytes.HasPrefix(bytes.TrimLeft(out, " \t"), []byte("[")) {
			return out, true
		}
		i := bytes.IndexByte(out, '\n')
		if i < 0 {
			break
		}
		out = out[i+1:]
	}
	return nil, false
}

// originObject turns istioctl's origin "Kind ns/name" (or "Kind name") into
// doctor's "Kind/ns/name" (or "Kind/name").
func originObject(origin string) string {
	kind, rest, ok := strings.Cut(origin, " ")
	if !ok {
		return origin
	}
	return kind + "/" + rest
}

// multisetDiff returns the lines of a that b lacks and those of b that a
// lacks, counting repeats; both are sorted.
func multisetDiff(a, b []string) (onlyA, onlyB []string) {
	count := map[string]int{}
	for _, l := range a {
		count[l]++
	}
	for _, l := range b {
		count[l]--
	}
	for _, l := range a {
		if count[l] > 0 {
			onlyA = append(onlyA, l)
			count[l]--
		}
	}
	for _, l := range b {
		if count[l] < 0 {
			onlyB = append(onlyB, l)
			count[l]++
		}
	}
	return onlyA, onlyB
}

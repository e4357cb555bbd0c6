package cli

import (
	"context"
	"errors"
	"io"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/doctor"
)

// doctorFlags are the options of kfistio doctor.
type doctorFlags struct {
	cluster        clusterFlags
	files          []string
	overlay        string
	components     []string
	manifests      string
	nativeSidecars bool
	fix            bool
	output         string
	failOn         string
	suppress       []string
}

func newDoctorCommand(s Streams) *cobra.Command {
	var f doctorFlags
	cmd := &cobra.Command{
		Use:   "doctor [-f FILE|DIR|-]...",
		Short: "Find why workloads misbehave under the mesh, in manifests or on a cluster",
		Long: `With -f, doctor reads workload manifests (Pod, Deployment, StatefulSet,
DaemonSet, ReplicaSet, Job, CronJob, Knative Service, KServe InferenceService,
Kubeflow Notebook and training jobs, also inside a List as kubectl get prints
it), injects them with Istio's injector as the chosen overlay would, follows
their traffic through the mesh's rules, and reports what it can prove:

  KF001  an init container runs with its traffic redirected to a proxy that
         has not started (no native sidecar, or ordered before it);
  KF002  an init container's traffic through the sidecar: refused by the mesh,
         or leaving it without mTLS;
  KF003  the same for the download of a KServe storage initializer;
  KF004  a container runs as UID 1337, the sidecar's, and bypasses the mesh;
  KF005  the injected pod violates the Pod Security level of its namespace;
  KF010  a VirtualService with a specific host on a gateway takes that
         host's requests away from the routes of a wildcard VirtualService
         ("*", as Kubeflow's), whose paths then answer 404 for it;
  KF011  a route on a gateway is never used: an earlier route of another
         VirtualService on the same host takes all its requests;
  IST*   what Istio's analyzers find, as istioctl analyze of the same
         release: IST0101 a referenced gateway or host not found, IST0132 a
         host the gateway does not serve, IST0109 conflicting hosts, and
         the rest (https://istio.io/latest/docs/reference/config/analysis/).

A finding is a warning or an error only with evidence that traffic fails: a
proxy that is not running yet, REGISTRY_ONLY, a Sidecar that leaves the
destination out, a destination that requires mTLS. Otherwise it is info, a
tip for when the mesh is stricter than the input shows. Namespaces, Sidecars,
ServiceEntries, PeerAuthentications, Gateways, VirtualServices and the mesh
ConfigMap in the input count as well as the overlay's, and Istio's analyzers
read the input with the installation's objects (objects without a namespace
as istioctl analyze --all-namespaces reads them); workloads of namespaces that Istio does not inject
(istio-injection=disabled, another revision, ambient) are not findings.
Already injected pods (kubectl get -o yaml) are judged as they are.

With --fix it prints the manifests with the fixes of the findings at or above
--fail-on applied (runAsUser 1337 on an init container that can run as that
UID, the excludeOutboundIPRanges annotation on an InferenceService), leaving
every other byte as it was, and says which fixes it could not apply; the
report goes to standard error.

Without -f, doctor checks the cluster of --kubeconfig/--context:

  KF100  istiod is missing
  KF101  istio-cni-node is not ready on a node
  KF102  GKE runs an overlay whose CNI directory GKE mounts read-only
  KF103  the Kubernetes version cannot run native sidecars
  KF104  a webhook of istiod has no CA bundle
  KF105  an injected namespace's Pod Security level does not fit the overlay
  KF106  a pod's proxy is of another release than istiod
  KF107  a pod is stuck in istio-validation or istio-init

and then runs the workload checks on the workloads of injected namespaces,
the routing checks (KF010, KF011) on every gateway, and Istio's analyzers
on the live resources.

Istio's findings keep Istio's code, level and documentation page. Hide one
with --suppress CODE=RESOURCE (RESOURCE as Istio prints it, "Kind
namespace/name", with * globs), or with the annotation
galley.istio.io/analyze-suppress: CODE[,CODE] on the object.

Exit status: 0 without findings at or above --fail-on (with --fix: that it
could not fix), 1 with, 2 when doctor could not run or read an input.`,
		Example: `  # Before deploying
  kfistio doctor -f notebook.yaml
  kustomize build my-app | kfistio doctor -f - --overlay insecure

  # What a running pod would need
  kubectl get pod -n team-a -o yaml | kfistio doctor -f -

  # Apply the fixes
  kfistio doctor -f inferenceservice.yaml --fix > fixed.yaml

  # A live cluster
  kfistio doctor --context prod -o json

  # Without one of Istio's findings
  kfistio doctor -f app.yaml --suppress "IST0118=Service team-a/*"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			report := s.Out
			if f.fix {
				report = s.Err
			}
			fail := func(err error) error {
				return doctorFailed(report, f.output, &doctor.Report{}, err)
			}
			if err := checkFormat(f.output); err != nil {
				f.output = "text"
				return fail(err)
			}
			min, err := doctor.ParseSeverity(f.failOn)
			if err != nil {
				return fail(err)
			}
			suppress, notes, err := doctor.ParseSuppressions(f.suppress)
			if err != nil {
				return fail(err)
			}
			var rep *doctor.Report
			if len(f.files) > 0 {
				var native *bool
				if cmd.Flags().Changed("native-sidecars") {
					native = &f.nativeSidecars
				}
				rep, err = doctorFiles(s, &f, native, min, suppress)
			} else {
				if f.fix {
					return fail(errors.New("--fix works on manifests: pass them with -f"))
				}
				rep, err = doctorCluster(cmd.Context(), &f.cluster, s.Err, suppress)
			}
			if err != nil {
				return fail(err)
			}
			rep.Notes = append(notes, rep.Notes...)
			if err := writeOutput(report, f.output, rep, func() error { return rep.WriteText(report) }); err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			switch {
			case len(rep.Errors) > 0:
				return &ExitError{Code: 2} // the report says what could not be read
			case len(rep.Remaining(min)) > 0:
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	f.cluster.add(cmd)
	cmd.Flags().StringArrayVarP(&f.files, "filename", "f", nil, "manifests to check: a file, a directory, or - for standard input (repeatable)")
	cmd.Flags().StringVar(&f.overlay, "overlay", build.DefaultOverlay, "with -f: the install overlay whose injector, namespaces and mesh config to assume ("+overlayNames()+")")
	cmd.Flags().StringSliceVar(&f.components, "component", nil, "with -f: opt-in components of the installation to assume ("+componentNames()+")")
	cmd.Flags().BoolVar(&f.nativeSidecars, "native-sidecars", true, "with -f: istiod's ENABLE_NATIVE_SIDECARS; false judges the manifests under an istiod without native sidecars")
	addManifestsFlag(cmd, &f.manifests)
	cmd.Flags().BoolVar(&f.fix, "fix", false, "with -f: print the manifests with the fixes of the findings at or above --fail-on applied")
	cmd.Flags().StringVarP(&f.output, "output", "o", "text", "output format of the report: text or json")
	cmd.Flags().StringArrayVar(&f.suppress, "suppress", nil, `hide an Istio analyzer's code on matching resources: CODE=RESOURCE, as "IST0102=Namespace team-a" (repeatable)`)
	cmd.Flags().StringVar(&f.failOn, "fail-on", string(doctor.Warning), "exit 1 on findings of this severity or worse: info, warning, error")
	return cmd
}

// doctorFailed reports err, in JSON as well with -o json, and exits 2.
func doctorFailed(w io.Writer, format string, rep *doctor.Report, err error) error {
	if format == "json" {
		rep.Errors = append(rep.Errors, err.Error())
		_ = writeOutput(w, format, rep, nil)
	}
	return &ExitError{Code: 2, Err: err}
}

// doctorFiles checks manifests as the installation of the flags would inject
// and admit them, and with --fix writes them fixed to standard output.
func doctorFiles(s Streams, f *doctorFlags, native *bool, min doctor.Severity, suppress []doctor.Suppression) (*doctor.Report, error) {
	files, readErr := doctor.ReadFiles(f.files, s.In)
	tree, err := openTree(f.manifests)
	if err != nil {
		return nil, err
	}
	inst := build.DefaultInstallation(f.overlay)
	inst.Components = f.components
	// The labels the overlay puts on Kubeflow's namespaces (ambient's data
	// plane mode) decide how their pods are judged.
	objs, labels, err := tree.InstallationParts(inst)
	if err != nil {
		return nil, err
	}
	opts, err := doctor.InstallationOptions(append(objs, labels...), native)
	if err != nil {
		return nil, err
	}
	opts.Analysis.Suppressions = suppress
	rep := doctor.CheckWorkloads(files, opts)
	for _, e := range unjoin(readErr) {
		rep.Errors = append(rep.Errors, e.Error())
	}
	if f.fix && len(rep.Errors) == 0 {
		if err := doctor.WriteFixed(s.Out, files, rep.Fix(files, min)); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

// unjoin lists the errors of an errors.Join.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err != nil {
		return []error{err}
	}
	return nil
}

func doctorCluster(ctx context.Context, f *clusterFlags, warnings io.Writer, suppress []doctor.Suppression) (*doctor.Report, error) {
	defer collectSooner()()
	c, err := f.connect(ctx, warnings)
	if err != nil {
		return nil, err
	}
	return doctor.CheckCluster(ctx, c, suppress)
}

// clusterGCPercent is Go's GOGC while doctor checks a cluster, unless GOGC
// is set. Most of what doctor allocates stays live until its checks end,
// and it waits on the API server for much of its run: collecting when the
// heap has grown by half of what is live, not by all of it, holds 30-40 MiB
// less at 1000 profiles (README, Kubeflow at scale). Unlike a fixed memory
// limit, it scales with the cluster.
const clusterGCPercent = 50

// collectSooner sets clusterGCPercent unless GOGC is set, and returns what
// restores the previous setting.
func collectSooner() (restore func()) {
	if os.Getenv("GOGC") != "" {
		return func() {}
	}
	old := debug.SetGCPercent(clusterGCPercent)
	return func() { debug.SetGCPercent(old) }
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/doctor"
	"github.com/kubeflow/kfistio/internal/inject"
	"github.com/kubeflow/kfistio/internal/podsecurity"
)

func newDoctorCommand(s Streams) *cobra.Command {
	var (
		cluster    clusterFlags
		files      []string
		overlay    string
		components []string
		manifests  string
		fix        bool
		output     string
		failOn     string
	)
	cmd := &cobra.Command{
		Use:   "doctor [-f FILE|DIR|-]...",
		Short: "Find why workloads misbehave under the mesh, in manifests or on a cluster",
		Long: `With -f, doctor reads workload manifests (Pod, Deployment, StatefulSet,
DaemonSet, Job, CronJob, KServe InferenceService, Kubeflow Notebook), injects
them with Istio's injector as the chosen overlay would, and reports what it can
prove:

  KF001  an init container runs with its traffic redirected before any proxy
         can serve it;
  KF002  an init container reaches hosts outside the mesh through the sidecar;
  KF003  a KServe storage initializer downloads a model from outside the mesh
         through the sidecar;
  KF004  a container runs as UID 1337, the sidecar's, and bypasses the mesh;
  KF005  the injected pod violates the Pod Security level of its namespace.

With --fix it prints the manifests with the fixes applied (runAsUser 1337 on
the init container, or the excludeOutboundIPRanges annotation on the
InferenceService), leaving every other byte as it was; the report goes to
standard error.

Without -f, doctor checks the cluster of --kubeconfig/--context:

  KF100  istiod is missing
  KF101  istio-cni-node is not ready on a node
  KF102  GKE runs an overlay whose CNI directory GKE mounts read-only
  KF103  the Kubernetes version cannot run native sidecars
  KF104  a webhook of istiod has no CA bundle
  KF105  an injected namespace's Pod Security level does not fit the overlay
  KF106  a pod's proxy is of another release than istiod
  KF107  a pod is stuck in istio-validation or istio-init

and then runs the workload checks on the workloads of injected namespaces.

Exit status: 0 without findings at or above --fail-on, 1 with, 2 when doctor
could not run.`,
		Example: `  # Before deploying
  kfistio doctor -f notebook.yaml
  kustomize build my-app | kfistio doctor -f - --overlay insecure

  # Apply the fixes
  kfistio doctor -f inferenceservice.yaml --fix > fixed.yaml

  # A live cluster
  kfistio doctor --context prod -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(output); err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			min, err := doctor.ParseSeverity(failOn)
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			var rep *doctor.Report
			if len(files) > 0 {
				inst := build.DefaultInstallation(overlay)
				inst.Components = components
				rep, err = doctorFiles(s, files, inst, manifests, fix)
			} else {
				if fix {
					return &ExitError{Code: 2, Err: errors.New("--fix works on manifests: pass them with -f")}
				}
				rep, err = doctorCluster(cmd.Context(), &cluster, s.Err)
			}
			if err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			report := s.Out
			if fix {
				report = s.Err
			}
			if err := writeOutput(report, output, rep, func() error { return rep.WriteText(report) }); err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			remaining := rep.Worst(min)
			if fix {
				remaining = unfixable(remaining)
			}
			if len(remaining) > 0 {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cluster.add(cmd)
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifests to check: a file, a directory, or - for standard input (repeatable)")
	cmd.Flags().StringVar(&overlay, "overlay", build.DefaultOverlay, "with -f: the install overlay whose injector and namespaces to assume ("+overlayNames()+")")
	cmd.Flags().StringSliceVar(&components, "component", nil, "with -f: opt-in components of the installation to assume ("+componentNames()+")")
	addManifestsFlag(cmd, &manifests)
	cmd.Flags().BoolVar(&fix, "fix", false, "with -f: print the manifests with the fixes applied")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format of the report: text or json")
	cmd.Flags().StringVar(&failOn, "fail-on", string(doctor.Warning), "exit 1 on findings of this severity or worse: info, warning, error")
	return cmd
}

func unfixable(fs []doctor.Finding) []doctor.Finding {
	var out []doctor.Finding
	for _, f := range fs {
		if !f.Fixable() {
			out = append(out, f)
		}
	}
	return out
}

// doctorFiles checks manifests as the installation inst would inject and
// admit them.
func doctorFiles(s Streams, paths []string, inst build.Installation, manifests string, fix bool) (*doctor.Report, error) {
	files, err := doctor.ReadFiles(paths, s.In)
	if err != nil {
		return nil, err
	}
	tree, err := openTree(manifests)
	if err != nil {
		return nil, err
	}
	objs, err := tree.InstallationObjects(inst)
	if err != nil {
		return nil, err
	}
	in, err := inject.New(objs)
	if err != nil {
		return nil, err
	}
	rep := doctor.CheckWorkloads(files, doctor.WorkloadOptions{Injector: in, Levels: podsecurity.NamespaceLevels(objs), EgressRestricted: doctor.EgressRestriction(objs)})
	if fix {
		fixed, err := doctor.Fix(files, rep.Findings)
		if err != nil {
			return nil, err
		}
		for i, f := range files {
			if len(files) > 1 {
				if i > 0 {
					fmt.Fprintln(s.Out, "---")
				}
				fmt.Fprintf(s.Out, "# Source: %s\n", f.Path)
			}
			if _, err := s.Out.Write(fixed[f]); err != nil {
				return nil, err
			}
		}
	}
	return rep, nil
}

func doctorCluster(ctx context.Context, f *clusterFlags, warnings io.Writer) (*doctor.Report, error) {
	c, err := f.connect(ctx, warnings)
	if err != nil {
		return nil, err
	}
	return doctor.CheckCluster(ctx, c)
}

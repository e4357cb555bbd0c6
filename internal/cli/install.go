package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/kubeflow/kfistio/internal/doctor"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/upstream"
)

func newInstallCommand(s Streams) *cobra.Command {
	var (
		cluster clusterFlags
		what    installationFlags
		dryRun  bool
		force   bool
		adopt   bool
		inPlace bool
		output  string
	)
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install the Kubeflow Istio distribution on a cluster",
		Long: `Build the installation (the Istio CRDs, the istio-system namespace, an install
overlay, the cluster-local gateway and the Kubeflow resources) and apply it with
server-side apply, in stages:

  1. CRDs and namespaces, then wait until the CRDs are Established;
  2. the control plane (istiod, the CNI node agent, RBAC, config), then wait
     until istiod and the CNI node agent are ready;
  3. the webhooks istiod serves;
  4. the gateways and Istio resources, then wait until the gateways are ready.

The labels an overlay needs on namespaces that other Kubeflow directories
define (the privileged Pod Security level for insecure, the ambient data plane
label for the ambient overlays) are applied label-only, with the field manager
` + install.LabelsFieldManager + `, which owns those labels and nothing else.
The ingress gateway's oauth2-proxy policies are left to Kubeflow's
common/oauth2-proxy; --oauth2-proxy-policies adds them where that is not
installed.

The cluster is read with one LIST per kind and namespace, and the objects of a
stage are applied --concurrency at a time. Objects the server says would not
change are not written, and an object whose fields kfistio owns are still what
the last install applied gets no request: a second install with nothing
changed performs no writes and reports every object unchanged. Requests that
fail for a transient reason (429, 5xx, a reset connection) are sent again, up
to 5 times.
Objects an earlier install applied and this one does not have (the CNI node
agent, when moving to the insecure overlay) are pruned. What kfistio applied is
recorded in the ConfigMap kube-system/kfistio and labelled
` + install.ManagedLabel + `=true.

Install first reads what is there. Objects of the installation that other field
managers own (an installation made with kubectl apply, client- or server-side)
stop it before any write, with the managers and the Istio release found;
--adopt takes such an installation over. Only one install or uninstall runs at a
time: each holds the Lease kube-system/kfistio while it writes.

Progress goes to standard error; the change set (created, configured,
unchanged, pruned per object) to standard output.`,
		Example: `  # Detect the platform and install the right overlay
  kfistio install

  # Take over Kubeflow's Istio applied earlier with kubectl apply: first see
  # which objects change hands and which fields go, then do it
  kfistio install --adopt --dry-run
  kfistio install --adopt

  # What would change, without changing anything
  kfistio install --overlay insecure --dry-run

  # oauth2-proxy installed without Kubeflow's common/oauth2-proxy
  kfistio install --oauth2-proxy-policies

  # Only the control plane, on another cluster
  kfistio install --context prod --cluster-local-gateway none --kubeflow-resources=false`,
		Args: cobra.NoArgs,
		RunE: cluster.runE(s, &output, func(ctx context.Context, c *kube.Client) error {
			in := &install.Installer{Client: c, Progress: progressFunc(s.Err)}
			inst, objs, labels, err := what.resolve(ctx, c, s.Err)
			if err != nil {
				return err
			}
			fmt.Fprintf(s.Err, "Installing %s on %s (context %q)\n", inst.Name(), c.Host, c.Context)
			cs, err := in.Install(ctx, install.Options{
				Installation: inst, Objects: objs, NamespaceLabels: labels, DryRun: dryRun, ForceConflicts: force, Adopt: adopt,
				UnsupportedInPlace: inPlace, Timeout: cluster.timeout, Version: currentVersion().Version,
			})
			if werr := writeOutput(s.Out, output, cs, func() error { return writeChanges(s.Out, cs, dryRun) }); werr != nil && err == nil {
				err = werr
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(s.Err, "%d created, %d configured, %d adopted, %d unchanged, %d pruned\n",
				cs.Count(install.Created), cs.Count(install.Configured), cs.Count(install.Adopted), cs.Count(install.Unchanged), cs.Count(install.Pruned))
			if dryRun {
				return nil
			}
			return writeStaleProxies(ctx, s.Err, c)
		}),
	}
	cluster.add(cmd)
	cluster.addTimeout(cmd, "how long to wait for each stage to become ready")
	what.add(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "send server-side dry-run requests only, and print what would change")
	cmd.Flags().BoolVar(&force, "force-conflicts", false, "take over fields of kfistio's objects whose values other field managers changed")
	what.addRevision(cmd)
	cmd.Flags().BoolVar(&inPlace, "unsupported-in-place", false, "replace a running istiod more than one minor release away in place, which Istio does not support (upgrade by revision instead: kfistio upgrade); then restart every injected workload")
	cmd.Flags().BoolVar(&adopt, "adopt", false, "take over an installation that another tool applied (kubectl apply, client- or server-side): kfistio becomes the only field manager of its objects, and what the previous release set and this one does not is removed")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format of the change set: text or json")
	return cmd
}

func newDiffCommand(s Streams) *cobra.Command {
	var (
		cluster clusterFlags
		what    installationFlags
	)
	cmd := &cobra.Command{
		Use:   "diff",
		Short: "Show how the cluster differs from what install would apply",
		Long: `Compare every object of the installation with the cluster, read with one LIST
per kind and namespace, using server-side dry runs of the apply that install
would make (none for objects whose fields kfistio owns are still what the last
install applied), and print a unified diff per
object that would be created, changed or pruned. Fields that other managers own
(istiod's webhook CA bundles, replicas set by autoscalers) are not differences.

Exit status: 0 when nothing would change, 1 when something would.`,
		Example: `  kfistio diff
  kfistio diff --overlay insecure`,
		Args: cobra.NoArgs,
		RunE: cluster.runE(s, nil, func(ctx context.Context, c *kube.Client) error {
			_, objs, _, err := what.resolve(ctx, c, s.Err)
			if err != nil {
				return err
			}
			diffs, err := (&install.Installer{Client: c}).Diff(ctx, objs)
			if err != nil {
				return err
			}
			for _, d := range diffs {
				fmt.Fprint(s.Out, d.Diff)
			}
			if len(diffs) > 0 {
				return &ExitError{Code: 1, Err: fmt.Errorf("%d objects differ", len(diffs))}
			}
			fmt.Fprintln(s.Err, "No differences.")
			return nil
		}),
	}
	cluster.add(cmd)
	what.add(cmd)
	what.addRevision(cmd)
	return cmd
}

// writeStaleProxies names the workloads whose sidecars run another release
// than the one just installed (doctor's KF106), with what to run.
func writeStaleProxies(ctx context.Context, w io.Writer, c *kube.Client) error {
	stale, err := doctor.StaleProxies(ctx, c, upstream.Release)
	if err != nil || len(stale) == 0 {
		return err
	}
	fmt.Fprintf(w, "%d workloads run sidecars of another Istio release; restart them so that they are injected with %s:\n", len(stale), upstream.Release)
	for _, s := range stale {
		fmt.Fprintf(w, "  %s\n", s.Line())
	}
	return nil
}

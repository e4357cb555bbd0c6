package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/upgrade"
	"github.com/kubeflow/kfistio/internal/upstream"
)

func newUpgradeCommand(s Streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Upgrade Istio by revision, step by step, each step reversible until finish",
		Long: `Upgrade the mesh to Istio ` + upstream.Release + ` by revision (a canary upgrade), the way Istio supports
jumps of more than one minor release: the new control plane, revision ` + upstream.Revision + `,
runs next to the old one, and every proxy keeps the istiod of its own release until its
workload restarts.

  kfistio upgrade start     the new revision next to the old one; the CRDs and the
                            CNI node agent (shared by every revision) upgraded in place
  kfistio upgrade switch    the default tag to the new revision: namespaces labelled
                            istio-injection=enabled (Kubeflow's profiles) are injected
                            by it, the default validator calls it, the gateways move
  kfistio upgrade restart   workloads restarted namespace by namespace onto the new
                            revision (or listed with the command for each)
  kfistio upgrade finish    the old revision removed, once no proxy uses it
  kfistio upgrade rollback  back to the old revision, at any step before finish

kfistio status shows each revision, its release, and the pods whose proxies it serves.
Each step reads the cluster first and can be run again: an interrupted step is
completed by running it again.`,
		Example: `  kfistio upgrade start
  kfistio status
  kfistio upgrade switch
  kfistio upgrade restart --namespace kubeflow-user-example-com
  kfistio upgrade restart --all
  kfistio upgrade finish

  # Back to the old control plane, at any step before finish
  kfistio upgrade rollback`,
	}
	cmd.AddCommand(
		newUpgradeStep(s, "start", "Install the new control plane next to the old one", `Install revision `+upstream.Revision+` (Istio `+upstream.Release+`) next to the running control plane:
the CRDs and the CNI node agent, which every revision shares, are upgraded in place, and
every shared object of the installation is applied, taking over those another tool
applied (kubectl). The new istiod, its injector and its validator start, and the step
waits until they serve; the old istiod keeps injecting and configuring every proxy.
A cluster whose Istio config without an istio.io/rev label is not validated (Kubeflow's
Istio 1.26 tree) gets the default validator now, on the old istiod.

The installation comes from kfistio's inventory when kfistio installed the old one,
else from the flags (the overlay detected as install does). It refuses ambient mode,
a cluster that runs several control planes, and a revision name already in use.`,
			func(u *upgrade.Upgrader, ctx context.Context, o upgrade.Options) (*upgrade.Result, error) {
				return u.Start(ctx, o)
			}),
		newUpgradeStep(s, "switch", "Make the new revision the default, and move the gateways to it", `Point the default tag at the new revision: its webhook injects the pods of namespaces
labelled istio-injection=enabled or istio.io/rev=default, the default validator calls
the new istiod, and the old default injector is deactivated (kept, for a rollback). New
webhooks are created selecting nothing and made to select once istiod has written their
CA bundle, and the old injector goes only after the tag injects. Then the gateways move
to the new revision, and the step waits until they are ready. Running proxies keep the
old istiod until their workloads restart.`,
			func(u *upgrade.Upgrader, ctx context.Context, o upgrade.Options) (*upgrade.Result, error) {
				return u.Switch(ctx, o)
			}),
		newRestartCommand(s),
		newUpgradeStep(s, "finish", "Remove the revision that is not the default one", `Remove the control plane that is not the default one: after a switch the old one, which
ends the upgrade; after a rollback the new one, and what start changed is put back (the
CRDs stay). It refuses while a proxy still uses that revision, and names the workloads
to restart.`,
			func(u *upgrade.Upgrader, ctx context.Context, o upgrade.Options) (*upgrade.Result, error) {
				return u.Finish(ctx, o)
			}),
		newUpgradeStep(s, "rollback", "Go back to the old revision, at any step before finish", `Make the old revision the default again: the gateways go back to it (waiting until they
are ready), its injector selects again before the default tag goes, and the default
validator calls it. When no proxy uses the new revision it is removed at once, and what
start changed is put back; otherwise the workloads to restart are listed, then run
kfistio upgrade finish.`,
			func(u *upgrade.Upgrader, ctx context.Context, o upgrade.Options) (*upgrade.Result, error) {
				return u.Rollback(ctx, o)
			}),
	)
	return cmd
}

// newUpgradeStep is the command of one step of an upgrade.
func newUpgradeStep(s Streams, name, short, long string, run func(*upgrade.Upgrader, context.Context, upgrade.Options) (*upgrade.Result, error)) *cobra.Command {
	var (
		cluster clusterFlags
		what    installationFlags
		output  string
	)
	cmd := &cobra.Command{
		Use:   name,
		Short: short,
		Long:  long,
		Args:  cobra.NoArgs,
		RunE: cluster.runE(s, &output, func(ctx context.Context, c *kube.Client) error {
			in := &install.Installer{Client: c, Progress: progressFunc(s.Err)}
			o, err := upgradeOptions(ctx, c, in, &what, name == "start", s.Err)
			if err != nil {
				return err
			}
			o.Timeout = cluster.timeout
			fmt.Fprintf(s.Err, "Upgrade by revision, %s: %s on %s (context %q)\n", name, o.Installation.Name(), c.Host, c.Context)
			res, err := run(&upgrade.Upgrader{In: in}, ctx, o)
			return writeResult(s, output, res, err)
		}),
	}
	cluster.add(cmd)
	cluster.addTimeout(cmd, "how long to wait for each part to become ready")
	if name == "start" {
		what.add(cmd)
	} else {
		addManifestsFlag(cmd, &what.manifests)
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format of the change set: text or json")
	return cmd
}

// upgradeOptions builds the installation to upgrade to: that of the
// inventory when kfistio recorded one (during an upgrade, the new one),
// else, for start, that of the flags; always as the tree's revision.
func upgradeOptions(ctx context.Context, c *kube.Client, in *install.Installer, what *installationFlags, start bool, progress io.Writer) (upgrade.Options, error) {
	o := upgrade.Options{Version: currentVersion().Version}
	inv, err := in.ReadInventory(ctx)
	switch {
	case err == nil && (!start || !what.changed("overlay")):
		o.Installation = inv.Installation()
	case errors.Is(err, install.ErrNotInstalled) && start, err == nil:
		if o.Installation, err = what.installation(ctx, c, progress); err != nil {
			return o, err
		}
	case errors.Is(err, install.ErrNotInstalled):
		return o, errors.New("kfistio has no inventory on this cluster, so no upgrade by revision is under way: start one with kfistio upgrade start")
	default:
		return o, err
	}
	o.Installation.Revision = upstream.Revision
	tree, err := openTree(what.manifests)
	if err != nil {
		return o, err
	}
	o.Objects, o.NamespaceLabels, err = tree.InstallationParts(o.Installation)
	return o, err
}

func newRestartCommand(s Streams) *cobra.Command {
	var (
		cluster clusterFlags
		opts    upgrade.RestartOptions
		output  string
	)
	cmd := &cobra.Command{
		Use:   "restart",
		Short: "Restart the workloads whose proxies a revision other than the default one serves",
		Long: `List the workloads whose pods run proxies of a revision other than the default one, with
the command that restarts each; with --namespace or --all, restart their Deployments,
StatefulSets and DaemonSets namespace by namespace (as kubectl rollout restart does),
waiting until each namespace's workloads are ready again. Their new pods are injected by
the default revision. The gateways move with kfistio upgrade switch.`,
		Example: `  kfistio upgrade restart
  kfistio upgrade restart --namespace kubeflow --namespace kubeflow-user-example-com
  kfistio upgrade restart --all`,
		Args: cobra.NoArgs,
		RunE: cluster.runE(s, &output, func(ctx context.Context, c *kube.Client) error {
			opts.Timeout = cluster.timeout
			res, err := (&upgrade.Upgrader{In: &install.Installer{Client: c, Progress: progressFunc(s.Err)}}).Restart(ctx, opts)
			return writeResult(s, output, res, err)
		}),
	}
	cluster.add(cmd)
	cluster.addTimeout(cmd, "how long to wait for the workloads of each namespace")
	cmd.Flags().StringSliceVarP(&opts.Namespaces, "namespace", "n", nil, "restart the workloads of these namespaces, one after the other")
	cmd.Flags().BoolVar(&opts.All, "all", false, "restart the workloads of every namespace")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format of the change set: text or json")
	return cmd
}

// writeResult writes the changes of a step on stdout, its notes and the
// workloads still to restart on stderr.
func writeResult(s Streams, output string, res *upgrade.Result, err error) error {
	if res == nil {
		return err
	}
	if werr := writeOutput(s.Out, output, res, func() error { return writeChanges(s.Out, res.Changes, false) }); werr != nil && err == nil {
		err = werr
	}
	for _, n := range res.Notes {
		fmt.Fprintf(s.Err, "Note: %s.\n", n)
	}
	var inUse *upgrade.InUseError
	if len(res.InUse) > 0 && !errors.As(err, &inUse) {
		fmt.Fprintf(s.Err, "%d workloads run proxies of a revision that is not the default; restart them (kfistio upgrade restart --all, or each command):\n", len(res.InUse))
		for _, w := range res.InUse {
			fmt.Fprintf(s.Err, "  %s\n", w.Line())
		}
	}
	if err == nil && res.Upgrade != nil {
		fmt.Fprintf(s.Err, "Upgrade from %s (Istio %s) to %s: revision %s is the default; next: %s\n", res.Upgrade.From, res.Upgrade.FromRelease, res.Upgrade.To, res.Upgrade.Default, upgrade.Next(res.Upgrade, len(res.InUse)))
	}
	return err
}

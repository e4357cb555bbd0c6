package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/object"
	"github.com/kubeflow/kfistio/internal/revision"
	"github.com/kubeflow/kfistio/internal/upgrade"
)

func newStatusCommand(s Streams) *cobra.Command {
	var (
		cluster   clusterFlags
		manifests string
		output    string
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what kfistio installed on a cluster and how it is doing",
		Long: `Read the installation kfistio recorded on the cluster and report the overlay,
the Istio release, the upgrade by revision under way (and its next step), each
control plane revision with its release and the pods whose proxies it serves,
the readiness of each workload (with the reason from its pods when it is not
ready), and whether the cluster drifted from the tree.`,
		Example: `  kfistio status
  kfistio status -o json`,
		Args: cobra.NoArgs,
		RunE: cluster.runE(s, &output, func(ctx context.Context, c *kube.Client) error {
			in := &install.Installer{Client: c}
			inv, err := in.ReadInventory(ctx)
			if err != nil {
				return err
			}
			tree, err := openTree(manifests)
			if err != nil {
				return err
			}
			installed := inv.Installation()
			objs, err := tree.InstallationObjects(installed)
			if err != nil {
				return err
			}
			st, err := in.Status(ctx, inv, objs)
			if err != nil {
				return err
			}
			index := object.Index(objs)
			revs, err := upgrade.Revisions(ctx, in)
			if err != nil {
				return err
			}
			out := struct {
				*install.Status
				Revisions []upgrade.Revision `json:"revisions"`
			}{st, revs}
			return writeOutput(s.Out, output, out, func() error {
				complete := "complete"
				if !inv.Complete {
					complete = "incomplete: an install was interrupted; run kfistio install again"
				}
				fmt.Fprintf(s.Out, "Overlay:  %s\nIstio:    %s (installed by kfistio %s)\nInstall:  %s\n", installed.Name(), inv.IstioRelease, inv.KfistioVersion, complete)
				if up := inv.Upgrade; up != nil {
					inUse := 0
					for _, r := range revs {
						if r.Revision != up.Default {
							inUse += len(upgrade.WithoutGateways(r.Workloads))
						}
					}
					fmt.Fprintf(s.Out, "Upgrade:  by revision, from %s (Istio %s) to %s; revision %s is the default; next: %s\n", up.From, up.FromRelease, up.To, up.Default, upgrade.Next(up, inUse))
				}
				fmt.Fprintln(s.Out, "Revisions:")
				for _, r := range revs {
					mark, role := "✓", ""
					if r.Status != "Current" {
						mark = "✗"
					}
					if r.Default {
						role = ", the default"
					}
					if len(r.Tags) > 0 {
						role += " (tags: " + strings.Join(r.Tags, ", ") + ")"
					}
					fmt.Fprintf(s.Out, "  %s %s: Istio %s%s; its proxies run in %d pods of %d workloads\n", mark, r.Revision, r.Release, role, r.Pods, len(r.Workloads))
					for _, w := range r.Workloads {
						fmt.Fprintf(s.Out, "      %s: %d pods, proxy %s\n", w.Workload, len(w.Pods), w.Proxy)
					}
				}
				// Before the switch of an upgrade, what the switch applies is
				// not expected yet.
				pending := func(key string) bool {
					o := index[key]
					return inv.Upgrade != nil && inv.Upgrade.Default != inv.Upgrade.To && o != nil && o.GetLabels()[revision.StepLabel] == revision.StepSwitch
				}
				fmt.Fprintln(s.Out, "Components:")
				for _, comp := range st.Components {
					mark := "✓"
					switch {
					case comp.Status != "Current" && pending(comp.Object):
						mark, comp.Message = "·", "kfistio upgrade switch applies it"
					case comp.Status != "Current":
						mark = "✗"
					}
					fmt.Fprintf(s.Out, "  %s %s: %s\n", mark, comp.Object, comp.Message)
				}
				if len(st.Drift) == 0 {
					fmt.Fprintln(s.Out, "Drift:    none")
				} else {
					fmt.Fprintf(s.Out, "Drift:    %d objects differ from the tree (kfistio diff shows how):\n", len(st.Drift))
					for _, d := range st.Drift {
						note := ""
						if pending(d.Object) {
							note = " (by kfistio upgrade switch)"
						}
						fmt.Fprintf(s.Out, "  %s would be %s%s\n", d.Object, d.Action, note)
					}
				}
				return nil
			})
		}),
	}
	cluster.add(cmd)
	addManifestsFlag(cmd, &manifests)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

func newUninstallCommand(s Streams) *cobra.Command {
	var (
		cluster clusterFlags
		opts    install.UninstallOptions
		output  string
	)
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove what kfistio installed",
		Long: `Delete every object kfistio recorded in its inventory, in reverse install order,
and wait until they are gone. Namespaces are kept (kfistio's labels are
removed from them): they may hold more than Istio. The Istio CRDs are kept
unless --purge is given; a purge first lists the custom resources that would
be deleted with them and needs --yes to delete any.`,
		Example: `  kfistio uninstall
  kfistio uninstall --purge --yes`,
		Args: cobra.NoArgs,
		RunE: cluster.runE(s, &output, func(ctx context.Context, c *kube.Client) error {
			opts.Timeout = cluster.timeout
			in := &install.Installer{Client: c, Progress: progressFunc(s.Err)}
			cs, err := in.Uninstall(ctx, opts)
			var purge *install.PurgeError
			if errors.As(err, &purge) {
				return &ExitError{Code: 1, Err: fmt.Errorf("warning: %w", err)}
			}
			if werr := writeOutput(s.Out, output, cs, func() error { return writeChanges(s.Out, cs, opts.DryRun) }); werr != nil && err == nil {
				err = werr
			}
			return err
		}),
	}
	cluster.add(cmd)
	cluster.addTimeout(cmd, "how long to wait until the deleted objects are gone")
	cmd.Flags().BoolVar(&opts.Purge, "purge", false, "also delete the Istio CRDs, their custom resources, and the istio-system namespace")
	cmd.Flags().BoolVar(&opts.Confirm, "yes", false, "with --purge: delete the custom resources it lists")
	cmd.Flags().BoolVar(&opts.DryRun, "dry-run", false, "send server-side dry-run requests only")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format of the change set: text or json")
	return cmd
}

package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kubeflow/kfistio/internal/build"
)

func newBuildCommand(s Streams) *cobra.Command {
	var manifestsDir string
	cmd := &cobra.Command{
		Use:   "build OVERLAY|DIR",
		Short: "Print the YAML of an overlay or directory of the tree",
		Long: `Build an install overlay, or any kustomization directory of the tree, with
kustomize in-process, and print the YAML that ` + "`kubectl kustomize`" + ` prints for it.

OVERLAY is one of: ` + overlayList() + `.
DIR is a directory of the tree (for example cluster-local-gateway/overlays/m2m-auth),
or a kustomization directory on disk.`,
		Example: `  # The default overlay
  kfistio build oauth2-proxy

  # Straight into a cluster
  kfistio build gke | kubectl apply --server-side -f -

  # A directory of the tree, from a checkout instead of the embedded copy
  kfistio build cluster-local-gateway/overlays/m2m-auth --manifests ./manifests`,
		Args: exactArgs(1, "an overlay name or a directory"),
		RunE: func(cmd *cobra.Command, args []string) error {
			tree, err := openTree(manifestsDir)
			if err != nil {
				return err
			}
			t, dir, err := build.Resolve(tree, args[0])
			if err != nil {
				return err
			}
			res, err := t.Build(dir)
			if err != nil {
				return err
			}
			out, err := res.YAML()
			if err != nil {
				return err
			}
			_, err = s.Out.Write(out)
			return err
		},
	}
	addManifestsFlag(cmd, &manifestsDir)
	return cmd
}

func addManifestsFlag(cmd *cobra.Command, dir *string) {
	cmd.Flags().StringVar(dir, "manifests", "", "read the tree from this directory instead of the copy embedded in kfistio")
}

func openTree(dir string) (*build.Tree, error) {
	if dir == "" {
		return build.Embedded()
	}
	return build.Dir(dir)
}

func overlayNames() string { return strings.Join(build.OverlayNames(), ", ") }

func overlayList() string {
	var parts []string
	for _, o := range build.Overlays {
		parts = append(parts, o.Name+" ("+o.Help+")")
	}
	return strings.Join(parts, ", ")
}

// exactArgs is cobra.ExactArgs with a message that says what is missing.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s expects %s; see '%s --help'", cmd.CommandPath(), what, cmd.CommandPath())
		}
		return nil
	}
}

package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kubeflow/kfistio/internal/tree"
	"github.com/kubeflow/kfistio/internal/upstream"
)

func newSyncCommand(s Streams) *cobra.Command {
	var (
		root  string
		check bool
	)
	cmd := &cobra.Command{
		Use:   "sync",
		Short: "Regenerate the upstream part of the tree from the pinned Istio release",
		Long: `Render Istio ` + upstream.Release + ` in-process from the IstioOperator files under upstream/,
split the result into the directories of manifests/, and write the generated
files (the ones that start with "` + tree.Header + `").
Files that are already right are not touched; generated files that are no
longer produced are removed.

With --check nothing is written: sync prints a unified diff of every generated
file that differs from a fresh render and exits 1 if there is any.`,
		Example: `  # After changing upstream/*.yaml or the pinned release
  kfistio sync

  # In CI: fail when the committed tree is not what sync would write
  kfistio sync --check`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := os.Stat(filepath.Join(root, tree.ProfileInput)); err != nil {
				return fmt.Errorf("%s not found under %q: run sync from the repository root or pass --dir: %w", tree.ProfileInput, root, err)
			}
			st := newProgress(s.Err)
			st.start("Rendering Istio " + upstream.Release)
			gen, err := tree.Generate(root)
			st.end(err == nil)
			if err != nil {
				return err
			}
			for _, w := range gen.Warnings {
				fmt.Fprintf(s.Err, "Warning: %s\n", w)
			}
			manifests := filepath.Join(root, "manifests")
			if check {
				changes, err := tree.Compare(manifests, gen.Files)
				if err != nil {
					return err
				}
				for _, c := range changes {
					fmt.Fprint(s.Out, c.Diff)
				}
				if len(changes) > 0 {
					return &ExitError{Code: 1, Err: fmt.Errorf("%d generated file(s) differ from a fresh render: run kfistio sync and commit the result", len(changes))}
				}
				fmt.Fprintf(s.Err, "%d generated files match a fresh render\n", len(gen.Files))
				return nil
			}
			changes, err := tree.Write(manifests, gen.Files)
			if err != nil {
				return err
			}
			for _, c := range changes {
				fmt.Fprintf(s.Err, "wrote manifests/%s\n", c.Path)
			}
			fmt.Fprintf(s.Err, "%d generated files, %d changed\n", len(gen.Files), len(changes))
			return nil
		},
	}
	cmd.Flags().StringVar(&root, "dir", ".", "repository root: the directory that holds upstream/ and manifests/")
	cmd.Flags().BoolVar(&check, "check", false, "write nothing; print a diff and exit 1 if the tree differs from a fresh render")
	return cmd
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// Streams are the command's standard streams: data goes to Out, progress and
// messages to Err.
type Streams struct {
	In       io.Reader
	Out, Err io.Writer
}

// ExitError carries an exit code other than 1. A nil Err means the command has
// already said everything it had to say.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// Main runs kfistio with args and returns the process exit code. It is the one
// place that turns an error into an exit code.
func Main(ctx context.Context, args []string, s Streams) int {
	root := NewRootCommand(s)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var exit *ExitError
	if errors.As(err, &exit) {
		if exit.Err != nil {
			fmt.Fprintf(s.Err, "Error: %v\n", exit.Err)
		}
		return exit.Code
	}
	fmt.Fprintf(s.Err, "Error: %v\n", err)
	return 1
}

// NewRootCommand returns the kfistio command with every subcommand.
func NewRootCommand(s Streams) *cobra.Command {
	root := &cobra.Command{
		Use:   "kfistio",
		Short: "The Istio distribution of Kubeflow",
		Long: `kfistio owns the Kubeflow Istio tree end to end: it generates the tree from
the pinned upstream Istio release (sync), builds it (build), proves what it
promises (verify), installs it on a cluster in stages and waits for it
(install), shows and removes what it installed (diff, status, uninstall), and
finds why workloads misbehave under the mesh (doctor).

The tree is embedded in the binary; every command that reads it can read a
tree on disk instead with --manifests.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetIn(s.In)
	root.SetOut(s.Out)
	root.SetErr(s.Err)
	root.AddCommand(
		newSyncCommand(s),
		newBuildCommand(s),
		newVerifyCommand(s),
		newInstallCommand(s),
		newDiffCommand(s),
		newStatusCommand(s),
		newUninstallCommand(s),
		newUpgradeCommand(s),
		newDoctorCommand(s),
		newVersionCommand(s),
	)
	return root
}

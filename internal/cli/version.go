package cli

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/kubeflow/kfistio/internal/upstream"
)

// version is set at link time with -ldflags "-X github.com/kubeflow/kfistio/internal/cli.version=...".
var version = ""

type versionInfo struct {
	Version      string `json:"version"`
	IstioRelease string `json:"istioRelease"`
	IstioModule  string `json:"istioModule"`
}

func currentVersion() versionInfo {
	v := version
	if v == "" {
		v = "devel"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	return versionInfo{
		Version:      v,
		IstioRelease: upstream.Release,
		IstioModule:  upstream.ModulePath + " " + upstream.ModuleVersion,
	}
}

func newVersionCommand(s Streams) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the kfistio version and the Istio release it carries",
		Long: `Print the version of kfistio and the Istio release whose manifests it
embeds and renders.`,
		Example: `  kfistio version
  kfistio version -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := currentVersion()
			return writeOutput(s.Out, output, v, func() error {
				_, err := fmt.Fprintf(s.Out, "kfistio %s\nIstio %s (%s)\n", v.Version, v.IstioRelease, v.IstioModule)
				return err
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

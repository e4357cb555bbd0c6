package cli

import (
	"github.com/spf13/cobra"

	"github.com/kubeflow/kfistio/internal/verify"
)

func newVerifyCommand(s Streams) *cobra.Command {
	var (
		manifestsDir string
		output       string
	)
	cmd := &cobra.Command{
		Use:   "verify [OVERLAY|DIR...]",
		Short: "Prove the tree's promises offline: facts, Pod Security, injection, schemas",
		Long: `Build the tree and check, without a cluster:

  F1-F18  the facts of the distribution (CNI, native sidecars, gateways,
          authorization, mesh config, seccomp, versions, ...), each where it
          applies;
  F12     every pod template against the Pod Security Standards level its
          namespace enforces in the build;
  INJECT  Istio's own injector on sample Kubeflow workloads (a restricted
          Deployment, one with an init container, a KServe predictor, a
          notebook): native sidecar, istio-validation or istio-init, proxy
          release, and the Pod Security level of the injected pod;
  SCHEMA  every object against its schema: built-in kinds against the
          Kubernetes API, Istio kinds against the CRDs of the tree.

With no argument, verify checks the installation of every install overlay (the
CRDs, namespace, overlay, cluster-local gateway and Kubeflow resources built as
one, as install applies them) and every directory of the tree. An OVERLAY
(` + overlayNames() + `) checks its installation and its directory; a DIR of
the tree checks that directory.

Exit status: 0 when every check passes, 1 when one fails.`,
		Example: `  kfistio verify
  kfistio verify gke -o json
  kfistio verify cluster-local-gateway/overlays/m2m-auth
  kfistio verify --manifests ./manifests`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(output); err != nil {
				return err
			}
			tree, err := openTree(manifestsDir)
			if err != nil {
				return err
			}
			rep, err := verify.Run(verify.Options{Tree: tree, Targets: args})
			if err != nil {
				return err
			}
			if err := writeOutput(s.Out, output, rep, func() error { return rep.WriteText(s.Out) }); err != nil {
				return err
			}
			if !rep.Passed {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	addManifestsFlag(cmd, &manifestsDir)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/build"
	"github.com/kubeflow/kfistio/internal/install"
	"github.com/kubeflow/kfistio/internal/kube"
	"github.com/kubeflow/kfistio/internal/upstream"
)

// clusterFlags are the flags that choose a cluster, as kubectl's do.
type clusterFlags struct {
	kubeconfig, context string
	timeout             time.Duration
	concurrency         int
}

func (f *clusterFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	cmd.Flags().StringVar(&f.context, "context", "", "kubeconfig context (default: the current context)")
	cmd.Flags().IntVar(&f.concurrency, "concurrency", kube.DefaultConcurrency, "API requests to keep in flight")
}

// addTimeout adds --timeout, for the commands that wait.
func (f *clusterFlags) addTimeout(cmd *cobra.Command, what string) {
	cmd.Flags().DurationVar(&f.timeout, "timeout", install.DefaultTimeout, what)
}

// connect connects to the cluster; the API server's warnings go to warnings.
func (f *clusterFlags) connect(ctx context.Context, warnings io.Writer) (*kube.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return kube.Connect(ctx, kube.Options{Kubeconfig: f.kubeconfig, Context: f.context, Warnings: warnings, Concurrency: f.concurrency})
}

// runE is the RunE of a command that works on a cluster: it checks the
// output format (when the command has one), connects, and calls fn.
func (f *clusterFlags) runE(s Streams, output *string, fn func(context.Context, *kube.Client) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if output != nil {
			if err := checkFormat(*output); err != nil {
				return err
			}
		}
		c, err := f.connect(cmd.Context(), s.Err)
		if err != nil {
			return err
		}
		return fn(cmd.Context(), c)
	}
}

// installationFlags choose what an install applies.
type installationFlags struct {
	overlay             string
	clusterLocalGateway string
	kubeflowResources   bool
	components          []string
	oauth2ProxyPolicies bool
	manifests           string
	revision            string
	// flags are the command's, to tell flags given from defaults.
	flags *pflag.FlagSet
}

const autoOverlay = "auto"

func (f *installationFlags) add(cmd *cobra.Command) {
	f.flags = cmd.Flags()
	cmd.Flags().StringVar(&f.overlay, "overlay", autoOverlay, "install overlay: "+overlayNames()+", or auto (gke on GKE, else "+build.DefaultOverlay+")")
	cmd.Flags().StringVar(&f.clusterLocalGateway, "cluster-local-gateway", "base", "the KServe cluster-local gateway: base, m2m-auth, or none")
	cmd.Flags().BoolVar(&f.kubeflowResources, "kubeflow-resources", true, "install kubeflow-gateway and the Kubeflow ClusterRoles")
	cmd.Flags().StringSliceVar(&f.components, "component", nil, "opt-in components to add: "+componentNames())
	cmd.Flags().BoolVar(&f.oauth2ProxyPolicies, "oauth2-proxy-policies", false, "add the ingress gateway's oauth2-proxy AuthorizationPolicies and the Dex RequestAuthentication (component "+build.OAuth2ProxyPolicies+"); use it only where oauth2-proxy is installed without Kubeflow's common/oauth2-proxy, which defines them itself")
	addManifestsFlag(cmd, &f.manifests)
}

// addRevision adds --revision, for the commands that take an installation
// as it is or will be.
func (f *installationFlags) addRevision(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.revision, "revision", "", "the control plane as revision "+upstream.Revision+" (istiod-"+upstream.Revision+
		", the default tag pointing at it) rather than as the default control plane; by default, the revision kfistio installed, if any")
}

// changed reports whether the flag name was given.
func (f *installationFlags) changed(name string) bool { return f.flags != nil && f.flags.Changed(name) }

// installation turns the flags into an installation. With the overlay auto,
// it detects the platform and says what it saw on progress.
func (f *installationFlags) installation(ctx context.Context, c *kube.Client, progress io.Writer) (build.Installation, error) {
	in := build.Installation{Overlay: f.overlay, KubeflowResources: f.kubeflowResources, Components: f.components, Revision: f.revision}
	if f.oauth2ProxyPolicies && !slices.Contains(in.Components, build.OAuth2ProxyPolicies) {
		in.Components = append(slices.Clone(in.Components), build.OAuth2ProxyPolicies)
	}
	switch f.clusterLocalGateway {
	case "base":
		in.ClusterLocalGateway = true
	case "m2m-auth":
		in.ClusterLocalGateway, in.M2MAuth = true, true
	case "none":
	default:
		return in, fmt.Errorf("--cluster-local-gateway %q: use base, m2m-auth or none", f.clusterLocalGateway)
	}
	if in.Overlay == autoOverlay {
		p, err := install.DetectPlatform(ctx, c)
		if err != nil {
			return in, err
		}
		in.Overlay = build.DefaultOverlay
		if p.GKE {
			in.Overlay = "gke"
			fmt.Fprintf(progress, "Detected GKE: %s. Using the gke overlay (CNI binaries in /home/kubernetes/bin).\n", p.Reason)
		} else {
			fmt.Fprintf(progress, "No GKE detected (%s). Using the %s overlay.\n", p.Reason, in.Overlay)
		}
	}
	if _, ok := build.LookupOverlay(in.Overlay); !ok {
		return in, fmt.Errorf("unknown overlay %q: choose one of %s, or auto", in.Overlay, overlayNames())
	}
	return in, nil
}

// resolve turns the flags into an installation, its objects and the labels
// its overlay needs on other namespaces. Without --revision, the revision
// is the one kfistio installed, if any.
func (f *installationFlags) resolve(ctx context.Context, c *kube.Client, progress io.Writer) (build.Installation, []*unstructured.Unstructured, []*unstructured.Unstructured, error) {
	if !f.changed("revision") {
		inv, err := (&install.Installer{Client: c}).ReadInventory(ctx)
		switch {
		case err == nil:
			f.revision = inv.Revision
		case !errors.Is(err, install.ErrNotInstalled):
			return build.Installation{}, nil, nil, err
		}
	}
	in, err := f.installation(ctx, c, progress)
	if err != nil {
		return in, nil, nil, err
	}
	tree, err := openTree(f.manifests)
	if err != nil {
		return in, nil, nil, err
	}
	objs, labels, err := tree.InstallationParts(in)
	return in, objs, labels, err
}

func componentNames() string { return strings.Join(build.OptionalComponentNames(), ", ") }

// progressFunc turns install events into ✓/✗ lines on w.
func progressFunc(w io.Writer) func(install.Event) {
	p := newProgress(w)
	return func(e install.Event) {
		if e.Done {
			p.end(e.Err == nil)
		} else {
			p.start(e.Step)
		}
	}
}

// writeOutput writes v as JSON, or calls text.
func writeOutput(w io.Writer, format string, v any, text func() error) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "text":
		return text()
	}
	return fmt.Errorf("unknown output format %q: use text or json", format)
}

func checkFormat(format string) error {
	if format != "text" && format != "json" {
		return fmt.Errorf("unknown output format %q: use text or json", format)
	}
	return nil
}

func writeChanges(w io.Writer, cs install.ChangeSet, dryRun bool) error {
	suffix := ""
	if dryRun {
		suffix = " (dry run)"
	}
	for _, c := range cs {
		line := fmt.Sprintf("%s %s%s", c.Object, c.Action, suffix)
		if c.Note != "" {
			line += " (" + c.Note + ")"
		}
		for _, f := range c.Removed {
			line += "\n  removed " + f
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}

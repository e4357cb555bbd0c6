package build

import (
	"fmt"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kubeflow/kfistio/internal/upstream"
)

// Tree directories that an installation combines with an install overlay.
const (
	CRDsDir             = "istio-crds/base"
	InsecureLabelsDir   = "namespace-labels/insecure"
	AmbientLabelsDir    = "namespace-labels/ambient"
	InstallBaseDir      = "istio-install/base"
	ExampleDir          = "example"
	NamespaceDir        = "istio-namespace/base"
	ClusterLocalGateway = "cluster-local-gateway/base"
	ClusterLocalM2MAuth = "cluster-local-gateway/overlays/m2m-auth"
	// The cluster-local gateway on the control plane revision.
	ClusterLocalGatewayRevision = "cluster-local-gateway/revision/base"
	ClusterLocalM2MAuthRevision = "cluster-local-gateway/revision/m2m-auth"
	KubeflowResourcesDir        = "kubeflow-istio-resources/base"
	// GitOpsDir holds the Flux and Argo CD objects that install the tree from
	// kubeflow/manifests, where it lives at KubeflowPath.
	GitOpsDir    = "gitops"
	KubeflowPath = "common/istio"
	// LabelsComponent is, under a namespace-labels directory, the kustomize
	// Component with the same labels, for GitOps tools.
	LabelsComponent = "component"
)

// Installation is what `kfistio install` applies: the CRDs, the namespace, an
// install overlay, and the optional parts.
type Installation struct {
	Overlay string
	// ClusterLocalGateway adds the cluster-local gateway; M2MAuth takes it with
	// machine-to-machine authentication.
	ClusterLocalGateway bool
	M2MAuth             bool
	// KubeflowResources adds kubeflow-gateway and the Kubeflow ClusterRoles.
	KubeflowResources bool
	// Components are opt-in components of istio-install/components
	// (OptionalComponents) applied to the whole installation.
	Components []string
	// Revision, when set, is the control plane revision of the tree
	// (upstream.Revision): the overlay's revision twin, with the default tag
	// pointing at it, and the gateways on it.
	Revision string
}

// OptionalComponents are the components of istio-install/components that an
// installation may add.
var OptionalComponents = map[string]string{
	"sidecar-egress":    "istio-install/components/sidecar-egress",
	OAuth2ProxyPolicies: "istio-install/components/oauth2-proxy-policies",
}

// OAuth2ProxyPolicies is the opt-in component with the ingress gateway's
// oauth2-proxy policies, for clusters without Kubeflow's common/oauth2-proxy,
// which defines them itself. It needs an overlay with the oauth2-proxy
// provider.
const OAuth2ProxyPolicies = "oauth2-proxy-policies"

// DefaultInstallation is the documented combination for overlay.
func DefaultInstallation(overlay string) Installation {
	return Installation{Overlay: overlay, ClusterLocalGateway: true, KubeflowResources: true}
}

// Dirs returns the tree directories in. combines.
func (in Installation) Dirs() ([]string, error) {
	o, ok := LookupOverlay(in.Overlay)
	if !ok {
		return nil, unknownOverlay(in.Overlay)
	}
	if in.Revision == "" {
		dirs := []string{CRDsDir, NamespaceDir, o.Path}
		switch {
		case in.M2MAuth:
			dirs = append(dirs, ClusterLocalM2MAuth)
		case in.ClusterLocalGateway:
			dirs = append(dirs, ClusterLocalGateway)
		}
		return in.withKubeflowResources(dirs), nil
	}
	switch {
	case in.Revision != upstream.Revision:
		return nil, fmt.Errorf("the tree holds the control plane of Istio %s as revision %s, not %s", upstream.Release, upstream.Revision, in.Revision)
	case o.RevisionPath == "":
		return nil, fmt.Errorf("overlay %s has no revision: %s", in.Overlay, NoRevisionReason)
	}
	dirs := []string{CRDsDir, NamespaceDir, o.RevisionPath}
	switch {
	case in.M2MAuth:
		dirs = append(dirs, ClusterLocalM2MAuthRevision)
	case in.ClusterLocalGateway:
		dirs = append(dirs, ClusterLocalGatewayRevision)
	}
	return in.withKubeflowResources(dirs), nil
}

// NoRevisionReason says why the ambient overlays have no revision.
const NoRevisionReason = "in ambient mode ztunnel and the CNI node agent serve every pod of a node and Istio upgrades them in place only; upgrade an ambient installation in place, one minor release at a time"

func (in Installation) withKubeflowResources(dirs []string) []string {
	if in.KubeflowResources {
		dirs = append(dirs, KubeflowResourcesDir)
	}
	return dirs
}

// Name says what in. is, for messages: the overlay and its optional parts.
func (in Installation) Name() string {
	n := in.Overlay
	if in.Revision != "" {
		n += "@" + in.Revision
	}
	switch {
	case in.M2MAuth:
		n += "+cluster-local-gateway(m2m-auth)"
	case in.ClusterLocalGateway:
		n += "+cluster-local-gateway"
	}
	if in.KubeflowResources {
		n += "+kubeflow-istio-resources"
	}
	for _, c := range in.Components {
		n += "+" + c
	}
	return n
}

// BuildInstallation builds in. as one kustomization, so that ids that clash
// between its parts are an error, as they are for `kubectl apply -k` of such a
// kustomization.
func (t *Tree) BuildInstallation(in Installation) (*Result, error) {
	dirs, err := in.Dirs()
	if err != nil {
		return nil, err
	}
	var resources, components []string
	for _, d := range dirs {
		resources = append(resources, t.fromBeside(d))
	}
	for _, c := range in.Components {
		p, ok := OptionalComponents[c]
		if !ok {
			return nil, fmt.Errorf("unknown component %q: choose from %s", c, strings.Join(OptionalComponentNames(), ", "))
		}
		if o, _ := LookupOverlay(in.Overlay); c == OAuth2ProxyPolicies && !o.OAuth2Proxy {
			return nil, fmt.Errorf("component %s: overlay %s has no oauth2-proxy provider in its mesh config; choose an overlay with oauth2-proxy", c, in.Overlay)
		}
		components = append(components, t.fromBeside(p))
	}
	name := strings.NewReplacer("+", "_", "(", "_", ")", "", "@", "_").Replace(in.Name())
	res, err := t.runBeside("installation", name, resources, components, nil)
	if err != nil {
		return nil, fmt.Errorf("build installation %s: %w", in.Name(), err)
	}
	res.Dir = in.Name()
	return res, nil
}

// OptionalComponentNames returns the names of OptionalComponents, sorted.
func OptionalComponentNames() []string {
	var names []string
	for n := range OptionalComponents {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func unknownOverlay(name string) error {
	return fmt.Errorf("unknown overlay %q: choose one of %v", name, OverlayNames())
}

// InstallationObjects is BuildInstallation followed by Objects.
func (t *Tree) InstallationObjects(in Installation) ([]*unstructured.Unstructured, error) {
	r, err := t.BuildInstallation(in)
	if err != nil {
		return nil, err
	}
	return r.Objects()
}

// InstallationParts returns what an install of in applies: the objects of
// its build and the labels its overlay needs on other namespaces.
func (t *Tree) InstallationParts(in Installation) (objs, labels []*unstructured.Unstructured, err error) {
	if objs, err = t.InstallationObjects(in); err != nil {
		return nil, nil, err
	}
	labels, err = t.NamespaceLabels(in)
	return objs, labels, err
}

// EmbeddedNamespaceLabels is NamespaceLabels of the embedded tree.
func EmbeddedNamespaceLabels(in Installation) ([]*unstructured.Unstructured, error) {
	t, err := Embedded()
	if err != nil {
		return nil, err
	}
	return t.NamespaceLabels(in)
}

// NamespaceLabels returns the Namespaces of the labels directory of in.'s
// overlay (Overlay.LabelsDir): each holds only the labels the overlay needs on
// a namespace that other Kubeflow directories define. Nil when it needs none.
func (t *Tree) NamespaceLabels(in Installation) ([]*unstructured.Unstructured, error) {
	o, ok := LookupOverlay(in.Overlay)
	if !ok {
		return nil, unknownOverlay(in.Overlay)
	}
	if o.LabelsDir() == "" {
		return nil, nil
	}
	return t.BuildObjects(o.LabelsDir())
}

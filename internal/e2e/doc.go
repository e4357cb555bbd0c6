// Package e2e holds the tests of the tree against the mesh's own control
// plane: `kfistio install` of each overlay on the local control plane
// (internal/testcluster) with the real istiod of the pinned release running
// as the installed istiod Deployment, inside a cluster that also holds the
// Kubeflow parts the tree relies on (oauth2-proxy's Service, Dex, the
// service-account JWKS proxy). They check what istiod does with the tree:
// it starts, writes its webhooks' CA bundles, injects sidecars as verify
// simulates, validates Istio config with and without istio.io/rev, and sends
// gateways and sidecars the listeners and clusters the tree promises.
package e2e

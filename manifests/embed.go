// Package manifests embeds the kustomize tree, so the kfistio binary alone is
// enough to build, verify and install it.
package manifests

import "embed"

// FS holds every kustomization directory of the tree.
//
//go:embed istio-crds istio-namespace istio-install cluster-local-gateway kubeflow-istio-resources namespace-labels example gitops
var FS embed.FS

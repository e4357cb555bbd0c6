// Package build runs kustomize (sigs.k8s.io/kustomize/api/krusty) in-process on
// the embedded tree or on a tree on disk, and names the overlays users type.
package build

// Package tree owns the generated part of manifests/: which upstream renders
// make which files, how a render is split, how a variant render becomes a
// kustomize patch set, and writing or checking those files.
package tree

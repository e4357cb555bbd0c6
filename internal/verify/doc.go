// Package verify proves, offline, that a built tree keeps the promises of the
// distribution: the facts F1-F18, Pod Security Standards, what Istio's injector
// does to Kubeflow workloads, and that every object fits its schema.
package verify

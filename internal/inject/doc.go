// Package inject runs Istio's own sidecar injector (istio.io/istio/pkg/kube/inject,
// the code behind `istioctl kube-inject`) with the injector configuration of a
// built tree, so that what the tree does to workloads can be checked offline.
package inject

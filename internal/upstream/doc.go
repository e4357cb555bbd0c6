// Package upstream renders the pinned Istio release in-process with Istio's own
// operator code (istio.io/istio/operator/pkg/render) and its embedded charts, and
// returns the objects in a stable order.
package upstream

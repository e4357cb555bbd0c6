// Package doctor finds why workloads misbehave under the mesh, before they
// are deployed (from manifests) and once they run (on a live cluster): init
// containers whose traffic a proxy cannot serve, storage initializers that
// need egress outside the mesh, UID 1337 hiding traffic, Pod Security levels
// that injected pods no longer meet, and the cluster-side causes (CNI agent
// not ready, wrong overlay for GKE, old proxies, webhooks without a CA).
// Each finding has an id, a severity, a reason and a fix; workload fixes can
// be applied to the manifests.
package doctor

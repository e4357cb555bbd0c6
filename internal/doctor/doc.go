// Package doctor finds why workloads misbehave under the mesh, before they
// are deployed (from manifests) and once they run (on a live cluster): init
// containers whose traffic a proxy cannot serve yet or the mesh refuses,
// storage initializers that download through the sidecar, UID 1337 hiding
// traffic, Pod Security levels that injected pods no longer meet, and the
// cluster-side causes (CNI agent not ready, wrong overlay for GKE, old
// proxies, webhooks without a CA). A finding is a warning or an error only
// with evidence that traffic fails; each has an id, a reason and a fix, and
// workload fixes can be applied to the manifests.
package doctor

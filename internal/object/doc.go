// Package object holds the few operations every other package needs on
// Kubernetes objects: their Kind/namespace/name key, a stable order, and
// reading and writing multi-document YAML.
package object

// Package install applies an installation to a live cluster with server-side
// apply, in stages, and waits for it; it also diffs, reports status, and
// uninstalls. It records what it applied in an inventory ConfigMap and marks
// every object it owns with a label, so that switching overlays prunes what
// the new one no longer has.
package install

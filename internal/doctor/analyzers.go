package doctor

import (
	"maps"
	"slices"

	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/analysis"
	"istio.io/istio/pkg/config/analysis/analyzers"
	"istio.io/istio/pkg/config/resource"
)

// namespaceLocal names the analyzers of the pinned release that relate
// resources of one namespace only. Istio's ServiceAssociationAnalyzer
// matches every Deployment against every Service of the cluster before it
// compares their namespaces: 9 million selectors at 1000 profiles of three
// of each, most of doctor's time. Run one namespace at a time, it finds the
// same conflicts (TestCluster: a Deployment behind two Services).
var namespaceLocal = map[string]bool{"deployment.MultiServiceAnalyzer": true}

// combinedAnalyzers are Istio's analyzers (analyzers.All, as istioctl
// analyze runs them), those of namespaceLocal one namespace at a time.
func combinedAnalyzers() analysis.CombinedAnalyzer {
	all := analyzers.All()
	for i, a := range all {
		if namespaceLocal[a.Metadata().Name] {
			all[i] = byNamespace{a}
		}
	}
	return analysis.Combine("all", all...)
}

// byNamespace runs an analyzer once per namespace, each run seeing the
// namespaced resources of its inputs in that namespace only, and every
// cluster-scoped one.
type byNamespace struct{ analysis.Analyzer }

func (b byNamespace) Analyze(c analysis.Context) {
	// namespaced[namespace][kind] are the namespaced resources of the inputs.
	namespaced := map[string]map[config.GroupVersionKind][]*resource.Instance{}
	scoped := map[config.GroupVersionKind]bool{}
	for _, g := range b.Metadata().Inputs {
		c.ForEach(g, func(r *resource.Instance) bool {
			ns := r.Metadata.FullName.Namespace.String()
			if ns == "" {
				return true
			}
			scoped[g] = true
			if namespaced[ns] == nil {
				namespaced[ns] = map[config.GroupVersionKind][]*resource.Instance{}
			}
			namespaced[ns][g] = append(namespaced[ns][g], r)
			return true
		})
	}
	for _, ns := range slices.Sorted(maps.Keys(namespaced)) {
		if c.Canceled() {
			return
		}
		b.Analyzer.Analyze(namespaceContext{Context: c, of: namespaced[ns], scoped: scoped})
	}
}

// namespaceContext is an analysis context whose namespaced collections
// hold the resources of one namespace.
type namespaceContext struct {
	analysis.Context
	of     map[config.GroupVersionKind][]*resource.Instance
	scoped map[config.GroupVersionKind]bool
}

func (n namespaceContext) ForEach(g config.GroupVersionKind, fn analysis.IteratorFn) {
	if !n.scoped[g] {
		n.Context.ForEach(g, fn)
		return
	}
	for _, r := range n.of[g] {
		if !fn(r) {
			return
		}
	}
}

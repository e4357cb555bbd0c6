package object

import "sort"

// Canonical returns v (a decoded object or part of one) in a form where two
// values that mean the same to the API server are equal: null fields and
// empty labels or annotations of metadata are dropped, and lists of items
// keyed by name or mountPath (containers, env, volumes, mounts) are sorted by
// that key, as their order means nothing and strategic-merge patches reorder
// them.
func Canonical(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			if e != nil {
				out[k] = Canonical(e)
			}
		}
		if meta, ok := out["metadata"].(map[string]any); ok {
			for _, k := range []string{"labels", "annotations"} {
				if m, ok := meta[k].(map[string]any); ok && len(m) == 0 {
					delete(meta, k)
				}
			}
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = Canonical(e)
		}
		sort.SliceStable(out, func(i, j int) bool { return listKey(out[i]) < listKey(out[j]) })
		return out
	}
	return v
}

func listKey(v any) string {
	m, ok := v.(map[string]any)
	if !ok {
		return ""
	}
	for _, k := range []string{"name", "mountPath"} {
		if s, ok := m[k].(string); ok {
			return s
		}
	}
	return ""
}

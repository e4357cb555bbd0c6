package object

import "github.com/pmezard/go-difflib/difflib"

// Diff is the unified diff from a (called from) to b (called to).
func Diff(from, to string, a, b []byte) string {
	d, _ := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A:        difflib.SplitLines(string(a)),
		B:        difflib.SplitLines(string(b)),
		FromFile: from,
		ToFile:   to,
		Context:  3,
	})
	return d
}

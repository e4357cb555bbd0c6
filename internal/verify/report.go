package verify

import (
	"fmt"
	"io"
	"strings"
)

// Problem is one way a target breaks a check.
type Problem struct {
	// Object is Kind/namespace/name.
	Object string `json:"object,omitempty"`
	// Field is the path in the object, or a description of what was looked at.
	Field string `json:"field,omitempty"`
	Found string `json:"found,omitempty"`
	Want  string `json:"want,omitempty"`
	// Reason says what is wrong when found/want do not.
	Reason string `json:"reason,omitempty"`
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.Object)
	if p.Field != "" {
		if b.Len() > 0 {
			b.WriteString(" ")
		}
		b.WriteString(p.Field)
	}
	if p.Found != "" || p.Want != "" {
		fmt.Fprintf(&b, ": found %s, want %s", orNone(p.Found), p.Want)
	}
	if p.Reason != "" {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(p.Reason)
	}
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return "nothing"
	}
	return s
}

// Check is the outcome of one check on one target.
type Check struct {
	ID       string    `json:"id"`
	Title    string    `json:"title"`
	Passed   bool      `json:"passed"`
	Problems []Problem `json:"problems,omitempty"`
}

// Target is a build that was checked: an installation (what `kfistio install`
// applies for an overlay) or a directory of the tree.
type Target struct {
	Name   string  `json:"name"`
	Kind   string  `json:"kind"`
	Passed bool    `json:"passed"`
	Checks []Check `json:"checks"`
}

// Report is the outcome of Run.
type Report struct {
	Release string   `json:"istioRelease"`
	Passed  bool     `json:"passed"`
	Targets []Target `json:"targets"`
}

// Failed returns "target: check id" for every failed check.
func (r *Report) Failed() []string {
	var out []string
	for _, t := range r.Targets {
		for _, c := range t.Checks {
			if !c.Passed {
				out = append(out, t.Name+": "+c.ID)
			}
		}
	}
	return out
}

// WriteText writes r for people: a ✓ or ✗ line per check, and under each ✗
// the problems found.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, t := range r.Targets {
		fmt.Fprintf(&b, "%s %s\n", t.Kind, t.Name)
		for _, c := range t.Checks {
			mark := "✓"
			if !c.Passed {
				mark = "✗"
			}
			fmt.Fprintf(&b, "  %s %-6s %s\n", mark, c.ID, c.Title)
			for _, p := range c.Problems {
				fmt.Fprintf(&b, "      %s\n", p)
			}
		}
	}
	failed := r.Failed()
	if len(failed) == 0 {
		fmt.Fprintf(&b, "All checks passed on %d builds (Istio %s).\n", len(r.Targets), r.Release)
	} else {
		fmt.Fprintf(&b, "%d checks failed: %s\n", len(failed), strings.Join(failed, ", "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

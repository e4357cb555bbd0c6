package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Severity ranks findings.
type Severity string

// Severities, from the least to the most severe. Warnings and errors need
// evidence that something fails; a tip without such evidence is info.
const (
	Info    Severity = "info"
	Warning Severity = "warning"
	Error   Severity = "error"
)

// ParseSeverity reads a severity name.
func ParseSeverity(s string) (Severity, error) {
	switch Severity(s) {
	case Info, Warning, Error:
		return Severity(s), nil
	}
	return "", fmt.Errorf("unknown severity %q: use info, warning or error", s)
}

func (s Severity) rank() int {
	switch s {
	case Error:
		return 2
	case Warning:
		return 1
	}
	return 0
}

// AtLeast reports whether s is as severe as o or more.
func (s Severity) AtLeast(o Severity) bool { return s.rank() >= o.rank() }

// Finding is one problem doctor can prove, and what to do about it.
type Finding struct {
	ID       string   `json:"id"`
	Severity Severity `json:"severity"`
	// Object is Kind/namespace/name of the workload or cluster object.
	Object string `json:"object"`
	// Container names the container, when the finding is about one
	// ("component/container" in workloads that run several kinds of pods).
	Container string `json:"container,omitempty"`
	// Source says where the object was read: a file and document, or the cluster.
	Source string `json:"source,omitempty"`
	Reason string `json:"reason"`
	Fix    string `json:"fix"`
	// Doc is the documentation page of an Istio analyzer's code.
	Doc string `json:"doc,omitempty"`
	// Fixed is true once --fix applied the fix; NotFixed says why it could
	// not, for a fix it tried.
	Fixed    bool   `json:"fixed,omitempty"`
	NotFixed string `json:"notFixed,omitempty"`
	// edit is the change --fix makes, when it can make one.
	edit *edit
}

// Fixable reports whether --fix can apply the finding's fix.
func (f Finding) Fixable() bool { return f.edit != nil }

// Report is what doctor found.
type Report struct {
	Findings []Finding `json:"findings"`
	// Checked counts the workloads (or cluster checks) looked at.
	Checked int `json:"checked"`
	// Notes say what was not looked at and why, and what was assumed.
	Notes []string `json:"notes,omitempty"`
	// Other counts, by kind, the objects that run no pods.
	Other map[string]int `json:"other,omitempty"`
	// Errors are the inputs doctor could not read.
	Errors []string `json:"errors,omitempty"`
}

// MarshalJSON writes the report with "findings": [] when there are none.
func (r *Report) MarshalJSON() ([]byte, error) {
	type plain Report
	c := *r
	if c.Findings == nil {
		c.Findings = []Finding{}
	}
	return json.Marshal((*plain)(&c))
}

// Worst returns the findings at or above min.
func (r *Report) Worst(min Severity) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Severity.AtLeast(min) {
			out = append(out, f)
		}
	}
	return out
}

// Remaining returns the findings at or above min that are not fixed.
func (r *Report) Remaining(min Severity) []Finding {
	var out []Finding
	for _, f := range r.Worst(min) {
		if !f.Fixed {
			out = append(out, f)
		}
	}
	return out
}

func (r *Report) sort() {
	sort.SliceStable(r.Findings, func(i, j int) bool {
		a, b := r.Findings[i], r.Findings[j]
		if a.Object != b.Object {
			return a.Object < b.Object
		}
		if a.Source != b.Source {
			return a.Source < b.Source
		}
		return a.ID < b.ID
	})
}

// WriteText writes r for people, grouped by object.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	last := ""
	for _, f := range r.Findings {
		if head := f.Object + f.Source; head != last {
			src := ""
			if f.Source != "" {
				src = " (" + f.Source + ")"
			}
			fmt.Fprintf(&b, "%s%s\n", f.Object, src)
			last = head
		}
		mark := map[Severity]string{Error: "✗", Warning: "!", Info: "i"}[f.Severity]
		subject := ""
		if f.Container != "" {
			subject = "container " + f.Container + ": "
		}
		fmt.Fprintf(&b, "  %s %s %-7s %s%s\n      fix: %s\n", mark, f.ID, f.Severity, subject, f.Reason, f.Fix)
		switch {
		case f.Fixed:
			b.WriteString("      fixed\n")
		case f.NotFixed != "":
			fmt.Fprintf(&b, "      not fixed: %s\n", f.NotFixed)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	if len(r.Other) > 0 {
		fmt.Fprintf(&b, "not workloads: %s\n", r.otherSummary())
	}
	for _, e := range r.Errors {
		fmt.Fprintf(&b, "error: %s\n", e)
	}
	counts := map[Severity]int{}
	for _, f := range r.Findings {
		counts[f.Severity]++
	}
	if len(r.Findings) == 0 {
		fmt.Fprintf(&b, "No findings in %d checked.\n", r.Checked)
	} else {
		fmt.Fprintf(&b, "%d findings (%d errors, %d warnings, %d info) in %d checked.\n",
			len(r.Findings), counts[Error], counts[Warning], counts[Info], r.Checked)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

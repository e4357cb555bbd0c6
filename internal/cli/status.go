package cli

import (
	"fmt"
	"io"
)

// status prints one line per step on the progress stream: the step when it
// starts, then ✓ or ✗ when it ends.
type status struct {
	w    io.Writer
	step string
}

func newStatus(w io.Writer) *status { return &status{w: w} }

func (s *status) start(step string) {
	s.step = step
	fmt.Fprintf(s.w, " • %s ...\n", step)
}

func (s *status) end(ok bool) {
	mark := "✓"
	if !ok {
		mark = "✗"
	}
	fmt.Fprintf(s.w, " %s %s\n", mark, s.step)
}

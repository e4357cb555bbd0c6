package cli

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"
)

// progress prints one line per step on the progress stream: a ✓ or ✗ line when
// the step ends. On a terminal the running step is animated; elsewhere its
// start is printed as a line of its own.
type progress struct {
	w    io.Writer
	tty  bool
	mu   sync.Mutex
	step string
	stop chan struct{}
	done chan struct{}
}

func newProgress(w io.Writer) *progress {
	f, ok := w.(*os.File)
	return &progress{w: w, tty: ok && term.IsTerminal(int(f.Fd()))}
}

var spinner = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

func (s *progress) start(step string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.step = step
	if !s.tty {
		fmt.Fprintf(s.w, " • %s ...\n", step)
		return
	}
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go func(stop, done chan struct{}) {
		defer close(done)
		for i := 0; ; i++ {
			fmt.Fprintf(s.w, "\r %s %s ", spinner[i%len(spinner)], step)
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}(s.stop, s.done)
}

func (s *progress) end(ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mark := "✓"
	if !ok {
		mark = "✗"
	}
	if s.tty && s.stop != nil {
		close(s.stop)
		<-s.done
		s.stop = nil
		fmt.Fprintf(s.w, "\r\033[K")
	}
	fmt.Fprintf(s.w, " %s %s\n", mark, s.step)
}

package install

import (
	"errors"
	"strings"
	"testing"
)

// Istio's in-place policy: one minor release either way; releases that are
// not Istio release numbers are not judged.
func TestCheckSkew(t *testing.T) {
	for _, c := range []struct {
		running, next string
		minors        int
	}{
		{"1.28.3", "1.29.1", 0},
		{"1.29.0", "1.29.1", 0},
		{"1.29.1", "1.28.2", 0},
		{"1.27.9", "1.29.1", 2},
		{"1.26.1", "1.29.1", 3},
		{"1.29.1", "1.27.0", 2},
		{"", "1.29.1", 0},
		{"latest", "1.29.1", 0},
	} {
		err := checkSkew(c.running, c.next)
		var se *SkewError
		switch {
		case c.minors == 0 && err != nil:
			t.Errorf("%s -> %s refused: %v", c.running, c.next, err)
		case c.minors > 0 && (!errors.As(err, &se) || se.Minors != c.minors):
			t.Errorf("%s -> %s: %v, want a refusal across %d minors", c.running, c.next, err, c.minors)
		case c.minors > 0:
			for _, want := range []string{"in-place", "kfistio upgrade start", "--unsupported-in-place", "nothing was changed"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("refusal does not say %q: %v", want, err)
				}
			}
		}
	}
}

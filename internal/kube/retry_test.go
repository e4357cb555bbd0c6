package kube

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// answers is a transport that gives its answers in turn, counting requests.
type answers struct {
	list []func() (*http.Response, error)
	sent int
}

func (a *answers) RoundTrip(r *http.Request) (*http.Response, error) {
	a.sent++
	if r.Body != nil {
		b, _ := io.ReadAll(r.Body)
		if string(b) != "body" {
			return nil, errors.New("body not sent again: " + string(b))
		}
	}
	if len(a.list) == 0 {
		return status(200, ""), nil
	}
	f := a.list[0]
	a.list = a.list[1:]
	return f()
}

func status(code int, retryAfter string) *http.Response {
	h := http.Header{}
	if retryAfter != "" {
		h.Set("Retry-After", retryAfter)
	}
	return &http.Response{StatusCode: code, Status: http.StatusText(code), Header: h,
		Body: io.NopCloser(strings.NewReader(`{"kind":"Status","message":"busy"}`))}
}

func answer(code int) func() (*http.Response, error) {
	return func() (*http.Response, error) { return status(code, ""), nil }
}

var reset = func() (*http.Response, error) { return nil, syscall.ECONNRESET }

func apply(t *testing.T) *http.Request {
	r, err := http.NewRequest(http.MethodPatch, "https://127.0.0.1/api/v1/namespaces/x/configmaps/y", strings.NewReader("body"))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Content-Type", "application/apply-patch+yaml")
	return r
}

func TestRetryingSurvivesFour(t *testing.T) {
	a := &answers{list: []func() (*http.Response, error){answer(429), answer(503), reset, answer(500)}}
	resp, err := retrying(a).RoundTrip(apply(t))
	if err != nil || resp.StatusCode != 200 || a.sent != Attempts {
		t.Fatalf("after four transient failures: %v, %v, %d sent", resp, err, a.sent)
	}
}

func TestRetryingGivesUpAtFive(t *testing.T) {
	a := &answers{list: []func() (*http.Response, error){answer(503), reset, answer(503), answer(502), answer(429)}}
	_, err := retrying(a).RoundTrip(apply(t))
	var re *RetryError
	if !errors.As(err, &re) || re.Status != 429 || a.sent != Attempts || !strings.Contains(err.Error(), "Too Many Requests: busy") {
		t.Fatalf("after five transient failures: %v, %d sent", err, a.sent)
	}
	// client-go retries resets of GETs by their text; the last error must
	// not look like one.
	if strings.Contains(err.Error(), "connection reset by peer") || errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the last error reads as a reset: %v", err)
	}
}

func TestRetryingLeavesTheRest(t *testing.T) {
	create, _ := http.NewRequest(http.MethodPost, "https://127.0.0.1/api/v1/namespaces", strings.NewReader("body"))
	a := &answers{list: []func() (*http.Response, error){answer(503)}}
	if resp, err := retrying(a).RoundTrip(create); err != nil || resp.StatusCode != 503 || a.sent != 1 {
		t.Errorf("a create was retried: %v, %v, %d sent", resp, err, a.sent)
	}
	a = &answers{list: []func() (*http.Response, error){answer(409)}}
	if resp, err := retrying(a).RoundTrip(apply(t)); err != nil || resp.StatusCode != 409 || a.sent != 1 {
		t.Errorf("a conflict was retried: %v, %v, %d sent", resp, err, a.sent)
	}
	get, _ := http.NewRequestWithContext(WithoutRetries(t.Context()), http.MethodGet, "https://127.0.0.1/api/v1/namespaces", nil)
	a = &answers{list: []func() (*http.Response, error){answer(503)}}
	if resp, err := retrying(a).RoundTrip(get); err != nil || resp.StatusCode != 503 || a.sent != 1 {
		t.Errorf("a poll was retried: %v, %v, %d sent", resp, err, a.sent)
	}
}

// silent is a transport whose first requests get no answer until they are
// cut; later ones get an answer whose body is read after the request
// returned.
type silent struct {
	quiet int
	sent  int
	done  []context.Context
}

func (s *silent) RoundTrip(r *http.Request) (*http.Response, error) {
	s.sent++
	s.done = append(s.done, r.Context())
	if s.sent <= s.quiet {
		<-r.Context().Done()
		return nil, r.Context().Err()
	}
	return status(200, ""), nil
}

// An attempt that gets no answer within AttemptTimeout is cut and sent
// again; four such are survived and the fifth ends the request, naming the
// wait. An answer's body stays readable after the request returned, and
// closing it releases the attempt.
func TestRetryingCutsSilence(t *testing.T) {
	old := AttemptTimeout
	AttemptTimeout = 20 * time.Millisecond
	t.Cleanup(func() { AttemptTimeout = old })

	s := &silent{quiet: Attempts - 1}
	get, _ := http.NewRequest(http.MethodGet, "https://127.0.0.1/api/v1/namespaces", nil)
	resp, err := retrying(s).RoundTrip(get)
	if err != nil || s.sent != Attempts {
		t.Fatalf("after four silent attempts: %v, %d sent", err, s.sent)
	}
	if b, err := io.ReadAll(resp.Body); err != nil || !strings.Contains(string(b), "busy") {
		t.Errorf("the answer's body: %q, %v", b, err)
	}
	last := s.done[len(s.done)-1]
	if last.Err() != nil {
		t.Errorf("the answer's context ended before its body was closed: %v", last.Err())
	}
	_ = resp.Body.Close()
	if last.Err() == nil {
		t.Errorf("closing the answer did not release its attempt")
	}

	s = &silent{quiet: Attempts}
	_, err = retrying(s).RoundTrip(get)
	var re *RetryError
	if !errors.As(err, &re) || s.sent != Attempts || !strings.Contains(err.Error(), "no answer within 20ms") {
		t.Fatalf("after five silent attempts: %v, %d sent", err, s.sent)
	}
}

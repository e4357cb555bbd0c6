package kube

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
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

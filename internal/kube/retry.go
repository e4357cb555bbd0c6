package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// Attempts is how many times a request is sent before a transient failure
// ends it: four transient failures in a row are survived, the fifth is the
// answer.
const Attempts = 5

// retryBackoff spaces the attempts when the server does not say how long to
// wait: 0.2s, 0.4s, 0.8s, 1.6s, with jitter.
var retryBackoff = wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: Attempts - 1, Cap: 10 * time.Second}

// maxRetryAfter caps how long a Retry-After answer makes a request wait.
const maxRetryAfter = 30 * time.Second

// AttemptTimeout bounds how long one attempt of a retried request waits for
// its answer to begin: longer than the API server's own limit for requests
// (60 s, after which it answers 504 itself), so only an answer that will not
// come is cut, such as from a proxy that keeps the connection but lost the
// server. Reading the answer, a watch's included, is not bounded.
var AttemptTimeout = 75 * time.Second

type noRetryKey struct{}

// WithoutRetries marks the requests made with ctx to be sent once: polls,
// which ask again anyway.
func WithoutRetries(ctx context.Context) context.Context {
	return context.WithValue(ctx, noRetryKey{}, true)
}

// RetryError is the last transient failure of a request that was sent
// Attempts times.
type RetryError struct {
	Attempts int
	// Status is the last HTTP status, 0 when the last attempt got no answer.
	Status int
	// Last describes the last failure.
	Last string
}

func (e *RetryError) Error() string {
	return fmt.Sprintf("gave up after %d attempts, each a transient failure; the last: %s", e.Attempts, e.Last)
}

// retrying wraps rt so that idempotent requests are sent again, with
// backoff, after a transient failure: 429 and 5xx answers (waiting as long
// as their Retry-After says, which is how the server's priority and fairness
// pushes back), a reset or refused connection, a timeout, no answer within
// AttemptTimeout. client-go retries
// some of these itself (429 with Retry-After, GETs whose connection broke);
// the error of the last attempt says that it was the last, so that it does
// not.
func retrying(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		if r.Context().Value(noRetryKey{}) != nil || !idempotent(r) {
			return rt.RoundTrip(r)
		}
		backoff := retryBackoff
		for attempt := 1; ; attempt++ {
			if attempt > 1 && r.Body != nil {
				body, err := r.GetBody()
				if err != nil {
					return nil, err
				}
				r = r.Clone(r.Context())
				r.Body = body
			}
			resp, late, err := sendOnce(rt, r)
			why, after := transient(r.Context(), resp, err)
			if late {
				why = fmt.Sprintf("no answer within %s", AttemptTimeout)
			}
			if why == "" {
				return resp, err
			}
			if resp != nil {
				_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
				_ = resp.Body.Close()
			}
			if attempt == Attempts {
				status := 0
				if resp != nil {
					status = resp.StatusCode
				}
				return nil, &RetryError{Attempts: attempt, Status: status, Last: why}
			}
			pause := backoff.Step()
			if after > pause {
				pause = min(after, maxRetryAfter)
			}
			select {
			case <-r.Context().Done():
				return nil, r.Context().Err()
			case <-time.After(pause):
			}
		}
	})
}

// sendOnce sends r once, cut when its answer does not begin within
// AttemptTimeout (late is then true); the answer's body is read under r's
// own context.
func sendOnce(rt http.RoundTripper, r *http.Request) (_ *http.Response, late bool, _ error) {
	ctx, cancel := context.WithCancel(r.Context())
	timer := time.AfterFunc(AttemptTimeout, cancel)
	resp, err := rt.RoundTrip(r.WithContext(ctx))
	if !timer.Stop() {
		// Cut: whatever came is abandoned.
		if resp != nil {
			_ = resp.Body.Close()
		}
		cancel()
		return nil, r.Context().Err() == nil, ctx.Err()
	}
	if err != nil {
		cancel()
		return nil, false, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, false, nil
}

// cancelOnClose releases an attempt's context when its answer is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// idempotent reports whether sending r twice does what sending it once
// does: reads, server-side applies, deletes (a repeat finds the object gone)
// and dry runs.
func idempotent(r *http.Request) bool {
	if r.Body != nil && r.Body != http.NoBody && r.GetBody == nil {
		return false
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodDelete:
		return true
	case http.MethodPatch:
		return r.Header.Get("Content-Type") == "application/apply-patch+yaml" || r.URL.Query().Get("dryRun") != ""
	}
	return r.URL.Query().Get("dryRun") != ""
}

// transient says why the answer (resp, err) is a transient failure, and how
// long the server asked to wait; "" when it is not one.
func transient(ctx context.Context, resp *http.Response, err error) (string, time.Duration) {
	if ctx.Err() != nil {
		return "", 0
	}
	if err != nil {
		var nerr net.Error
		switch {
		case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
			return "the connection was reset", 0
		case errors.Is(err, syscall.ECONNREFUSED):
			return "connection refused", 0
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return "the connection closed before the answer", 0
		case errors.As(err, &nerr) && nerr.Timeout():
			return "timed out", 0
		}
		return "", 0
	}
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode < 500 {
		return "", 0
	}
	var after time.Duration
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		after = time.Duration(s) * time.Second
	}
	why := resp.Status
	// The API server says more in a Status.
	var st metav1.Status
	if b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16)); err == nil && json.Unmarshal(b, &st) == nil && st.Message != "" {
		why += ": " + st.Message
	}
	return why, after
}

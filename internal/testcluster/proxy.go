package testcluster

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

// Proxy stands between clients and the API server, on the cluster's
// loopback address; Kubeconfig reaches the API server through it.
type Proxy struct {
	Kubeconfig string
	close      func()
}

// Close stops the proxy and closes its connections.
func (p *Proxy) Close() { p.close() }

// DelayProxy starts a TCP proxy that delivers every byte delay after it
// arrives, in each direction: a cluster delay away, without limiting
// throughput.
func (c *Cluster) DelayProxy(delay time.Duration) (*Proxy, error) {
	f, err := newForward(net.JoinHostPort(c.slot.host(), "0"), c.slot.hostPort(apiServerPort))
	if err != nil {
		return nil, err
	}
	f.delay = delay
	path, err := c.proxyKubeconfig("delay-"+delay.String(), f.l.Addr().String())
	if err != nil {
		f.close()
		return nil, err
	}
	return &Proxy{Kubeconfig: path, close: f.close}, nil
}

// Fault is what a FaultProxy does with one request.
type Fault int

// Faults.
const (
	// Pass forwards the request to the API server.
	Pass Fault = iota
	// TooManyRequests answers 429 with Retry-After: 1, as the API server's
	// priority and fairness does when a flow's queue is full.
	TooManyRequests
	// Unavailable answers 503.
	Unavailable
	// Reset resets the connection without an answer.
	Reset
	// Expired answers 410 with reason Expired, as the API server does to a
	// LIST whose continue token is too old.
	Expired
)

// FaultProxy starts an HTTPS proxy that terminates TLS with a certificate of
// the cluster's CA, asks decide what to do with each request and forwards
// those it passes as the cluster's admin. It speaks HTTP/1.1, so that a
// reset is a TCP reset.
func (c *Cluster) FaultProxy(decide func(*http.Request) Fault) (*Proxy, error) {
	p, err := loadPKI(c.Dir)
	if err != nil {
		return nil, err
	}
	if err := p.issue(c.Dir, "fault-proxy", pkix.Name{CommonName: "fault-proxy"}, []net.IP{net.ParseIP(c.slot.host())}, nil, x509.ExtKeyUsageServerAuth); err != nil {
		return nil, err
	}
	serving, err := tls.LoadX509KeyPair(filepath.Join(c.Dir, "fault-proxy.crt"), filepath.Join(c.Dir, "fault-proxy.key"))
	if err != nil {
		return nil, err
	}
	admin, err := tls.LoadX509KeyPair(filepath.Join(c.Dir, "admin.crt"), filepath.Join(c.Dir, "admin.key"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.caCert)
	target := &url.URL{Scheme: "https", Host: c.slot.hostPort(apiServerPort)}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{admin}, RootCAs: roots}, ForceAttemptHTTP2: true}
	rp.FlushInterval = -1 // watches stream
	l, err := net.Listen("tcp", net.JoinHostPort(c.slot.host(), "0"))
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch decide(r) {
			case TooManyRequests:
				w.Header().Set("Retry-After", strconv.Itoa(1))
				failure(w, http.StatusTooManyRequests, "TooManyRequests", "injected: too many requests")
			case Unavailable:
				failure(w, http.StatusServiceUnavailable, "ServiceUnavailable", "injected: service unavailable")
			case Expired:
				failure(w, http.StatusGone, "Expired", "injected: the provided continue parameter is too old")
			case Reset:
				conn, _, err := w.(http.Hijacker).Hijack()
				if err != nil {
					return
				}
				// Close the TCP connection under TLS, with no close_notify:
				// the client reads a reset.
				if tc, ok := tlsConn(conn); ok {
					_ = tc.SetLinger(0)
					_ = tc.Close()
					return
				}
				_ = conn.Close()
			default:
				rp.ServeHTTP(w, r)
			}
		}),
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{serving}},
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}, // no HTTP/2
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_, _ = os.Stderr.WriteString("fault proxy: " + err.Error() + "\n")
		}
	}()
	path, err := c.proxyKubeconfig("fault-proxy", l.Addr().String())
	if err != nil {
		_ = srv.Close()
		return nil, err
	}
	return &Proxy{Kubeconfig: path, close: func() { _ = srv.Close(); wg.Wait() }}, nil
}

// failure answers as the API server does, with a Status.
func failure(w http.ResponseWriter, code int, reason, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":%q,"reason":%q,"code":%d}`, message, reason, code)
}

// tlsConn finds the TCP connection under a hijacked TLS connection.
func tlsConn(c net.Conn) (*net.TCPConn, bool) {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	return tc, ok
}

// proxyKubeconfig writes the admin kubeconfig with the server at hostPort.
func (c *Cluster) proxyKubeconfig(name, hostPort string) (string, error) {
	cfg, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		return "", err
	}
	for _, cl := range cfg.Clusters {
		cl.Server = "https://" + hostPort
	}
	path := filepath.Join(c.Dir, name+".kubeconfig")
	return path, clientcmd.WriteToFile(*cfg, path)
}

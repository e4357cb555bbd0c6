package testcluster

import (
	"io"
	"net"
	"sync"
	"time"
)

// forward copies the TCP connections it accepts on one address to another,
// as kube-proxy does from a Service's ClusterIP to a pod.
type forward struct {
	to string
	// delay, if set, holds back every byte that long in each direction.
	delay time.Duration
	l     net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	// conns are the open connections, closed with the forward.
	conns map[net.Conn]bool
}

func newForward(from, to string) (*forward, error) {
	l, err := net.Listen("tcp", from)
	if err != nil {
		return nil, err
	}
	f := &forward{to: to, l: l, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go f.accept()
	return f, nil
}

func (f *forward) accept() {
	defer f.wg.Done()
	for {
		in, err := f.l.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.pipe(in)
		}()
	}
}

func (f *forward) track(c net.Conn, open bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if open && f.conns == nil {
		return false
	}
	if open {
		f.conns[c] = true
	} else if f.conns != nil {
		delete(f.conns, c)
	}
	return true
}

func (f *forward) pipe(in net.Conn) {
	defer func() { _ = in.Close() }()
	out, err := net.Dial("tcp", f.to)
	if err != nil {
		return
	}
	defer func() { _ = out.Close() }()
	if !f.track(in, true) || !f.track(out, true) {
		return
	}
	defer f.track(in, false)
	defer f.track(out, false)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		if f.delay > 0 {
			delayedCopy(dst, src, f.delay)
		} else {
			_, _ = io.Copy(dst, src)
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(out, in)
	go cp(in, out)
	<-done
	<-done
}

// close stops accepting, closes the open connections and waits for them.
func (f *forward) close() {
	_ = f.l.Close()
	f.mu.Lock()
	for c := range f.conns {
		_ = c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}

// delayedCopy copies src to dst, each chunk delay after it was read: a link
// with that latency and no limit on throughput.
func delayedCopy(dst, src net.Conn, delay time.Duration) {
	type chunk struct {
		b  []byte
		at time.Time
	}
	ch := make(chan chunk, 1024)
	go func() {
		defer close(ch)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				ch <- chunk{b[:n], time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	failed := false
	for c := range ch {
		if failed {
			continue // drain, so that the reader ends
		}
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.b); err != nil {
			failed = true
		}
	}
}

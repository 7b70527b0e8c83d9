package e2e

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Balancer is a TCP connection balancer on loopback, standing in for the
// HAProxy / Kubernetes Service in front of the control planes' gRPC ports:
// each accepted connection goes to the next backend (round robin) that
// accepts a dial, so proxies whose replica died reconnect to a survivor.
//
// Blackhole freezes every connection currently open: bytes are read and
// dropped in both directions and nothing is closed, as a frozen VM, a
// silent network partition or a balancer that drops a flow would do. New
// connections are forwarded as usual (unless the backend is black-holed
// too: see BlackholeBackend).
type Balancer struct {
	Addr string

	ln       net.Listener
	mu       sync.Mutex
	backends []string
	holes    map[string]bool // backends whose new and open flows are black-holed
	conns    map[*flow]struct{}
	next     atomic.Uint64
	closed   atomic.Bool
	accepted atomic.Int64
}

type flow struct {
	backend string
	frozen  atomic.Bool
	a, b    net.Conn
}

// NewBalancer listens on a loopback port and balances over backends
// (host:port). It is closed with the test.
func NewBalancer(t testing.TB, backends ...string) *Balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lb := &Balancer{Addr: ln.Addr().String(), ln: ln, backends: append([]string(nil), backends...),
		holes: map[string]bool{}, conns: map[*flow]struct{}{}}
	go lb.accept()
	t.Cleanup(lb.Close)
	return lb
}

// SetBackends replaces the backend list (open flows are kept).
func (lb *Balancer) SetBackends(backends ...string) {
	lb.mu.Lock()
	lb.backends = append([]string(nil), backends...)
	lb.mu.Unlock()
}

// Accepted counts the connections accepted so far.
func (lb *Balancer) Accepted() int64 { return lb.accepted.Load() }

// Blackhole freezes every open flow (to any backend): nothing more is
// delivered either way and nothing is closed.
func (lb *Balancer) Blackhole() {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	for f := range lb.conns {
		f.frozen.Store(true)
	}
}

// BlackholeBackend freezes every open flow to backend and every new flow
// sent to it (a replica that stops answering without closing anything).
// Unblackhole lifts it for new flows; frozen flows stay frozen.
func (lb *Balancer) BlackholeBackend(backend string) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.holes[backend] = true
	for f := range lb.conns {
		if f.backend == backend {
			f.frozen.Store(true)
		}
	}
}

// Unblackhole lets new flows reach backend again.
func (lb *Balancer) Unblackhole(backend string) {
	lb.mu.Lock()
	delete(lb.holes, backend)
	lb.mu.Unlock()
}

// Flows counts the open flows per backend.
func (lb *Balancer) Flows() map[string]int {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	m := map[string]int{}
	for f := range lb.conns {
		m[f.backend]++
	}
	return m
}

// Close stops accepting and closes every flow.
func (lb *Balancer) Close() {
	if lb.closed.Swap(true) {
		return
	}
	lb.ln.Close()
	lb.mu.Lock()
	defer lb.mu.Unlock()
	for f := range lb.conns {
		f.a.Close()
		f.b.Close()
	}
}

func (lb *Balancer) accept() {
	for {
		c, err := lb.ln.Accept()
		if err != nil {
			return
		}
		lb.accepted.Add(1)
		go lb.serve(c)
	}
}

func (lb *Balancer) serve(c net.Conn) {
	lb.mu.Lock()
	backends := append([]string(nil), lb.backends...)
	lb.mu.Unlock()
	start := lb.next.Add(1)
	for i := range backends {
		be := backends[(int(start)+i)%len(backends)]
		d, err := net.DialTimeout("tcp", be, 2*time.Second)
		if err != nil {
			continue
		}
		f := &flow{backend: be, a: c, b: d}
		lb.mu.Lock()
		if lb.closed.Load() {
			lb.mu.Unlock()
			c.Close()
			d.Close()
			return
		}
		f.frozen.Store(lb.holes[be])
		lb.conns[f] = struct{}{}
		lb.mu.Unlock()
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); f.pipe(d, c) }()
		go func() { defer wg.Done(); f.pipe(c, d) }()
		wg.Wait()
		lb.mu.Lock()
		delete(lb.conns, f)
		lb.mu.Unlock()
		return
	}
	c.Close()
}

// pipe copies src to dst until either side closes; while the flow is frozen
// it keeps reading src and drops what it reads, closing nothing.
func (f *flow) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !f.frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	if f.frozen.Load() {
		// A frozen flow never shows the other side a close either: it
		// ends when the test closes the balancer.
		return
	}
	f.a.Close()
	f.b.Close()
}

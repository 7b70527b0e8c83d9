package procs

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fake is a process whose CPU use the test sets, in cores, against a clock
// that moves a second on every reading.
type fake struct {
	mu    sync.Mutex
	wall  time.Duration
	cpu   time.Duration
	util  float64
	cycle []float64 // when set, the CPU use of each second in turn
	n     int
	sets  []int
	setCh chan int
	// slow, all: the scheduling delays the next queued() reports (every
	// one while sticky).
	slow, all uint64
	sticky    bool
}

func (f *fake) queued() (slow, all uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	slow, all = f.slow, f.all
	if !f.sticky {
		f.slow, f.all = 0, 0
	}
	return slow, all
}

// queue makes the next reading of the scheduling delays show a backlog (or not).
func (f *fake) queue(slow, all uint64) {
	f.mu.Lock()
	f.slow, f.all = slow, all
	f.mu.Unlock()
}

func newFake(util float64) *fake { return &fake{util: util, setCh: make(chan int, 16)} }

func (f *fake) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.wall += time.Second
	u := f.util
	if len(f.cycle) > 0 {
		u = f.cycle[f.n%len(f.cycle)]
		f.n++
	}
	f.cpu += time.Duration(u * float64(time.Second))
	return time.Unix(0, int64(f.wall))
}

func (f *fake) readCPU() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cpu
}

func (f *fake) set(n int) {
	f.mu.Lock()
	f.sets = append(f.sets, n)
	f.mu.Unlock()
	f.setCh <- n
}

// burn adds CPU time used between two readings of the clock.
func (f *fake) burn(d time.Duration) {
	f.mu.Lock()
	f.cpu += d
	f.mu.Unlock()
}

func (f *fake) governor(t *testing.T, reg prometheus.Registerer) *Governor {
	t.Helper()
	g := New(Options{Registry: reg, cpu: f.readCPU, queued: f.queued, set: f.set, now: f.now, tick: time.Millisecond, full: 2})
	if g == nil {
		t.Fatal("New returned nil with two Ps")
	}
	return g
}

func run(t *testing.T, g *Governor) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); g.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// neverSet fails if GOMAXPROCS is set within d (the fake ticks every ms).
func neverSet(t *testing.T, f *fake, d time.Duration, why string) {
	t.Helper()
	select {
	case n := <-f.setCh:
		t.Fatalf("GOMAXPROCS set to %d %s", n, why)
	case <-time.After(d):
	}
}

func waitSet(t *testing.T, f *fake, want int) {
	t.Helper()
	select {
	case n := <-f.setCh:
		if n != want {
			t.Fatalf("GOMAXPROCS set to %d, want %d", n, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("GOMAXPROCS never set to %d", want)
	}
}

// baseline is the start of the governor's current narrow window.
func baseline(g *Governor) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return time.Unix(0, g.lastWall)
}

// narrowed is a running governor over a quiet fake process, once it has
// narrowed.
func narrowed(t *testing.T, reg prometheus.Registerer) (*fake, *Governor) {
	t.Helper()
	f := newFake(0.1)
	g := f.governor(t, reg)
	run(t, g)
	waitSet(t, f, 1)
	return f, g
}

func TestNarrowsAfterTwoQuietSeconds(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, g := narrowed(t, reg)
	if !g.Narrow() {
		t.Fatal("set to one P but Narrow() is false")
	}
	if n := testutil.ToFloat64(g.changes); n != 1 {
		t.Fatalf("changes_total = %v, want 1", n)
	}
}

func TestStaysWideUnderLoad(t *testing.T) {
	f := newFake(NarrowBelow + 0.05)
	g := f.governor(t, nil)
	run(t, g)
	neverSet(t, f, 200*time.Millisecond, fmt.Sprintf("while the proxy used %.2f cores", NarrowBelow+0.05))
	if g.Narrow() {
		t.Fatal("narrow under load")
	}
}

// A proxy without a state yet (waiting for its first snapshot) stays wide
// however quiet: the snapshot installs on every core.
func TestWideUntilReady(t *testing.T) {
	f := newFake(0)
	var ready atomic.Bool
	g := New(Options{cpu: f.readCPU, queued: f.queued, set: f.set, now: f.now, tick: time.Millisecond, full: 2, Ready: ready.Load})
	run(t, g)
	neverSet(t, f, 100*time.Millisecond, "before the proxy was ready")
	ready.Store(true)
	waitSet(t, f, 1)
}

// One busy second between quiet ones starts the count again.
func TestQuietSecondsMustFollowEachOther(t *testing.T) {
	f := newFake(0.1)
	f.cycle = []float64{0.1, 0.9} // quiet, busy, quiet, busy, ...
	g := f.governor(t, nil)
	run(t, g)
	neverSet(t, f, 200*time.Millisecond, "although no two quiet seconds followed each other")
}

func TestWidensOnABusyWindow(t *testing.T) {
	reg := prometheus.NewRegistry()
	f, g := narrowed(t, reg)

	base := baseline(g)
	// Within the 100 ms window: nothing read, nothing changed.
	f.burn(time.Second)
	g.Observe(base.Add(50 * time.Millisecond))
	if !g.Narrow() {
		t.Fatal("widened inside the shortest window")
	}
	// 150 ms later, 1 s of CPU since the baseline: busy, widen.
	g.Observe(base.Add(150 * time.Millisecond))
	waitSet(t, f, 0)
	if g.Narrow() {
		t.Fatal("still narrow after a busy window")
	}
	if n := testutil.ToFloat64(g.changes); n != 2 {
		t.Fatalf("changes_total = %v, want 2", n)
	}
	// Wide again, Run reads CPU again and narrows once it is quiet.
	waitSet(t, f, 1)
}

func TestQuietWindowStaysNarrow(t *testing.T) {
	f, g := narrowed(t, nil)
	base := baseline(g)
	f.burn(50 * time.Millisecond) // 0.33 cores over 150 ms
	g.Observe(base.Add(150 * time.Millisecond))
	if !g.Narrow() {
		t.Fatal("widened at a third of a core")
	}
}

// Goroutines queued for the one P widen it although the process used
// little CPU (other processes kept the core busy); a few slow delays, or
// too few to judge, do not.
func TestWidensWhenGoroutinesQueue(t *testing.T) {
	f, g := narrowed(t, nil)
	base := baseline(g)
	f.queue(2, 100) // 2% slow
	g.Observe(base.Add(150 * time.Millisecond))
	if !g.Narrow() {
		t.Fatal("widened with 2% of the delays over 1 ms")
	}
	f.queue(10, 15) // too few samples
	g.Observe(base.Add(300 * time.Millisecond))
	if !g.Narrow() {
		t.Fatal("widened on 15 samples")
	}
	f.queue(30, 100)
	g.Observe(base.Add(450 * time.Millisecond))
	waitSet(t, f, 0)
}

// A wide proxy whose goroutines queue does not narrow however little CPU
// it gets.
func TestStaysWideWhileQueued(t *testing.T) {
	f := newFake(0.1)
	f.slow, f.all, f.sticky = 50, 100, true
	g := f.governor(t, nil)
	run(t, g)
	neverSet(t, f, 200*time.Millisecond, "while goroutines queued")
}

// A window longer than a second had no requests in it: it restarts the
// measure and decides nothing, whatever the CPU (a snapshot install, say).
func TestLongGapDecidesNothing(t *testing.T) {
	f, g := narrowed(t, nil)
	base := baseline(g)
	f.burn(4 * time.Second)
	g.Observe(base.Add(5 * time.Second))
	if !g.Narrow() {
		t.Fatal("a 5 s window without requests widened")
	}
	f.burn(80 * time.Millisecond)
	g.Observe(base.Add(5*time.Second + 100*time.Millisecond))
	waitSet(t, f, 0)
}

func TestOffWhenGOMAXPROCSIsSet(t *testing.T) {
	t.Setenv("GOMAXPROCS", "2")
	g := New(Options{})
	if g != nil {
		t.Fatal("governor on although the operator set GOMAXPROCS")
	}
	// A nil governor is a no-op.
	g.Observe(time.Now())
	if g.Narrow() {
		t.Fatal("nil governor narrow")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	g.Run(ctx)
}

func TestOffOnOneP(t *testing.T) {
	if g := New(Options{full: 1}); g != nil {
		t.Fatal("governor on with a single P")
	}
}

// The real runtime: narrowed to one P, then back to the runtime's default,
// and the default restored when Run ends.
func TestRealGOMAXPROCS(t *testing.T) {
	full := runtime.GOMAXPROCS(0)
	if full < 2 {
		t.Skip("the runtime has a single P here")
	}
	defer runtime.SetDefaultGOMAXPROCS()
	var cpu atomic.Int64
	cpu.Store(int64(time.Second))
	g := New(Options{cpu: func() time.Duration { return time.Duration(cpu.Load()) }, queued: func() (uint64, uint64) { return 0, 0 },
		tick: time.Millisecond, full: full})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); g.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.GOMAXPROCS(0) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("never narrowed to one P")
		}
		time.Sleep(time.Millisecond)
	}
	base := baseline(g)
	cpu.Add(int64(time.Second))
	g.Observe(base.Add(200 * time.Millisecond))
	if got := runtime.GOMAXPROCS(0); got != full {
		t.Fatalf("GOMAXPROCS %d after a busy window, want the default %d", got, full)
	}
	// Narrow again, then end Run: the default comes back.
	for runtime.GOMAXPROCS(0) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("never narrowed again")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if got := runtime.GOMAXPROCS(0); got != full {
		t.Fatalf("GOMAXPROCS %d after Run ended, want the default %d", got, full)
	}
}

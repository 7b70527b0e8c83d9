// Package procs sizes the Go scheduler to the proxy's load: one P while the
// proxy's own CPU use fits easily on one core, every core (the runtime's
// default GOMAXPROCS) once it does not.
//
// Why: at tens to hundreds of requests a second a proxy's CPU goes mostly to
// waking threads, not to work. With two or more Ps every goroutine made
// runnable (a connection's reader, the upstream transport's loops, a new
// goroutine) wakes a second thread that spins looking for work, steals,
// and sleeps again, and the runtime's sysmon polls every 20 µs while any P
// is busy. On one P those hand-offs do not happen. Measured side by side on
// a 2-core VM at 50/200/500 req/s (deploy/bench/interleave): 29–31% less
// CPU per request than the same build on two Ps, and 50–70 µs less latency
// at the median. Saturated, one core is not enough, so the governor widens.
//
// The policy:
//   - While wide, a ticker reads the process's CPU time (getrusage) every
//     second. Two seconds in a row under NarrowBelow cores, it narrows to
//     one P. The ticker stops while narrow, so a narrow idle proxy has no
//     wake-up of its own.
//   - While narrow, requests check (Observe: one atomic load, and one
//     getrusage and one runtime/metrics read per 100 ms window). A window
//     of at most a second in which the process used more than WidenAbove
//     cores, or in which goroutines queued for the P (more than a tenth of
//     at least 20 sampled scheduling delays over 1 ms: on cores that other
//     processes keep busy a one-P proxy can be starved without using much
//     CPU), widens at once, so a burst runs on one P for 100–200 ms at
//     most. A window longer than a second (a gap without requests) only
//     restarts the measure. A wide proxy does not narrow while its
//     goroutines queue either.
//   - Widening restores the runtime's default (runtime.SetDefaultGOMAXPROCS,
//     which keeps following a container's CPU limit).
//
// The gap between the two thresholds, measured in different modes (one P
// costs about a third less CPU per request), keeps a steady load from
// flapping. A change of GOMAXPROCS stops the world for tens of
// microseconds; it happens at most once per direction per two seconds
// under a steady load.
//
// An operator who sets GOMAXPROCS in the environment keeps it: the governor
// is off, as it is on a one-CPU machine or with --adaptive-procs=false.
package procs

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	// WidenAbove is the CPU use (cores) of a narrow proxy that widens it.
	WidenAbove = 0.6
	// NarrowBelow is the CPU use (cores) of a wide proxy that, held for
	// narrowAfter ticks, narrows it.
	NarrowBelow = 0.35

	window      = 100 * time.Millisecond // narrow: the shortest measured window
	maxWindow   = time.Second            // narrow: a longer window (no requests) decides nothing
	tick        = time.Second            // wide: how often CPU use is read
	narrowAfter = 2                      // wide: ticks under NarrowBelow before narrowing
)

// Options configure a Governor.
type Options struct {
	// Registry receives tollgate_proxy_gomaxprocs_changes_total (nil:
	// none). The Go collector's go_sched_gomaxprocs_threads shows the
	// current width.
	Registry prometheus.Registerer
	Logger   *slog.Logger
	// Ready reports whether the proxy has a state to serve; until it does
	// the governor stays wide, so that a snapshot that arrives after a
	// quiet wait installs on every core (nil: always ready).
	Ready func() bool

	// For tests: the process's CPU time, how GOMAXPROCS is set (n <= 0:
	// the runtime's default), the clock, the wide tick and the scheduling
	// delays since the last call (see queued).
	queued func() (slow, all uint64)
	cpu    func() time.Duration
	set    func(n int)
	now    func() time.Time
	tick   time.Duration
	full   int
}

// Governor narrows and widens GOMAXPROCS. A nil *Governor does nothing.
type Governor struct {
	cpu    func() time.Duration
	queued func() (slow, all uint64)
	set    func(n int)
	now    func() time.Time
	ready  func() bool
	tick   time.Duration
	log    *slog.Logger

	narrow  atomic.Bool
	next    atomic.Int64 // narrow: UnixNano of the next check
	widened chan struct{}

	mu       sync.Mutex // one check at a time; guards the two below
	lastWall int64
	lastCPU  time.Duration

	changes prometheus.Counter
}

// New returns a governor, or nil when it should not run: GOMAXPROCS is set
// in the environment, or the runtime has a single P to begin with.
func New(o Options) *Governor {
	if o.full == 0 {
		if os.Getenv("GOMAXPROCS") != "" {
			return nil
		}
		o.full = runtime.GOMAXPROCS(0)
	}
	if o.full <= 1 {
		return nil
	}
	g := &Governor{cpu: o.cpu, queued: o.queued, set: o.set, now: o.now, ready: o.Ready, tick: o.tick, log: o.Logger, widened: make(chan struct{}, 1)}
	if g.cpu == nil {
		g.cpu = processCPU
	}
	if g.queued == nil {
		g.queued = newSchedDelays().since
	}
	if g.set == nil {
		g.set = setProcs
	}
	if g.now == nil {
		g.now = time.Now
	}
	if g.tick <= 0 {
		g.tick = tick
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	g.changes = prometheus.NewCounter(prometheus.CounterOpts{Name: "tollgate_proxy_gomaxprocs_changes_total",
		Help: "Times the proxy narrowed to one P or widened back to the runtime's default (package procs); go_sched_gomaxprocs_threads is the current width."})
	if o.Registry != nil {
		o.Registry.MustRegister(g.changes)
	}
	return g
}

// Narrow reports whether the governor runs the proxy on one P.
func (g *Governor) Narrow() bool { return g != nil && g.narrow.Load() }

// Run reads CPU use while wide and narrows when it stays low, until ctx
// ends; then it restores the runtime's default.
func (g *Governor) Run(ctx context.Context) {
	if g == nil {
		return
	}
	defer func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.narrow.Load() {
			g.set(0)
			g.narrow.Store(false)
		}
	}()
	t := time.NewTimer(g.tick)
	defer t.Stop()
	for {
		wall, cpu, low := g.now().UnixNano(), g.cpu(), 0
		t.Reset(g.tick)
		for !g.narrow.Load() {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			g.mu.Lock()
			n, c := g.now().UnixNano(), g.cpu()
			slow, all := g.queued()
			g.mu.Unlock()
			if g.ready != nil && !g.ready() {
				low = 0
			} else if util := cores(c-cpu, n-wall); util < NarrowBelow && !backlogged(slow, all) {
				low++
			} else {
				low = 0
			}
			wall, cpu = n, c
			if low >= narrowAfter {
				g.toNarrow(n, c, low)
				break
			}
			t.Reset(g.tick)
		}
		select {
		case <-ctx.Done():
			return
		case <-g.widened:
		}
	}
}

func (g *Governor) toNarrow(wall int64, cpu time.Duration, low int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.lastWall, g.lastCPU = wall, cpu
	g.next.Store(wall + int64(window))
	g.queued() // the narrow windows count from here
	g.narrow.Store(true)
	g.set(1)
	g.changes.Inc()
	g.log.Debug("narrowed to one P", "seconds_under", float64(low)*g.tick.Seconds(), "below_cores", NarrowBelow)
}

// Observe is called on every request with its start time. While narrow it
// widens once a window of at least 100 ms (and at most a second) used more
// than WidenAbove cores or saw goroutines queue for the P (backlogged).
// While wide it costs one atomic load.
func (g *Governor) Observe(now time.Time) {
	if g == nil || !g.narrow.Load() {
		return
	}
	n := now.UnixNano()
	if n < g.next.Load() || !g.mu.TryLock() {
		return
	}
	defer g.mu.Unlock()
	if !g.narrow.Load() {
		return
	}
	elapsed := n - g.lastWall
	if elapsed < int64(window) {
		return
	}
	c := g.cpu()
	slow, all := g.queued()
	util := cores(c-g.lastCPU, elapsed)
	g.lastWall, g.lastCPU = n, c
	g.next.Store(n + int64(window))
	if elapsed > int64(maxWindow) || (util <= WidenAbove && !backlogged(slow, all)) {
		return
	}
	g.narrow.Store(false)
	g.set(0)
	g.changes.Inc()
	g.log.Debug("widened to every P", "cores_used", util, "window", time.Duration(elapsed), "runnable_over_1ms", slow, "scheduled", all)
	select {
	case g.widened <- struct{}{}:
	default:
	}
}

// backlogged reports whether goroutines queued for a P: of at least
// minScheduled scheduling delays, more than a tenth were over slowDelay. On a
// machine whose cores other processes keep busy, a one-P proxy can be
// starved without using much CPU; its queue shows it.
func backlogged(slow, all uint64) bool { return all >= minScheduled && slow*10 > all }

const (
	slowDelay    = time.Millisecond // a goroutine runnable this long waited for a P
	minScheduled = 20               // fewer delays in a window decide nothing
)

// schedDelays reads the runtime's histogram of how long goroutines were
// runnable before they ran (/sched/latencies:seconds, sampled by the
// runtime), as counts since the previous read.
type schedDelays struct {
	s    []metrics.Sample
	prev []uint64
}

func newSchedDelays() *schedDelays {
	d := &schedDelays{s: []metrics.Sample{{Name: "/sched/latencies:seconds"}}}
	d.since() // the baseline
	return d
}

func (d *schedDelays) since() (slow, all uint64) {
	metrics.Read(d.s)
	if d.s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0, 0
	}
	h := d.s[0].Value.Float64Histogram()
	if len(d.prev) != len(h.Counts) {
		d.prev = make([]uint64, len(h.Counts))
	}
	for i, n := range h.Counts {
		delta := n - d.prev[i]
		d.prev[i] = n
		all += delta
		if h.Buckets[i] >= slowDelay.Seconds() { // the bucket's lower bound
			slow += delta
		}
	}
	return slow, all
}

func cores(cpu time.Duration, wall int64) float64 {
	if wall <= 0 {
		return 0
	}
	return float64(cpu) / float64(wall)
}

// processCPU is the CPU time of every thread of the process.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func setProcs(n int) {
	if n <= 0 {
		runtime.SetDefaultGOMAXPROCS()
		return
	}
	runtime.GOMAXPROCS(n)
}

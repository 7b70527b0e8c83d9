package replica

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/dataplane/internal/cache"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state/statetest"
)

const (
	bigKeys  = 1_000_000
	chunkLen = 5000
)

// rssMB reads the process's current and peak resident set size.
func rssMB() (cur, peak float64) {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			cur = kb / 1024
		case "VmHWM:":
			peak = kb / 1024
		}
	}
	return
}

// resetPeakRSS restarts VmHWM (Linux: write 5 to clear_refs).
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// feed applies a 1M-key snapshot in 5000-entity chunks. Each chunk is
// encoded and decoded first, as the sync client hands it over (message and
// raw bytes); only decoding and ApplyChunk are timed.
func feed(b *testing.B, r *Replica, rev int64) time.Duration {
	var took time.Duration
	err := statetest.Chunks(rev, bigKeys, chunkLen, func(c *syncv1.SnapshotChunk) error {
		raw, err := proto.Marshal(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Snapshot{Snapshot: c}})
		if err != nil {
			return err
		}
		t0 := time.Now()
		framed := append(make([]byte, cache.FrameHeader), raw...)
		var dc state.Chunk
		if !state.ParseChunk(framed[cache.FrameHeader:], &dc) {
			return errors.New("not a chunk")
		}
		_, err = r.ApplyChunk(&dc, framed)
		took += time.Since(t0)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return took
}

// BenchmarkApplySnapshot1M: a full 1M-key snapshot (plus 100k users, 1000
// teams) through Replica.ApplyChunk into a fresh cache, to Ready.
func BenchmarkApplySnapshot1M(b *testing.B) {
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		r, err := Open(filepath.Join(dir, "proxy.db"), nil)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		resetPeakRSS()
		took := feed(b, r, 1)
		if !r.State().Ready() {
			b.Fatal("not ready")
		}
		_, peak := rssMB()
		runtime.GC()
		cur, _ := rssMB()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st, _ := os.Stat(filepath.Join(dir, "proxy.db"))
		b.ReportMetric(took.Seconds(), "s/snapshot")
		b.ReportMetric(peak, "peakRSS-MB")
		b.ReportMetric(cur, "RSS-MB")
		b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MB")
		b.ReportMetric(float64(st.Size())/(1<<20), "file-MB")
		_ = r.Close()
	}
}

// BenchmarkOpen1M: Open a cache holding 1M keys until Ready.
func BenchmarkOpen1M(b *testing.B) {
	path := filepath.Join(b.TempDir(), "proxy.db")
	r, err := Open(path, nil)
	if err != nil {
		b.Fatal(err)
	}
	feed(b, r, 1)
	_ = r.Close()
	r = nil
	runtime.GC()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resetPeakRSS()
		t0 := time.Now()
		r, err := Open(path, nil)
		if err != nil {
			b.Fatal(err)
		}
		if !r.State().Ready() || r.State().Stats().Keys != bigKeys {
			b.Fatal("not ready")
		}
		took := time.Since(t0)
		_, peak := rssMB()
		runtime.GC()
		cur, _ := rssMB()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(took.Seconds(), "s/open")
		b.ReportMetric(peak, "peakRSS-MB")
		b.ReportMetric(cur, "RSS-MB")
		b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MB")
		_ = r.Close()
		runtime.GC()
	}
}

// BenchmarkApplyDelta: a 3-change delta against 1M keys, fsynced.
func BenchmarkApplyDelta1M(b *testing.B) {
	r, err := Open(filepath.Join(b.TempDir(), "proxy.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	feed(b, r, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rev := r.Revision()
		d := delta(rev, rev+1, statetest.Key(i%bigKeys), statetest.Key((i+500_000)%bigKeys), statetest.Team(i%1000))
		if err := r.ApplyDelta(d); err != nil {
			b.Fatal(err)
		}
	}
}

// benchN is the key count of BenchmarkInstall and BenchmarkRestart
// (BENCH_KEYS, default 1M).
func benchN() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_KEYS")); err == nil && n > 0 {
		return n
	}
	return bigKeys
}

// cpuProfile starts a CPU profile into $BENCH_CPUPROFILE (when set) for
// the timed part only, unlike -cpuprofile, which also records the setup.
func cpuProfile(b *testing.B) func() {
	path := os.Getenv("BENCH_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() { pprof.StopCPUProfile(); _ = f.Close() }
}

// encodedChunks returns a snapshot of n keys as the control plane sends it:
// encoded ControlMessages of 5000 entities.
func encodedChunks(b *testing.B, rev int64, n int) [][]byte {
	var raws [][]byte
	err := statetest.Chunks(rev, n, chunkLen, func(c *syncv1.SnapshotChunk) error {
		if c.Seq == 0 {
			c.KeysHint = int64(n) // as the control plane sends it
		}
		raw, err := proto.Marshal(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Snapshot{Snapshot: c}})
		raws = append(raws, raw)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return raws
}

// installRaw applies encoded chunks as the sync client does: each is
// copied (out of gRPC's buffers) and parsed on a receiving goroutine, one
// ahead of ApplyChunk.
func installRaw(b *testing.B, r *Replica, raws [][]byte) {
	type msg struct {
		c   *state.Chunk
		raw []byte
	}
	inbox := make(chan msg)
	spare := make(chan *state.Chunk, 1)
	go func() {
		defer close(inbox)
		for _, raw := range raws {
			framed := make([]byte, cache.FrameHeader+len(raw))
			copy(framed[cache.FrameHeader:], raw)
			raw = framed[cache.FrameHeader:]
			var c *state.Chunk
			select {
			case c = <-spare:
			default:
				c = new(state.Chunk)
			}
			if !state.ParseChunk(raw, c) {
				panic("not a chunk")
			}
			c.Prepare()
			inbox <- msg{c, framed}
		}
	}()
	for m := range inbox {
		if _, err := r.ApplyChunk(m.c, m.raw); err != nil {
			b.Fatal(err)
		}
		select {
		case spare <- m.c:
		default:
		}
	}
}

// BenchmarkInstall: an empty proxy receives an encoded snapshot of
// BENCH_KEYS keys (default 1M): decode, build, cache write, commit, to
// Ready. Reports the process CPU time beside the wall time.
func BenchmarkInstall(b *testing.B) {
	n := benchN()
	raws := encodedChunks(b, 1, n)
	runtime.GC()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		r, err := Open(filepath.Join(dir, "proxy.db"), nil)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		b.StartTimer()
		stop := cpuProfile(b)
		c0, t0 := cpuTime(), time.Now()
		installRaw(b, r, raws)
		if !r.State().Ready() {
			b.Fatal("not ready")
		}
		wall, cpu := time.Since(t0), cpuTime()-c0
		stop()
		b.StopTimer()
		b.ReportMetric(wall.Seconds(), "s/install")
		b.ReportMetric(cpu.Seconds(), "cpu-s/install")
		_ = r.Close()
		b.StartTimer()
	}
}

// BenchmarkRestart: Open a cache holding BENCH_KEYS keys (default 1M)
// until Ready. BENCH_CACHE names a cache file to reuse across runs (made
// when missing).
func BenchmarkRestart(b *testing.B) {
	n := benchN()
	path := os.Getenv("BENCH_CACHE")
	if path == "" {
		path = filepath.Join(b.TempDir(), "proxy.db")
	}
	if _, err := os.Stat(path); err != nil {
		r, err := Open(path, nil)
		if err != nil {
			b.Fatal(err)
		}
		installRaw(b, r, encodedChunks(b, 1, n))
		_ = r.Close()
	}
	runtime.GC()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		stop := cpuProfile(b)
		c0, t0 := cpuTime(), time.Now()
		r, err := Open(path, nil)
		if err != nil {
			b.Fatal(err)
		}
		wall, cpu := time.Since(t0), cpuTime()-c0
		stop()
		if st := r.State().Stats(); !st.Ready || st.Keys != n {
			b.Fatalf("not ready: %+v", st)
		}
		b.StopTimer()
		b.ReportMetric(wall.Seconds(), "s/open")
		b.ReportMetric(cpu.Seconds(), "cpu-s/open")
		_ = r.Close()
		runtime.GC()
		b.StartTimer()
	}
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

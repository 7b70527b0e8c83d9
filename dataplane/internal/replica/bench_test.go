package replica

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

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
		var dc syncv1.ControlMessage
		if err := proto.Unmarshal(raw, &dc); err != nil {
			return err
		}
		_, err = r.ApplyChunk(dc.GetSnapshot(), raw)
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

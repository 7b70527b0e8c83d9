package spend

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"google.golang.org/protobuf/proto"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

func open(t testing.TB, path string) *Outbox {
	t.Helper()
	ob, err := Open(path, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return ob
}

func rec(i int) *syncv1.SpendRecord {
	return &syncv1.SpendRecord{RequestId: fmt.Sprintf("r%d", i), TokenId: "k1", Cost: int64(i), PromptTokens: 10, CompletionTokens: 5}
}

func flush(t testing.TB, ob *Outbox) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ob.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func allRecords(t testing.TB, ob *Outbox) []*syncv1.SpendRecord {
	t.Helper()
	var out []*syncv1.SpendRecord
	var after uint64
	for {
		b, err := ob.Batch("p", after, 100)
		if err != nil {
			t.Fatal(err)
		}
		if b == nil {
			return out
		}
		if b.FirstSeq != b.Records[0].Seq || b.LastSeq != b.Records[len(b.Records)-1].Seq || b.OutboxId != ob.ID() {
			t.Fatalf("batch header %d..%d %q does not match its records", b.FirstSeq, b.LastSeq, b.OutboxId)
		}
		out = append(out, b.Records...)
		after = b.LastSeq
	}
}

// Concurrent appenders: every record is committed once, with gapless
// increasing sequence numbers, and in fewer commits than records.
func TestGroupCommit(t *testing.T) {
	ob := open(t, filepath.Join(t.TempDir(), "spend"))
	defer ob.Close()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 250 {
				if err := ob.Append(rec(g*1000 + i)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	flush(t, ob)
	recs := allRecords(t, ob)
	if len(recs) != 2000 {
		t.Fatalf("%d records, want 2000", len(recs))
	}
	seen := map[string]bool{}
	for i, r := range recs {
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d has seq %d", i, r.Seq)
		}
		if seen[r.RequestId] {
			t.Fatalf("record %s twice", r.RequestId)
		}
		seen[r.RequestId] = true
	}
	if st := ob.Stats(); st.LastSeq != 2000 || st.Unacked != 2000 || st.Queued != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// What was committed survives a reopen (as after SIGKILL: the file is
// reopened without Close having run for the records' sake), and numbering
// continues after it; the outbox id is kept.
func TestCommittedSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spend")
	ob := open(t, path)
	for i := range 10 {
		ob.Append(rec(i))
	}
	flush(t, ob)
	id := ob.ID()
	// A SIGKILL leaves the files as Close does: Close only syncs what is
	// written (which a process crash does not lose: it is in the page
	// cache) and marks nothing.
	ob.Close()

	ob2 := open(t, path)
	defer ob2.Close()
	if ob2.ID() != id {
		t.Fatalf("outbox id changed across reopen: %s -> %s", id, ob2.ID())
	}
	if n := len(allRecords(t, ob2)); n != 10 {
		t.Fatalf("%d records after reopen, want 10", n)
	}
	ob2.Append(rec(10))
	flush(t, ob2)
	recs := allRecords(t, ob2)
	if len(recs) != 11 || recs[9].Seq != 10 || recs[10].Seq != 10+seqSkip+1 {
		t.Fatalf("after reopen: %d records, seqs %d, %d", len(recs), recs[9].Seq, recs[len(recs)-1].Seq)
	}
}

// Ack deletes the acked prefix; numbering never restarts, even when every
// record is acked and the file is reopened (a restart must not reuse
// sequence numbers the control plane already applied).
func TestAckDeletes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spend")
	ob := open(t, path)
	for i := range 10 {
		ob.Append(rec(i))
	}
	flush(t, ob)
	if _, _, err := ob.Ack("other-outbox", 10); err != nil {
		t.Fatal(err)
	}
	if n := len(allRecords(t, ob)); n != 10 {
		t.Fatalf("an ack for another outbox deleted records: %d left", n)
	}
	costs, drained, err := ob.Ack(ob.ID(), 4)
	if err != nil {
		t.Fatal(err)
	}
	// rec(0..3) at seq 1..4, costs 0+1+2+3, all of key k1.
	if len(costs) != 1 || costs[0].GetKind() != "key" || costs[0].GetId() != "k1" || costs[0].GetSpend() != 6 || drained {
		t.Fatalf("acked costs = %v (drained %v), want key k1: 6, not drained", costs, drained)
	}
	recs := allRecords(t, ob)
	if len(recs) != 6 || recs[0].Seq != 5 {
		t.Fatalf("after ack 4: %d records from seq %d", len(recs), recs[0].Seq)
	}
	if b, _ := ob.Batch("p", 0, 100); b.FirstSeq != 5 {
		t.Fatalf("Batch(after 0) starts at %d, want 5", b.FirstSeq)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if err := ob.WaitShipped(ctx); err == nil {
		t.Fatal("WaitShipped returned with records unacked")
	}
	cancel()
	if _, drained, _ := ob.Ack(ob.ID(), 10); !drained {
		t.Fatal("every record acked, but not drained")
	}
	if err := ob.WaitShipped(context.Background()); err != nil {
		t.Fatal(err)
	}
	ob.Close()

	ob2 := open(t, path)
	defer ob2.Close()
	if b, _ := ob2.Batch("p", 0, 100); b != nil {
		t.Fatalf("acked records came back: %v", b)
	}
	ob2.Append(rec(99))
	flush(t, ob2)
	if recs := allRecords(t, ob2); len(recs) != 1 || recs[0].Seq != 10+seqSkip+1 {
		t.Fatalf("after full ack and reopen: %v", recs)
	}
}

// Close commits what is queued.
func TestCloseCommitsQueue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spend")
	ob := open(t, path)
	for i := range 1000 {
		ob.Append(rec(i))
	}
	if err := ob.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ob.Append(rec(1)); err != ErrClosed {
		t.Fatalf("Append after Close = %v", err)
	}
	ob2 := open(t, path)
	defer ob2.Close()
	if n := len(allRecords(t, ob2)); n != 1000 {
		t.Fatalf("%d records after Close and reopen, want 1000", n)
	}
}

// BenchmarkOutbox measures sustained appends from concurrent request
// goroutines, each record durable (fsynced) before the benchmark ends.
func BenchmarkOutbox(b *testing.B) {
	ob := open(b, filepath.Join(b.TempDir(), "spend"))
	defer ob.Close()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			ob.Append(rec(i))
			i++
		}
	})
	flush(b, ob)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	st := ob.Stats()
	b.ReportMetric(float64(st.Committed)/float64(max(st.Groups, 1)), "records/group")
	b.ReportMetric(float64(st.MeanCommit.Microseconds())/1000, "ms/commit")
	b.ReportMetric(float64(st.MaxCommit.Microseconds())/1000, "max-ms/commit")
}

// The age of the oldest unacked record follows commits and acks, survives a
// reopen (counted from Open), and the marks stay bounded.
func TestOldestUnacked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spend")
	ob := open(t, path)
	if !ob.Stats().OldestUnacked.IsZero() {
		t.Fatal("empty outbox has an oldest record")
	}
	before := time.Now()
	ob.Append(rec(1))
	flush(t, ob)
	first := ob.Stats().OldestUnacked
	if first.Before(before) || first.After(time.Now()) {
		t.Fatalf("oldest %v, want between %v and now", first, before)
	}
	time.Sleep(10 * time.Millisecond)
	ob.Append(rec(2))
	flush(t, ob)
	if got := ob.Stats().OldestUnacked; !got.Equal(first) {
		t.Fatalf("a newer commit moved the oldest: %v != %v", got, first)
	}
	ob.Ack(ob.ID(), 1)
	if got := ob.Stats().OldestUnacked; !got.After(first) {
		t.Fatalf("ack of the oldest did not advance it: %v", got)
	}
	ob.Close()
	start := time.Now()
	ob = open(t, path)
	if got := ob.Stats().OldestUnacked; got.Before(start) {
		t.Fatalf("records found at Open count from Open, got %v", got)
	}
	ob.Ack(ob.ID(), 2)
	if !ob.Stats().OldestUnacked.IsZero() {
		t.Fatal("all acked, still an oldest record")
	}
	ob.mu.Lock()
	ob.unacked++ // the fake marks below have one record behind them
	ob.mu.Unlock()
	for i := range 3 * maxMarks {
		ob.mu.Lock()
		ob.lastSeq++
		ob.addMarkLocked(commitMark{last: ob.lastSeq, at: start.Add(time.Duration(i))})
		ob.mu.Unlock()
	}
	if st := ob.Stats(); len(ob.marks) > maxMarks || !st.OldestUnacked.Equal(start) {
		t.Fatalf("%d marks, oldest %v", len(ob.marks), st.OldestUnacked)
	}
	ob.mu.Lock()
	ob.lastSeq, ob.unacked = 2, 0 // the fake marks above have no records behind them
	ob.mu.Unlock()
	ob.Close()
}

// writeLegacyFile writes an outbox file as proxies before the log did:
// bbolt, records keyed by big-endian seq, costs in nano-USD unless micro.
func writeLegacyFile(t *testing.T, path, id string, recs []*syncv1.SpendRecord, lastSeq uint64, micro bool) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucketIfNotExists(bucketMeta)
		rb, _ := tx.CreateBucketIfNotExists(bucketRecords)
		meta.Put(metaOutboxID, []byte(id))
		meta.Put(metaSeq, binary.BigEndian.AppendUint64(nil, lastSeq))
		if !micro {
			meta.Put(metaMoney, nanoUSD)
		}
		for _, r := range recs {
			v, err := proto.Marshal(r)
			if err != nil {
				return err
			}
			if err := rb.Put(binary.BigEndian.AppendUint64(nil, r.Seq), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// An outbox file of an older proxy is taken over at Open: its unacked
// records ship under its outbox id with their sequence numbers (the control
// plane's high-water mark for that id still applies), micro-USD costs are
// converted once (855 micro-USD ships as 855,000 nano-USD), the file is
// removed, and new records are numbered after it.
func TestLegacyOutboxTakenOver(t *testing.T) {
	for _, micro := range []bool{true, false} {
		dir := t.TempDir()
		legacy := filepath.Join(dir, "cache.spend")
		var old []*syncv1.SpendRecord
		for i := range 3 {
			r := rec(855 + i)
			r.Seq = uint64(41 + i) // 1..40 acked and deleted
			old = append(old, r)
		}
		writeLegacyFile(t, legacy, "old-outbox-id", old, 43, micro)

		for round := range 2 {
			ob, err := Open(filepath.Join(dir, "cache.spendlog"), Options{Legacy: legacy, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			if ob.ID() != "old-outbox-id" {
				t.Fatalf("outbox id %q, want the older file's", ob.ID())
			}
			recs := allRecords(t, ob)
			if len(recs) != 3+round { // + the new one of round 0
				t.Fatalf("micro %v round %d: %d records", micro, round, len(recs))
			}
			for i, r := range recs[:3] {
				want := int64(855 + i)
				if micro {
					want *= 1000
				}
				if r.Cost != want || r.Seq != uint64(41+i) {
					t.Fatalf("micro %v round %d: record %d: cost %d seq %d, want %d, %d", micro, round, i, r.Cost, r.Seq, want, 41+i)
				}
			}
			if _, err := os.Stat(legacy); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("older outbox file still there: %v", err)
			}
			ob.Append(rec(7))
			flush(t, ob)
			if recs := allRecords(t, ob); len(recs) != 4+round || recs[3+round].Cost != 7 || recs[3+round].Seq <= 43 {
				t.Fatalf("new record after the takeover: %+v", recs[len(recs)-1])
			}
			ob.Close()
		}
	}
}

// A record torn by a machine crash (a frame cut short, or garbage after the
// last synced one) ends its segment: the records before it ship, nothing
// after it is invented, and new records are numbered past anything that may
// have been shipped before the crash.
func TestTornTailRecovered(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spend")
	ob := open(t, dir)
	for i := range 5 {
		ob.Append(rec(i))
	}
	flush(t, ob)
	ob.Close()
	segs, err := listSegments(dir)
	if err != nil || len(segs) != 1 {
		t.Fatalf("segments %v, %v", segs, err)
	}
	raw, _ := os.ReadFile(segs[0].path)
	size, err := scan(segs[0].path, func(*syncv1.SpendRecord) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	// Cut the last frame short, then garbage.
	raw = raw[:size-5]
	raw = append(raw, 0xde, 0xad)
	os.WriteFile(segs[0].path, raw, 0o600)

	ob2 := open(t, dir)
	defer ob2.Close()
	recs := allRecords(t, ob2)
	if len(recs) != 4 || recs[3].Seq != 4 {
		t.Fatalf("after a torn tail: %d records", len(recs))
	}
	ob2.Append(rec(9))
	flush(t, ob2)
	if recs := allRecords(t, ob2); recs[4].Seq <= 5+seqSkip-1 {
		t.Fatalf("new record numbered %d: may collide with one shipped before the crash", recs[4].Seq)
	}
}

// Records beyond what the outbox keeps in memory (a long control-plane
// outage) are read back from their segments, in order, across segments,
// after a restart too; acks of them return their costs and remove the
// segments.
func TestBacklogBeyondMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes ~100k records")
	}
	dir := filepath.Join(t.TempDir(), "spend")
	ob := open(t, dir)
	n := memMax + 30_000
	for i := range n {
		ob.Append(rec(1))
		_ = i
	}
	flush(t, ob)
	check := func(ob *Outbox) {
		t.Helper()
		recs := allRecords(t, ob)
		if len(recs) != n {
			t.Fatalf("%d records, want %d", len(recs), n)
		}
		for i := 1; i < len(recs); i++ {
			if recs[i].Seq != recs[i-1].Seq+1 {
				t.Fatalf("seq %d after %d", recs[i].Seq, recs[i-1].Seq)
			}
		}
	}
	check(ob)
	ob.Close()
	ob = open(t, dir)
	defer ob.Close()
	check(ob)
	segsBefore, _ := listSegments(dir)
	if len(segsBefore) < 2 {
		t.Fatalf("%d segments for %d records", len(segsBefore), n)
	}
	costs, drained, err := ob.Ack(ob.ID(), 20_000)
	if err != nil || drained || len(costs) == 0 || costs[0].GetSpend() != 20_000 && costs[len(costs)-1].GetSpend() != 20_000 {
		t.Fatalf("ack of 20,000 records from disk: %v %v %v", costs, drained, err)
	}
	if _, drained, _ := ob.Ack(ob.ID(), uint64(n)); !drained {
		t.Fatal("not drained after acking everything")
	}
	if segs, _ := listSegments(dir); len(segs) != 1 {
		t.Fatalf("%d segments left after everything was acked, want the one being written", len(segs))
	}
}

// An idle outbox writes a record on the caller's goroutine at once (no
// writer wake-up, nothing lost to a SIGKILL right after); what was written
// inline is synced within the sync interval. Through the segment's mapping
// a burst is written inline too, record by record; with write syscalls
// (no mapping) it groups behind the window.
func TestIdleAppendWritesInline(t *testing.T) {
	for _, mapped := range []bool{true, false} {
		t.Run(map[bool]string{true: "mapped", false: "write"}[mapped], func(t *testing.T) {
			defer func(v bool) { mapSegments = v }(mapSegments)
			mapSegments = mapped
			dir := filepath.Join(t.TempDir(), "spend")
			ob, err := Open(dir, Options{Window: 50 * time.Millisecond, SyncInterval: 30 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			defer ob.Close()
			if got := ob.curMap != nil; got != mapped {
				t.Fatalf("segment mapped: %v, want %v", got, mapped)
			}
			ob.Append(rec(1))
			if st := ob.Stats(); st.Committed != 1 || st.Queued != 0 {
				t.Fatalf("idle append not written at once: %+v", st)
			}
			for i := range 10 {
				ob.Append(rec(2 + i))
			}
			if mapped {
				if st := ob.Stats(); st.Committed != 11 || st.Queued != 0 {
					t.Fatalf("a burst into the mapping should be written at once: %+v", st)
				}
				// What the mapping holds is in the file (the page cache),
				// frame by frame, before any sync or Close: what a killed
				// process leaves behind.
				segs, _ := listSegments(dir)
				var seen []uint64
				if _, err := scan(segs[len(segs)-1].path, func(r *syncv1.SpendRecord) error {
					seen = append(seen, r.GetSeq())
					return nil
				}); err != nil || len(seen) != 11 || seen[0] != seen[10]-10 {
					t.Fatalf("the segment read back holds %v (%v), want 11 records in order", seen, err)
				}
			} else {
				if st := ob.Stats(); st.Committed != 1 || st.Queued != 10 {
					t.Fatalf("a burst right after a write should wait for the window: %+v", st)
				}
				flush(t, ob)
				if st := ob.Stats(); st.Committed != 11 || st.Groups != 2 {
					t.Fatalf("burst not written as one group: %+v", st)
				}
			}
			deadline := time.Now().Add(2 * time.Second)
			for ob.Stats().Syncs == 0 {
				if time.Now().After(deadline) {
					t.Fatal("written records never synced")
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

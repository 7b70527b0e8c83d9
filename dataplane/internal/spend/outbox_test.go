package spend

import (
	"context"
	"fmt"
	"log/slog"
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
	// Simulate a crash: close the file under the writer without Close.
	ob.db.Close()

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
	if len(recs) != 11 || recs[10].Seq != 11 {
		t.Fatalf("after reopen: %d records, last seq %d", len(recs), recs[len(recs)-1].Seq)
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
	if recs := allRecords(t, ob2); len(recs) != 1 || recs[0].Seq != 11 {
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
	ob.lastSeq = 2 // the fake marks above have no records behind them
	ob.mu.Unlock()
	ob.Close()
}

// An outbox written before costs were nano-USD (no "money" mark) ships its
// unacked records converted: a record of 855 micro-USD ships as 855,000
// nano-USD, once (a reopen converts nothing again), and new records keep
// their nano-USD cost.
func TestOldMicroOutboxConverted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spend")
	ob := open(t, path)
	for i := range 3 {
		ob.Append(rec(855 + i))
	}
	flush(t, ob)
	ob.Close()
	// Turn the file into one written by a micro-USD proxy.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete(metaMoney) }); err != nil {
		t.Fatal(err)
	}
	db.Close()

	for round := range 2 {
		ob2 := open(t, path)
		recs := allRecords(t, ob2)
		if len(recs) != 3 {
			t.Fatalf("round %d: %d records", round, len(recs))
		}
		for i, r := range recs {
			if want := int64(855+i) * 1000; r.Cost != want {
				t.Fatalf("round %d: record %d costs %d nano-USD, want %d", round, i, r.Cost, want)
			}
		}
		if round == 1 {
			ob2.Append(rec(7))
			flush(t, ob2)
			if recs := allRecords(t, ob2); len(recs) != 4 || recs[3].Cost != 7 {
				t.Fatalf("new record after conversion: %+v", recs[len(recs)-1])
			}
		}
		ob2.Close()
	}
}

package syncclient

import (
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// fakeSpend is an in-memory SpendSource.
type fakeSpend struct {
	mu      sync.Mutex
	recs    []*syncv1.SpendRecord // seq = index+1
	acked   uint64
	changed chan struct{}
}

func newFakeSpend() *fakeSpend { return &fakeSpend{changed: make(chan struct{})} }

func (f *fakeSpend) add(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for range n {
		f.recs = append(f.recs, &syncv1.SpendRecord{Seq: uint64(len(f.recs) + 1)})
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeSpend) Batch(proxyID string, after uint64, max int) (*syncv1.SpendBatch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	after = maxU64(after, f.acked)
	if after >= uint64(len(f.recs)) {
		return nil, nil
	}
	recs := f.recs[after:min(len(f.recs), int(after)+max)]
	return &syncv1.SpendBatch{ProxyId: proxyID, OutboxId: "ob", FirstSeq: after + 1, LastSeq: after + uint64(len(recs)), Records: recs}, nil
}

func maxU64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

func (f *fakeSpend) Ack(_ string, last uint64) ([]*syncv1.ObjectSpend, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acked = maxU64(f.acked, last)
	return nil, f.acked == uint64(len(f.recs)), nil
}

func (f *fakeSpend) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// fakeLeases is a gate that only asks the shipper to hurry.
type fakeLeases struct{ urgent chan struct{} }

func (l *fakeLeases) Uses() *syncv1.LeaseRequest                        { return nil }
func (l *fakeLeases) Notify() <-chan struct{}                           { return nil }
func (l *fakeLeases) Pending() <-chan struct{}                          { return nil }
func (l *fakeLeases) ReportInterval() time.Duration                     { return time.Hour }
func (l *fakeLeases) SpendUrgent() <-chan struct{}                      { return l.urgent }
func (l *fakeLeases) Apply(*syncv1.LeaseGrant)                          {}
func (l *fakeLeases) SetConnected(bool)                                 {}
func (l *fakeLeases) Acked(costs, spends []*syncv1.ObjectSpend, _ bool) {}

type shipped struct {
	at          time.Time
	first, last uint64
}

// After a batch that is not full the next waits for the linger (records
// gather meanwhile and go as one batch), unless the budget gate asks to
// hurry or FlushSpend was called; a full batch does not linger.
func TestSpendLingersBetweenBatches(t *testing.T) {
	old := spendLinger
	t.Cleanup(func() { spendLinger = old }) // after the client stops (cleanups run last first)
	spendLinger = 800 * time.Millisecond    // far from the 400 ms "at once" bounds below, on a loaded machine

	var mu sync.Mutex
	var got []shipped
	batches := func() []shipped { mu.Lock(); defer mu.Unlock(); return append([]shipped(nil), got...) }
	srv := &fakeServer{sessions: []func(grpc.BidiStreamingServer[syncv1.ProxyMessage, syncv1.ControlMessage]) error{
		func(s grpc.BidiStreamingServer[syncv1.ProxyMessage, syncv1.ControlMessage]) error {
			if err := s.Send(snap(5, 0, true)); err != nil {
				return err
			}
			for {
				m, err := s.Recv()
				if err != nil {
					return nil
				}
				if b := m.GetSpendBatch(); b != nil {
					mu.Lock()
					got = append(got, shipped{time.Now(), b.GetFirstSeq(), b.GetLastSeq()})
					mu.Unlock()
					if err := s.Send(&syncv1.ControlMessage{Msg: &syncv1.ControlMessage_SpendAck{SpendAck: &syncv1.SpendAck{OutboxId: "ob", LastSeq: b.GetLastSeq()}}}); err != nil {
						return nil
					}
				}
			}
		}}}
	sp := newFakeSpend()
	gate := &fakeLeases{urgent: make(chan struct{}, 1)}
	a := &fakeApplier{}
	c := startWith(t, srv, a, nil, func(o *Options) { o.Spend, o.Leases = sp, gate })
	eventually(t, "snapshot", func() bool { return a.Revision() == 5 })

	// The first record after a quiet spell goes at once.
	t0 := time.Now()
	sp.add(1)
	eventually(t, "first batch", func() bool { return len(batches()) == 1 })
	if d := batches()[0].at.Sub(t0); d > 400*time.Millisecond {
		t.Fatalf("first record shipped after %v, want at once", d)
	}
	// Records right after it wait for the linger and go as one batch.
	for range 3 {
		sp.add(1)
		time.Sleep(20 * time.Millisecond)
	}
	eventually(t, "second batch", func() bool { return len(batches()) == 2 })
	b := batches()
	if gap := b[1].at.Sub(b[0].at); gap < spendLinger-50*time.Millisecond {
		t.Fatalf("second batch %v after the first, want the linger (%v)", gap, spendLinger)
	}
	if b[1].first != 2 || b[1].last != 4 {
		t.Fatalf("second batch holds %d..%d, want 2..4 together", b[1].first, b[1].last)
	}

	// The budget gate asks to hurry: the next record goes at once.
	sp.add(1)
	t1 := time.Now()
	gate.urgent <- struct{}{}
	eventually(t, "hurried batch", func() bool { return len(batches()) == 3 })
	if d := batches()[2].at.Sub(t1); d > 400*time.Millisecond {
		t.Fatalf("hurried record shipped after %v, want at once", d)
	}

	// A full batch does not linger: 2 × spendBatchMax records go back to back.
	sp.add(2 * spendBatchMax)
	eventually(t, "full batches", func() bool { return len(batches()) >= 4 })
	time.Sleep(spendLinger + 100*time.Millisecond)
	b = batches()
	if b[3].last-b[3].first+1 != spendBatchMax || len(b) < 5 || b[4].at.Sub(b[3].at) > 400*time.Millisecond {
		t.Fatalf("full batches: %+v", b[3:])
	}

	// After FlushSpend (shutdown) nothing lingers.
	c.FlushSpend()
	time.Sleep(50 * time.Millisecond)
	n := len(batches())
	for range 3 {
		sp.add(1)
		want := n + 1
		eventually(t, "flushed batch", func() bool { return len(batches()) >= want })
		n = len(batches())
	}
	b = batches()
	if gap := b[len(b)-1].at.Sub(b[len(b)-3].at); gap > spendLinger/2 {
		t.Fatalf("after FlushSpend three records took %v to ship, want no linger", gap)
	}
}

package syncserver

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
)

func spendBatchMsg(outbox string, first, last uint64, cost int64) *syncv1.ProxyMessage {
	b := &syncv1.SpendBatch{ProxyId: "p1", OutboxId: outbox, FirstSeq: first, LastSeq: last}
	for seq := first; seq <= last; seq++ {
		b.Records = append(b.Records, &syncv1.SpendRecord{
			Seq: seq, RequestId: "req", TokenId: "key-0000", TeamId: "team-1", UserId: "user-1", OrganizationId: "org-1",
			EndUser: "cust", Model: "gpt-4o-mini", DeploymentId: "m-1", PromptTokens: 10, CompletionTokens: 5, Cost: cost,
			Status: 200, StartUnixNano: time.Now().UnixNano(), EndUnixNano: time.Now().UnixNano(),
		})
	}
	return &syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_SpendBatch{SpendBatch: b}}
}

// waitAck reads until an ack arrives and returns it.
func waitAck(t *testing.T, p *fakeProxy) *syncv1.SpendAck {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n := len(p.acks); len(p.acks) == n; {
		p.mustNext(time.Until(deadline))
	}
	return p.acks[len(p.acks)-1]
}

// A batch is applied once and acked; the same batch again (the ack was
// lost, the proxy resent it) is acked and changes nothing; the new spend
// reaches every proxy as a delta.
func TestSpendBatchAppliedOnceAndAcked(t *testing.T) {
	for _, b := range []backend{
		{"embedded", func(t testing.TB) store.Store {
			st, err := embedded.Open(filepath.Join(t.TempDir(), "tollgate.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}},
		{"postgres", func(t testing.TB) store.Store { return pgtest.NewStore(t) }},
	} {
		t.Run(b.name, func(t *testing.T) { testSpendApplied(t, b.open(t)) })
	}
}

func testSpendApplied(t *testing.T, st store.Store) {
	{
		seed(t, st, 2)
		h := newHarness(t, st, testToken)
		head := waitStoreHead(t, st)
		p := h.connect("p1", testToken, 0, true)
		p.waitRev(head, 10*time.Second)
		other := h.connect("p2", testToken, 0, true)
		other.waitRev(head, 10*time.Second)

		ctx := context.Background()
		for range 3 {
			if err := p.stream.Send(spendBatchMsg("ob-1", 1, 4, 25)); err != nil {
				t.Fatal(err)
			}
			if ack := waitAck(t, p); ack.GetLastSeq() != 4 || ack.GetOutboxId() != "ob-1" {
				t.Fatalf("ack = %v, want ob-1 up to 4", ack)
			}
		}
		// An overlapping batch applies only what is new.
		if err := p.stream.Send(spendBatchMsg("ob-1", 3, 6, 25)); err != nil {
			t.Fatal(err)
		}
		if ack := waitAck(t, p); ack.GetLastSeq() != 6 {
			t.Fatalf("ack = %v, want 6", ack)
		}
		k, err := st.Read().GetKey(ctx, "key-0000")
		if err != nil || k.Spend != 6*25 {
			t.Fatalf("key spend = %d, %v; want %d", k.Spend, err, 6*25)
		}
		tm, _ := st.Read().GetTeam(ctx, "team-1")
		if m, _ := tm.Member("user-1"); tm.Spend != 150 || m.Spend != 150 {
			t.Fatalf("team spend %d, member %d; want 150", tm.Spend, m.Spend)
		}
		if _, total, _ := st.Read().ListSpendLogs(ctx, store.SpendLogFilter{}); total != 6 {
			t.Fatalf("%d spend logs, want 6", total)
		}
		// The other proxy sees the new spend (budget checks read it). On
		// Postgres revisions are assigned just after commit, so wait for
		// the delta rather than for a head read that may precede it.
		deadline := time.Now().Add(10 * time.Second)
		for other.state["key/key-0000"].GetKey().GetSpend() != 150 {
			if time.Now().After(deadline) {
				t.Fatalf("proxy p2 sees key spend %d, want 150", other.state["key/key-0000"].GetKey().GetSpend())
			}
			other.mustNext(time.Until(deadline))
		}
	}
}

// A malformed batch ends the stream with InvalidArgument and applies nothing.
func TestSpendBatchInvalid(t *testing.T) {
	st := newMemStore()
	h := newHarness(t, st, testToken)
	p := h.connect("p1", testToken, 0, true)
	p.waitRev(0, 5*time.Second)
	m := spendBatchMsg("ob-1", 1, 2, 1)
	m.GetSpendBatch().LastSeq = 7 // does not match the records
	if err := p.stream.Send(m); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := p.next(time.Until(deadline))
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("stream ended with %v, want InvalidArgument", err)
			}
			return
		}
	}
}

// Stats shows, per proxy, when it was last heard from and how many spend
// records wait in its outbox: what it reported as its outbox head minus
// what was acked since. A proxy that never reports its head shows -1.
func TestStatsOutboxDepthAndLastSeen(t *testing.T) {
	st, err := embedded.Open(filepath.Join(t.TempDir(), "tollgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	seed(t, st, 1)
	h := newHarness(t, st, testToken)
	head := waitStoreHead(t, st)
	p := h.connect("p1", testToken, 0, true)
	p.waitRev(head, 10*time.Second)
	stats := func() ProxyStats {
		for _, ps := range h.srv.Stats().Proxies {
			if ps.ID == "p1" {
				return ps
			}
		}
		t.Fatal("p1 not in Stats")
		return ProxyStats{}
	}
	if ps := stats(); ps.OutboxDepth != -1 || !ps.LastSpendBatch.IsZero() {
		t.Fatalf("before any batch: %+v", ps)
	}
	before := stats().LastSeen

	m := spendBatchMsg("ob-1", 1, 4, 25)
	m.GetSpendBatch().OutboxLastSeq = 10 // 6 more records wait behind this batch
	if err := p.stream.Send(m); err != nil {
		t.Fatal(err)
	}
	waitAck(t, p)
	ps := stats()
	if ps.OutboxDepth != 6 || ps.SpendAckedSeq != 4 || ps.LastSpendBatch.IsZero() || !ps.LastSeen.After(before) {
		t.Fatalf("after a batch with 6 behind it: %+v", ps)
	}
	m = spendBatchMsg("ob-1", 5, 10, 25)
	m.GetSpendBatch().OutboxLastSeq = 10
	if err := p.stream.Send(m); err != nil {
		t.Fatal(err)
	}
	waitAck(t, p)
	if ps := stats(); ps.OutboxDepth != 0 || ps.SpendAckedSeq != 10 {
		t.Fatalf("after the outbox drained: %+v", ps)
	}
}

// A proxy whose stream ends moves to Stats.Disconnected (with its last
// revisions), and leaves it when it connects again.
func TestStatsKeepsRecentlyDisconnectedProxies(t *testing.T) {
	st, err := embedded.Open(filepath.Join(t.TempDir(), "tollgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	seed(t, st, 1)
	h := newHarness(t, st, testToken)
	head := waitStoreHead(t, st)
	p := h.connect("p1", testToken, 0, true)
	p.waitRev(head, 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for stats := h.srv.Stats(); len(stats.Proxies) != 1 || stats.Proxies[0].SentRevision != head || !stats.Proxies[0].Connected; stats = h.srv.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("p1 never got %d: %+v", head, stats.Proxies)
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.cancel()
	var gone ProxyStats
	for stats := h.srv.Stats(); ; stats = h.srv.Stats() {
		if len(stats.Proxies) == 0 && len(stats.Disconnected) == 1 {
			gone = stats.Disconnected[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("p1 not moved to Disconnected: %+v", stats)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if gone.ID != "p1" || gone.Connected || gone.DisconnectedAt.IsZero() || gone.SentRevision != head {
		t.Fatalf("disconnected p1: %+v", gone)
	}
	q := h.connect("p1", testToken, head, true)
	q.waitRev(head, 10*time.Second)
	for stats := h.srv.Stats(); len(stats.Proxies) != 1 || len(stats.Disconnected) != 0; stats = h.srv.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("p1 back: %+v", stats)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

package syncserver

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/events"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// maxSpendRecords bounds one SpendBatch (the proxy sends at most 512).
const maxSpendRecords = 10000

// lockedStream makes Send safe from two goroutines: the serving loop
// (snapshot, deltas, heartbeats) and the receiving one (spend acks).
type lockedStream struct {
	syncStream
	mu sync.Mutex
}

func (l *lockedStream) Send(m *syncv1.ControlMessage) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.syncStream.Send(m)
}

// parseSpend validates one batch from proxyID (the id its Hello gave) and
// returns it with its ack. A batch that fails validation is a protocol
// error (InvalidArgument); a store failure later is Unavailable and the
// proxy resends the batch on its next stream. Either way nothing of it was
// applied.
func (s *Server) parseSpend(proxyID string, b *syncv1.SpendBatch) (store.SpendBatch, *syncv1.ControlMessage, error) {
	recs := b.GetRecords()
	switch {
	case proxyID == "" || len(proxyID) > maxIDLen:
		return store.SpendBatch{}, nil, status.Errorf(codes.InvalidArgument, "spend needs a hello.proxy_id of 1..%d bytes", maxIDLen)
	case b.GetProxyId() != "" && b.GetProxyId() != proxyID:
		return store.SpendBatch{}, nil, status.Error(codes.InvalidArgument, "spend_batch.proxy_id differs from hello.proxy_id")
	case b.GetOutboxId() == "" || len(b.GetOutboxId()) > maxIDLen:
		return store.SpendBatch{}, nil, status.Errorf(codes.InvalidArgument, "spend_batch.outbox_id must be 1..%d bytes", maxIDLen)
	case len(recs) == 0:
		return store.SpendBatch{}, nil, status.Error(codes.InvalidArgument, "spend_batch has no records")
	case len(recs) > maxSpendRecords:
		return store.SpendBatch{}, nil, status.Errorf(codes.InvalidArgument, "spend_batch has more than %d records", maxSpendRecords)
	case recs[0].GetSeq() != b.GetFirstSeq() || recs[len(recs)-1].GetSeq() != b.GetLastSeq():
		return store.SpendBatch{}, nil, status.Error(codes.InvalidArgument, "spend_batch first_seq/last_seq do not match its records")
	}
	batch := store.SpendBatch{ProxyID: proxyID, OutboxID: b.GetOutboxId(), Records: make([]store.SpendRecord, len(recs))}
	var prev uint64
	for i, r := range recs {
		if r.GetSeq() <= prev {
			return store.SpendBatch{}, nil, status.Error(codes.InvalidArgument, "spend_batch sequence numbers must increase")
		}
		prev = r.GetSeq()
		for _, f := range []string{r.GetRequestId(), r.GetTokenId(), r.GetTeamId(), r.GetUserId(), r.GetOrganizationId(),
			r.GetEndUser(), r.GetModel(), r.GetDeploymentId(), r.GetRoute()} {
			if len(f) > maxIDLen {
				return store.SpendBatch{}, nil, status.Errorf(codes.InvalidArgument, "spend record %d has a field longer than %d bytes", r.GetSeq(), maxIDLen)
			}
		}
		if r.GetCost() < 0 || r.GetPromptTokens() < 0 || r.GetCompletionTokens() < 0 {
			return store.SpendBatch{}, nil, status.Errorf(codes.InvalidArgument, "spend record %d has a negative cost or token count", r.GetSeq())
		}
		batch.Records[i] = store.SpendRecord{
			Seq: r.GetSeq(), RequestID: r.GetRequestId(), TokenID: r.GetTokenId(), TeamID: r.GetTeamId(),
			UserID: r.GetUserId(), OrganizationID: r.GetOrganizationId(), EndUser: r.GetEndUser(), Model: r.GetModel(),
			DeploymentID: r.GetDeploymentId(), PromptTokens: r.GetPromptTokens(), CompletionTokens: r.GetCompletionTokens(),
			Cost: r.GetCost(), Streamed: r.GetStreamed(), Estimated: r.GetEstimated(), Status: int(r.GetStatus()),
			Route: r.GetRoute(), StartTime: time.Unix(0, r.GetStartUnixNano()).UTC(), EndTime: time.Unix(0, r.GetEndUnixNano()).UTC(),
		}
	}
	return batch, &syncv1.ControlMessage{Msg: &syncv1.ControlMessage_SpendAck{SpendAck: &syncv1.SpendAck{
		OutboxId: b.GetOutboxId(), LastSeq: b.GetLastSeq(),
	}}}, nil
}

// spendReq is a validated batch waiting for the applier, with the way to
// answer its stream.
type spendReq struct {
	batch store.SpendBatch
	ack   *syncv1.ControlMessage
	send  func(*syncv1.ControlMessage) error
	abort func(error)
}

// Group apply: the applier takes every batch queued (from every stream, up
// to maxGroupRecords) and applies them in ONE transaction, consecutive
// batches of the same outbox merged into one. A transaction's fixed cost
// (the touched keys, teams, users and orgs rewritten once, their change
// records, the commit) dominates a 500-record batch; sharing it is what
// lets ingestion keep up with many proxies.
const (
	maxGroupRecords = 8192
	spendQueueLen   = 256
)

// submitSpend queues a batch; its ack (or the stream's abort) follows once
// its group commits. Batches of one stream are acked in order.
func (s *Server) submitSpend(r spendReq) {
	s.spendOnce.Do(func() {
		s.spendQ = make(chan spendReq, spendQueueLen)
		go s.spendApplier()
	})
	select {
	case s.spendQ <- r:
	case <-s.done:
		r.abort(errShutdown())
	}
}

func (s *Server) spendApplier() {
	for {
		var group []spendReq
		select {
		case r := <-s.spendQ:
			group = append(group, r)
		case <-s.done:
			return
		}
		n := len(group[0].batch.Records)
	drain:
		for n < maxGroupRecords {
			select {
			case r := <-s.spendQ:
				group = append(group, r)
				n += len(r.batch.Records)
			default:
				break drain
			}
		}
		s.applyGroup(group)
	}
}

// applyGroup applies a group in one transaction and answers every stream.
func (s *Server) applyGroup(group []spendReq) {
	type source struct{ proxy, outbox string }
	var merged []store.SpendBatch
	index := map[source]int{}
	for _, r := range group {
		k := source{r.batch.ProxyID, r.batch.OutboxID}
		i, ok := index[k]
		if !ok {
			index[k] = len(merged)
			merged = append(merged, store.SpendBatch{ProxyID: k.proxy, OutboxID: k.outbox})
			i = len(merged) - 1
		}
		m := &merged[i]
		var last uint64
		if len(m.Records) > 0 {
			last = m.Records[len(m.Records)-1].Seq
		}
		m.Records = append(m.Records, r.batch.Above(last)...) // a resent overlap goes in once
	}
	start := time.Now()
	applied := 0
	var after map[objectRef]int64
	err := s.st.ReadWriteTx(s.base, func(ctx context.Context, tx store.Tx) error {
		applied = 0
		after = map[objectRef]int64{}
		for _, b := range merged {
			res, err := tx.ApplySpend(ctx, b)
			if err != nil {
				return err
			}
			applied += res.Applied
			for _, o := range res.Spends {
				after[objectRef{o.Kind, o.ID}] = o.Spend // a later batch of the group leaves more
			}
			if err := events.EnqueueSoftBudgets(ctx, tx, res.SoftBudgetCrossings, time.Now()); err != nil {
				return err
			}
		}
		return nil
	})
	s.m.spendApply.Observe(time.Since(start).Seconds())
	if err != nil {
		s.m.spendErrors.Inc()
		err = s.storeErr(s.base, "applying spend", err)
		for _, r := range group {
			r.abort(err)
		}
		return
	}
	s.m.spendBatches.Add(float64(len(group)))
	s.m.spendRecords.Add(float64(applied))
	s.log.Debug("sync: spend applied", "batches", len(group), "sources", len(merged), "applied", applied, "took", time.Since(start))
	for _, r := range group {
		if err := r.send(withSpends(r.ack, r.batch, after)); err != nil {
			r.abort(err)
		}
	}
}

type objectRef struct{ kind, id string }

// withSpends adds to ack the spend, after the group's transaction, of every
// object the batch's records touched (a batch that was a replay touched
// nothing new: its objects' current spend is unknown here and left out; the
// proxy then treats its records as synced).
func withSpends(ack *syncv1.ControlMessage, b store.SpendBatch, after map[objectRef]int64) *syncv1.ControlMessage {
	a := ack.GetSpendAck()
	if a == nil || len(after) == 0 {
		return ack
	}
	seen := map[objectRef]bool{}
	add := func(kind, id string) {
		ref := objectRef{kind, id}
		if id == "" || seen[ref] {
			return
		}
		seen[ref] = true
		if v, ok := after[ref]; ok {
			a.Spends = append(a.Spends, &syncv1.ObjectSpend{Kind: kind, Id: id, Spend: v})
		}
	}
	for i := range b.Records {
		r := &b.Records[i]
		add(store.KindKey, r.TokenID)
		add(store.KindTeam, r.TeamID)
		add(store.KindUser, r.UserID)
		add(store.KindOrganization, r.OrganizationID)
		add(store.KindEndUser, r.EndUser)
		if r.TeamID != "" && r.UserID != "" {
			add(store.KindTeamMember, store.TeamMemberID(r.TeamID, r.UserID))
		}
		if r.TokenID != "" && r.Model != "" {
			add(store.KindKeyModel, store.KeyModelID(r.TokenID, r.Model))
		}
	}
	return ack
}

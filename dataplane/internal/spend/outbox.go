package spend

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

var (
	bucketMeta    = []byte("meta")
	bucketRecords = []byte("records") // big-endian seq → SpendRecord (protobuf)
	metaOutboxID  = []byte("outbox_id")
	metaSeq       = []byte("last_seq") // last assigned seq (kept when records are acked away)
	// metaMoney is the unit of the records' costs: "nano-usd". An outbox
	// without it was written in micro-USD; Open converts its records.
	metaMoney = []byte("money")
	nanoUSD   = []byte("nano-usd")
)

// Defaults.
const (
	DefaultMaxGroup = 512
	// maxQueued bounds the records waiting for a commit; beyond it Append
	// blocks (back-pressure on a stalled disk rather than lost spend).
	maxQueued = 200_000
)

// Options configure Open.
type Options struct {
	// MaxGroup is the most records one commit holds (default 512).
	MaxGroup int
	// Window is how long the writer lets records gather after the first
	// one arrives at an idle outbox, so that a modest request rate shares
	// fsyncs too (default DefaultWindow; negative: commit at once). It is
	// the crash-loss bound: a SIGKILL loses at most the records of the last
	// Window (plus one commit's duration); SIGTERM loses none.
	Window time.Duration
	Logger *slog.Logger
}

// DefaultWindow is the default group-commit window. At 200 req/s a 5 ms
// window commits one record per fsynced transaction; a 20 ms one shares
// each commit among four times as many requests, which halved the CPU the
// proxy spends per request beyond a bare reverse proxy's and cut the p50
// it adds by a quarter (deploy/bench/proxy.sh, README "Performance"). The crash-loss bound it sets (a SIGKILL loses the
// records of the last 20 ms) is small next to what a SIGKILL loses anyway:
// every request still in flight, which for an LLM call is seconds of
// traffic whose spend no gateway can record.
const DefaultWindow = 20 * time.Millisecond

// Outbox is a durable queue of spend records.
type Outbox struct {
	db       *bolt.DB
	id       string
	maxGroup int
	window   time.Duration
	log      *slog.Logger

	mu        sync.Mutex
	queue     []*syncv1.SpendRecord // appended, not yet committed
	space     *sync.Cond            // signalled when the queue shrinks
	work      chan struct{}         // wakes the writer
	closed    bool
	lastSeq   uint64 // last committed seq
	ackedSeq  uint64 // every seq ≤ ackedSeq is acked (deleted)
	changed   chan struct{}
	committed uint64 // records committed since open (stats)
	groups    uint64 // commits since open
	commitDur time.Duration
	maxCommit time.Duration
	writerErr error
	// marks remembers when each unacked group was committed (in seq
	// order), for the age of the oldest unacked record.
	marks []commitMark

	writerDone chan struct{}
	closing    chan struct{} // closed by Close: ends a group window early
}

// commitMark: records up to last were committed at (or, for records found
// in the file at Open, before) at.
type commitMark struct {
	last uint64
	at   time.Time
}

// maxMarks bounds the commit marks kept while the control plane does not
// ack (an hour of back-to-back commits would otherwise grow without bound).
const maxMarks = 1024

// addMarkLocked appends m; beyond maxMarks adjacent marks are merged, each
// pair keeping the earlier time, so the oldest age errs on the old side.
func (ob *Outbox) addMarkLocked(m commitMark) {
	ob.marks = append(ob.marks, m)
	if len(ob.marks) <= maxMarks {
		return
	}
	j := 0
	for i := 0; i < len(ob.marks); i += 2 {
		mk := ob.marks[i]
		if i+1 < len(ob.marks) {
			mk.last = ob.marks[i+1].last
		}
		ob.marks[j] = mk
		j++
	}
	ob.marks = ob.marks[:j]
}

// Open opens (or creates) the outbox file at path.
func Open(path string, o Options) (*Outbox, error) {
	if o.MaxGroup <= 0 {
		o.MaxGroup = DefaultMaxGroup
	}
	if o.Window == 0 {
		o.Window = DefaultWindow
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      2 * time.Second,
		FreelistType: bolt.FreelistMapType,
		// The freelist is rebuilt at open (the file is small), so a
		// commit writes one page fewer.
		NoFreelistSync: true,
	})
	if err != nil {
		return nil, fmt.Errorf("spend outbox %s: %w", path, err)
	}
	ob := &Outbox{db: db, maxGroup: o.MaxGroup, window: o.Window, log: o.Logger.With("component", "spend"),
		work: make(chan struct{}, 1), changed: make(chan struct{}), writerDone: make(chan struct{}), closing: make(chan struct{})}
	ob.space = sync.NewCond(&ob.mu)
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		recs, err := tx.CreateBucketIfNotExists(bucketRecords)
		if err != nil {
			return err
		}
		if id := meta.Get(metaOutboxID); id != nil {
			ob.id = string(id)
		} else {
			var b [16]byte
			if _, err := crand.Read(b[:]); err != nil {
				return err
			}
			ob.id = hex.EncodeToString(b[:])
			if err := meta.Put(metaOutboxID, []byte(ob.id)); err != nil {
				return err
			}
		}
		if !bytes.Equal(meta.Get(metaMoney), nanoUSD) {
			if err := microToNano(recs); err != nil {
				return err
			}
			if err := meta.Put(metaMoney, nanoUSD); err != nil {
				return err
			}
		}
		if v := meta.Get(metaSeq); len(v) == 8 {
			ob.lastSeq = binary.BigEndian.Uint64(v)
		}
		ob.ackedSeq = ob.lastSeq
		if k, _ := recs.Cursor().First(); k != nil {
			ob.ackedSeq = binary.BigEndian.Uint64(k) - 1
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("spend outbox %s: %w", path, err)
	}
	if n := ob.lastSeq - ob.ackedSeq; n > 0 {
		ob.marks = append(ob.marks, commitMark{last: ob.lastSeq, at: time.Now()})
		ob.log.Info("spend outbox holds unshipped records", "records", n, "outbox_id", ob.id)
	}
	go ob.writer()
	return ob, nil
}

// ID is the outbox id (random, fixed when the file was created).
func (ob *Outbox) ID() string { return ob.id }

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("spend outbox closed")

// Append queues r for the next group commit. r.Seq is assigned then; the
// caller must not modify r afterwards.
func (ob *Outbox) Append(r *syncv1.SpendRecord) error {
	ob.mu.Lock()
	for len(ob.queue) >= maxQueued && !ob.closed {
		ob.space.Wait()
	}
	if ob.closed {
		ob.mu.Unlock()
		return ErrClosed
	}
	ob.queue = append(ob.queue, r)
	ob.mu.Unlock()
	select {
	case ob.work <- struct{}{}:
	default:
	}
	return nil
}

// writer commits the queue group by group until Close.
func (ob *Outbox) writer() {
	defer close(ob.writerDone)
	backoff := 10 * time.Millisecond
	for {
		ob.mu.Lock()
		for len(ob.queue) == 0 {
			if ob.closed {
				ob.mu.Unlock()
				return
			}
			ob.mu.Unlock()
			<-ob.work
			ob.mu.Lock()
			if ob.window > 0 && len(ob.queue) < ob.maxGroup && !ob.closed {
				// Let the group fill for one window (Close cuts it short).
				ob.mu.Unlock()
				select {
				case <-time.After(ob.window):
				case <-ob.closing:
				}
				ob.mu.Lock()
			}
		}
		n := min(len(ob.queue), ob.maxGroup)
		group := ob.queue[:n:n]
		first := ob.lastSeq + 1
		ob.mu.Unlock()

		start := time.Now()
		err := ob.commit(group, first)
		took := time.Since(start)

		ob.mu.Lock()
		if err != nil {
			ob.writerErr = err
			closed := ob.closed
			ob.mu.Unlock()
			ob.log.Error("spend outbox commit failed; retrying", "records", n, "err", err)
			if closed {
				return // Close gives up: the records were never durable
			}
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		ob.writerErr = nil
		ob.queue = ob.queue[n:]
		if len(ob.queue) == 0 {
			ob.queue = nil // release the backing array
		}
		ob.lastSeq = first + uint64(n) - 1
		ob.addMarkLocked(commitMark{last: ob.lastSeq, at: start})
		ob.committed += uint64(n)
		ob.groups++
		ob.commitDur += took
		ob.maxCommit = max(ob.maxCommit, took)
		ob.broadcastLocked()
		ob.space.Broadcast()
		ob.mu.Unlock()
	}
}

// commit writes group with sequence numbers from first, in one fsynced
// bbolt transaction.
func (ob *Outbox) commit(group []*syncv1.SpendRecord, first uint64) error {
	return ob.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRecords)
		b.FillPercent = 1 // keys only ever grow
		var key [8]byte
		buf := make([]byte, 0, 256)
		for i, r := range group {
			seq := first + uint64(i)
			r.Seq = seq
			var err error
			buf, err = proto.MarshalOptions{}.MarshalAppend(buf[:0], r)
			if err != nil {
				return err
			}
			binary.BigEndian.PutUint64(key[:], seq)
			if err := b.Put(key[:], bytes.Clone(buf)); err != nil {
				return err
			}
		}
		binary.BigEndian.PutUint64(key[:], first+uint64(len(group))-1)
		return tx.Bucket(bucketMeta).Put(metaSeq, key[:])
	})
}

func (ob *Outbox) broadcastLocked() {
	close(ob.changed)
	ob.changed = make(chan struct{})
}

// Changed returns a channel closed at the next commit or ack.
func (ob *Outbox) Changed() <-chan struct{} {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	return ob.changed
}

// microToNano rewrites the records of an outbox written before costs were
// nano-USD (micro-USD then), so that they ship with the amount they billed.
func microToNano(recs *bolt.Bucket) error {
	var ks, vs [][]byte
	err := recs.ForEach(func(k, v []byte) error {
		r := new(syncv1.SpendRecord)
		if err := proto.Unmarshal(v, r); err != nil {
			return fmt.Errorf("record %x: %w", k, err)
		}
		if r.Cost > math.MaxInt64/1000 {
			r.Cost = math.MaxInt64
		} else {
			r.Cost *= 1000
		}
		b, err := proto.Marshal(r)
		if err != nil {
			return err
		}
		ks, vs = append(ks, bytes.Clone(k)), append(vs, b)
		return nil
	})
	if err != nil {
		return err
	}
	for i := range ks {
		if err := recs.Put(ks[i], vs[i]); err != nil {
			return err
		}
	}
	return nil
}

// Batch returns up to max committed records with seq > after (and not yet
// acked), or nil when there are none.
func (ob *Outbox) Batch(proxyID string, after uint64, max int) (*syncv1.SpendBatch, error) {
	ob.mu.Lock()
	after = maxU(after, ob.ackedSeq)
	last := ob.lastSeq
	ob.mu.Unlock()
	if after >= last {
		return nil, nil
	}
	b := &syncv1.SpendBatch{ProxyId: proxyID, OutboxId: ob.id, OutboxLastSeq: last}
	err := ob.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketRecords).Cursor()
		var key [8]byte
		binary.BigEndian.PutUint64(key[:], after+1)
		for k, v := c.Seek(key[:]); k != nil && len(b.Records) < max; k, v = c.Next() {
			r := new(syncv1.SpendRecord)
			if err := proto.Unmarshal(v, r); err != nil {
				return fmt.Errorf("spend outbox: record %x: %w", k, err)
			}
			b.Records = append(b.Records, r)
		}
		return nil
	})
	if err != nil || len(b.Records) == 0 {
		return nil, err
	}
	b.FirstSeq, b.LastSeq = b.Records[0].Seq, b.Records[len(b.Records)-1].Seq
	return b, nil
}

func maxU(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// Ack deletes every record up to lastSeq: the control plane applied them.
// It returns what the deleted records cost per key, team, user and
// organization (ObjectSpend.Spend holds the cost), for the budget gate, and
// whether no appended record is left unacked. An ack for another outbox id
// (a stale stream) is ignored.
func (ob *Outbox) Ack(outboxID string, lastSeq uint64) ([]*syncv1.ObjectSpend, bool, error) {
	costs, err := ob.ack(outboxID, lastSeq)
	ob.mu.Lock()
	drained := ob.ackedSeq == ob.lastSeq && len(ob.queue) == 0
	ob.mu.Unlock()
	return costs, drained && err == nil, err
}

func (ob *Outbox) ack(outboxID string, lastSeq uint64) ([]*syncv1.ObjectSpend, error) {
	if outboxID != ob.id {
		return nil, nil
	}
	ob.mu.Lock()
	if lastSeq > ob.lastSeq {
		lastSeq = ob.lastSeq // never beyond what exists
	}
	from := ob.ackedSeq
	ob.mu.Unlock()
	if lastSeq <= from {
		return nil, nil
	}
	type ref struct{ kind, id string }
	var costs map[ref]int64
	err := ob.db.Update(func(tx *bolt.Tx) error {
		costs = map[ref]int64{}
		var r syncv1.SpendRecord
		c := tx.Bucket(bucketRecords).Cursor()
		for k, v := c.First(); k != nil && binary.BigEndian.Uint64(k) <= lastSeq; k, v = c.Next() {
			r.Reset()
			if err := proto.Unmarshal(v, &r); err == nil && r.Cost > 0 {
				user := r.UserId
				if r.TeamId != "" {
					user = "" // a team key spends the team's budget, not its user's (as the gate counts it)
				}
				for _, o := range [...]ref{{"key", r.TokenId}, {"team", r.TeamId}, {"user", user}, {"organization", r.OrganizationId}, {"end_user", r.EndUser}} {
					if o.id != "" {
						costs[o] += r.Cost
					}
				}
				// A key's spend on the model, for model_max_budget (the
				// limiter ignores those it holds no budget for).
				if r.TokenId != "" && r.Model != "" {
					costs[ref{"key_model", r.TokenId + "/" + r.Model}] += r.Cost
				}
				// The user's spend in the team, for team-member budgets.
				if r.TeamId != "" && r.UserId != "" {
					costs[ref{"team_member", r.TeamId + "/" + r.UserId}] += r.Cost
				}
			}
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("spend outbox ack: %w", err)
	}
	ob.mu.Lock()
	if lastSeq > ob.ackedSeq {
		ob.ackedSeq = lastSeq
	}
	i := 0
	for i < len(ob.marks) && ob.marks[i].last <= ob.ackedSeq {
		i++
	}
	ob.marks = ob.marks[i:]
	if len(ob.marks) == 0 {
		ob.marks = nil
	}
	ob.broadcastLocked()
	ob.mu.Unlock()
	out := make([]*syncv1.ObjectSpend, 0, len(costs))
	for o, c := range costs {
		out = append(out, &syncv1.ObjectSpend{Kind: o.kind, Id: o.id, Spend: c})
	}
	return out, nil
}

// Stats describe the outbox.
type Stats struct {
	Queued    int    // appended, not yet committed
	Unacked   uint64 // committed, not yet acked
	LastSeq   uint64
	AckedSeq  uint64
	Committed uint64 // records committed since Open
	Groups    uint64 // commits since Open
	// MeanCommit and MaxCommit are the durations of a group commit (the
	// window in which queued records are not yet durable).
	MeanCommit, MaxCommit time.Duration
	// OldestUnacked is when the oldest record not yet acked was committed
	// (zero when everything is acked; records found in the file at Open
	// count from Open).
	OldestUnacked time.Time
}

// Stats returns the outbox's counters.
func (ob *Outbox) Stats() Stats {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	st := Stats{Queued: len(ob.queue), Unacked: ob.lastSeq - ob.ackedSeq, LastSeq: ob.lastSeq, AckedSeq: ob.ackedSeq,
		Committed: ob.committed, Groups: ob.groups, MaxCommit: ob.maxCommit}
	if ob.groups > 0 {
		st.MeanCommit = ob.commitDur / time.Duration(ob.groups)
	}
	if len(ob.marks) > 0 && st.Unacked > 0 {
		st.OldestUnacked = ob.marks[0].at
	}
	return st
}

// Flush waits until everything appended so far is committed.
func (ob *Outbox) Flush(ctx context.Context) error {
	ob.mu.Lock()
	target := ob.lastSeq + uint64(len(ob.queue))
	ob.mu.Unlock()
	return ob.waitFor(ctx, func() bool { return ob.lastSeq >= target })
}

// WaitShipped waits until every record appended so far is committed and
// acked by the control plane.
func (ob *Outbox) WaitShipped(ctx context.Context) error {
	ob.mu.Lock()
	target := ob.lastSeq + uint64(len(ob.queue))
	ob.mu.Unlock()
	return ob.waitFor(ctx, func() bool { return ob.ackedSeq >= target })
}

// waitFor waits until done (called under mu) holds.
func (ob *Outbox) waitFor(ctx context.Context, done func() bool) error {
	for {
		ob.mu.Lock()
		ok, ch := done(), ob.changed
		ob.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close commits what is queued, stops the writer and closes the file.
// Append fails afterwards.
func (ob *Outbox) Close() error {
	ob.mu.Lock()
	if ob.closed {
		ob.mu.Unlock()
		return nil
	}
	ob.closed = true
	ob.space.Broadcast()
	close(ob.closing)
	ob.mu.Unlock()
	select {
	case ob.work <- struct{}{}:
	default:
	}
	<-ob.writerDone
	ob.mu.Lock()
	lost := len(ob.queue)
	ob.mu.Unlock()
	if lost > 0 {
		ob.log.Error("spend outbox closed with uncommitted records", "records", lost)
	}
	return ob.db.Close()
}

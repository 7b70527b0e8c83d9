package postgres

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Background work of a Store: the sequencer candidate, the listener, the
// notifier and the head poller. doc.go describes how they fit together.

const (
	// sequencerLockKey is the session advisory lock that elects the one
	// sequencer among the replicas sharing a database.
	sequencerLockKey int64 = 0x746f6c6c73657121 // "tollseq!"

	// channelChanges: "change rows are waiting for a revision".
	channelChanges = "tollgate_changes"
	// channelRevision: "the head is now <payload>".
	channelRevision = "tollgate_revision"

	// sequenceBatch bounds how many transactions one sequencer transaction
	// numbers, so a backlog is drained in bounded steps.
	sequenceBatch = 5000

	// sequenceTimeout bounds one sequencing round.
	sequenceTimeout = 30 * time.Second
)

// assignSQL numbers the committed, unnumbered transactions visible to its
// snapshot: grouped by tx_id, ordered by their first change id, starting at
// head+1. The caller holds the revision_head row lock.
//
// Why first change id is a commit order: a transaction writes its change
// rows as the last statement before COMMIT, and ids come from a sequence, so
// if B saw A's writes then A had inserted its rows (and committed) before B
// read, hence before B inserted its own: A's ids are smaller. And a snapshot
// that sees B also sees every A that B saw, so A is never numbered in a
// later batch than B.
const assignSQL = `
WITH pending AS (
    SELECT tx_id, min(id) AS first_id
    FROM changes
    WHERE revision IS NULL
    GROUP BY tx_id
    ORDER BY first_id
    LIMIT $2
), numbered AS (
    SELECT tx_id, $1::bigint + row_number() OVER (ORDER BY first_id) AS revision
    FROM pending
), assigned AS (
    UPDATE changes AS c
    SET revision = n.revision
    FROM numbered AS n
    WHERE c.tx_id = n.tx_id AND c.revision IS NULL
    RETURNING c.revision
)
SELECT coalesce(max(revision), $1::bigint), count(DISTINCT revision) FROM assigned`

// runSequencer keeps a dedicated connection that competes for the sequencer
// lock and, while holding it, numbers committed transactions whenever woken
// (local commit, NOTIFY from another replica) or every poll interval.
func (s *Store) runSequencer(ctx context.Context) {
	defer s.wg.Done()
	reconnect(ctx, s, "sequencer", s.sequencerSession)
}

func (s *Store) sequencerSession(ctx context.Context) error {
	conn, err := s.connect(ctx, "tollgate-sequencer")
	if err != nil {
		return err
	}
	defer closeConn(conn)
	defer s.leader.Store(false)

	// Standby until the lock is ours. It is a session lock: it stays ours
	// until this connection ends, which is also what hands it to a standby
	// when this process dies.
	for {
		var ok bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", sequencerLockKey).Scan(&ok); err != nil {
			return err
		}
		if ok {
			break
		}
		if !sleep(ctx, s.opts.standbyInterval) {
			return ctx.Err()
		}
	}
	s.leader.Store(true)
	s.log.Info("sequencer: this replica assigns revisions")

	poll := time.NewTicker(s.opts.pollInterval)
	defer poll.Stop()
	for {
		// A round that hangs (a network path that died silently) ends the
		// session: closing the connection is what lets a standby take over.
		rctx, cancel := context.WithTimeout(ctx, sequenceTimeout)
		err := s.sequence(rctx, conn)
		cancel()
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.seqWake:
		case <-poll.C:
		}
	}
}

// sequence numbers everything pending, in batches.
func (s *Store) sequence(ctx context.Context, conn *pgx.Conn) error {
	for {
		var pending bool
		// Cheap check first (partial index): an idle poll writes nothing.
		err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM changes WHERE revision IS NULL)").Scan(&pending)
		if err != nil || !pending {
			return err
		}
		head, n, err := assign(ctx, conn)
		if err != nil {
			return err
		}
		if n > 0 {
			s.advanceHead(head)
		}
		if n < sequenceBatch {
			return nil
		}
	}
}

// assign runs one numbering transaction and returns the new head and how
// many revisions it assigned.
func assign(ctx context.Context, conn *pgx.Conn) (head int64, n int, err error) {
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// The row lock makes numbering safe even if two sequencers ever ran
		// at once (a lock holder whose connection the server has not yet
		// reaped): the second waits, then sees the first one's numbers.
		var prev int64
		if err := tx.QueryRow(ctx, "SELECT revision FROM revision_head FOR UPDATE").Scan(&prev); err != nil {
			return err
		}
		var last int64
		var count int
		if err := tx.QueryRow(ctx, assignSQL, prev, sequenceBatch).Scan(&last, &count); err != nil {
			return err
		}
		if count == 0 {
			head = prev
			return nil
		}
		if last != prev+int64(count) {
			return fmt.Errorf("sequencer: %d transactions after revision %d ended at %d; refusing a gap", count, prev, last)
		}
		if _, err := tx.Exec(ctx, "UPDATE revision_head SET revision = $1", last); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", channelRevision, strconv.FormatInt(last, 10)); err != nil {
			return err
		}
		head, n = last, count
		return nil
	})
	return head, n, err
}

// runListener keeps a dedicated LISTEN connection: "tollgate_changes" wakes
// the sequencer (if this replica holds the lock), "tollgate_revision"
// advances the head seen by subscribers.
func (s *Store) runListener(ctx context.Context) {
	defer s.wg.Done()
	reconnect(ctx, s, "listener", s.listen)
}

func (s *Store) listen(ctx context.Context) error {
	conn, err := s.connect(ctx, "tollgate-listener")
	if err != nil {
		return err
	}
	defer closeConn(conn)
	if _, err := conn.Exec(ctx, "LISTEN "+channelChanges+"; LISTEN "+channelRevision); err != nil {
		return err
	}
	// Notifications sent while nobody listened are lost: catch up once.
	poke(s.seqWake)
	if head, err := s.Head(ctx); err == nil {
		s.advanceHead(head)
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		switch n.Channel {
		case channelChanges:
			poke(s.seqWake)
		case channelRevision:
			if rev, err := strconv.ParseInt(n.Payload, 10, 64); err == nil {
				s.advanceHead(rev)
			}
		}
	}
}

// runNotifier tells the sequencing replica about commits made here. It runs
// after the writer's commit, outside its transaction, and coalesces bursts
// into one NOTIFY (doc.go, "Revisions", says why not inside the writer's
// transaction).
func (s *Store) runNotifier(ctx context.Context) {
	defer s.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.notifyWake:
		}
		if _, err := s.pool.Exec(ctx, "NOTIFY "+channelChanges); err != nil && ctx.Err() == nil {
			// The sequencer's poll picks the changes up anyway.
			s.log.Debug("notify failed", "err", err)
		}
	}
}

// runHeadPoller is the subscribers' fallback for lost notifications.
func (s *Store) runHeadPoller(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.pollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !s.hasSubscribers() {
			continue
		}
		if head, err := s.Head(ctx); err == nil {
			s.advanceHead(head)
		}
	}
}

// reconnect runs session until ctx ends, with backoff between failures.
func reconnect(ctx context.Context, s *Store, name string, session func(context.Context) error) {
	for failures := 0; ; failures++ {
		start := time.Now()
		err := session(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 30*time.Second {
			failures = 0
		}
		delay := min(100*time.Millisecond<<min(failures, 6), 5*time.Second)
		s.log.Warn(name+" connection lost; reconnecting", "err", err, "retry_in", delay)
		if !sleep(ctx, delay) {
			return
		}
	}
}

// connect opens a dedicated connection outside the pool.
//
// The server's TCP keepalive is tightened on it (unless the URL sets it):
// the sequencer lock is released only when the server notices the session
// is gone, and with operating-system defaults a replica that vanished
// without closing its socket would hold the lock for hours.
func (s *Store) connect(ctx context.Context, appName string) (*pgx.Conn, error) {
	cfg := s.connConfig.Copy()
	for k, v := range map[string]string{
		"application_name":        appName,
		"tcp_keepalives_idle":     "10",
		"tcp_keepalives_interval": "5",
		"tcp_keepalives_count":    "3",
	} {
		if _, set := cfg.RuntimeParams[k]; !set {
			cfg.RuntimeParams[k] = v
		}
	}
	return pgx.ConnectConfig(ctx, cfg)
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn.Close(ctx) //nolint:errcheck // closing; the server ends the session either way
}

// Package pgcoord is the Postgres-backed coord.Coordinator: membership and
// rate-limit lease pools as rows (migrations 0010 and 0013), shared by every
// control-plane replica on the database.
//
// # Architecture
//
// No leader. Each replica:
//   - registers itself in sync_replicas with the backend of its LISTEN
//     connection (a replica is alive while that backend is);
//   - upserts a sync_members row when a proxy's stream joins (taking the row
//     over if the proxy was connected elsewhere), refreshes the rows of its
//     proxies in one UPDATE every second, deletes a row when its stream
//     ends, and expires rows nobody refreshed for MemberTTL (the proxies of a
//     replica that died and did not come back);
//   - queues its proxies' lease requests and applies each queue in one short
//     transaction (group commit: while one runs, the next queue fills): the
//     pools' rows are created or locked (INSERT ... ON CONFLICT DO UPDATE),
//     their allocations read, coord.Pool run on them, the changed
//     allocations written back, and pg_notify tells the replicas whose
//     proxies had allowance reclaimed (delivered at commit);
//   - on a membership NOTIFY (or its own 1 s refresh) re-reads the members
//     and sends each of its proxies not told the current set yet the count,
//     its index (rank of the member name) and its allowance in every open
//     window (reads and deliveries one at a time, in order, so a proxy is
//     never left with an older set than the replica last read).
//
// Statements: per replica, one UPDATE per second for heartbeats plus one
// read of the member list, and about six statements per lease transaction.
// Lease transactions are spaced (flusher): at most one per 200 ms while the
// queue holds only reports, one per 20 ms while a proxy asks (or a proxy
// told a lowering by this replica reports: its confirmation frees units
// another proxy waits for), whatever the
// number of proxies or the request rate; a transaction carries every
// report and ask queued meanwhile. So statements per second are bounded per
// replica and never grow with the request rate.
//
// # Why not one elected coordinator
//
// A leader would run the in-memory algorithm and followers would relay their
// proxies' traffic to it; it must persist what it grants anyway (so that its
// successor does not grant it again), so the rows are needed in both
// designs. Without a leader there is no election, no fencing epoch, no relay
// and no change-over window: a replica that dies takes nothing with it but
// its streams.
//
// # Failure modes
//
//   - A replica is killed: its proxies keep the allowances they hold
//     (static stability), reconnect to another replica and take their rows
//     over with the allowances intact. While their replica is dead (its
//     listener backend gone) nobody reclaims from them, because they could
//     not hear it; a reclaim decided just before the death reaches the
//     proxy when it rejoins, and what it took stays held (transit, see
//     coord.Pool) until the proxy confirms it enforces the lowered
//     allowance, so it is never admitted twice.
//   - Postgres unreachable: lease requests fail and are dropped (logged);
//     proxies enforce with what they hold, as when the control plane is
//     down, and report again when their use changes.
//   - Clock: every timestamp is the database's now(), so replica clocks do
//     not matter.
//   - Liveness is read from pg_stat_activity, which shows another session's
//     pid and backend_start only to the same role (or pg_read_all_stats):
//     replicas connecting as different roles see each other as dead, and
//     then never reclaim from each other's proxies (safe; lending across
//     replicas stops).
//   - A proxy id shared by two processes is still two members (the
//     instance differs); a proxy older than the instance field is named by
//     its id alone, so two such processes with one id would share a member.
package pgcoord

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tollgate-gw/tollgate/controlplane/internal/coord"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

const (
	chanLeases  = "tollgate_leases"
	chanMembers = "tollgate_members"
	// lockKey: joins (exclusive) and lease transactions (shared) so that a
	// pool opened concurrently with a join still gets the joiner's row.
	lockKey int64 = 0x746f6c6c636f6f72 // "tollcoor"
	// maxPayload keeps NOTIFY payloads under Postgres's 8000 bytes.
	maxPayload = 7000
)

// Options tune a Coord; zero values take the defaults.
type Options struct {
	Logger *slog.Logger
	// Beat is how often members are refreshed (default 1 s).
	Beat time.Duration
	// MemberTTL is how long a member survives without a refresh (default
	// 15 s): longer than a proxy needs to reconnect to another replica, so a
	// failover changes no count.
	MemberTTL time.Duration
	// ReplicaID names this replica (default: random).
	ReplicaID string
}

// Coord implements coord.Coordinator on Postgres.
type Coord struct {
	pool    *pgxpool.Pool
	cfg     *pgx.ConnConfig
	deliver coord.Deliver
	log     *slog.Logger
	o       Options
	replica string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// syncing admits one sync at a time (a semaphore, so that a waiting
	// Join still honours its context): membership reads and their
	// deliveries happen in order, never an older read delivered after a
	// newer one.
	syncing chan struct{}

	mu    sync.Mutex
	local map[string]map[string]bool // member → sessions on this replica
	// view is the member list as last read (rank order), gen counts its
	// changes, and sent is session → the gen last sent to it (or found not
	// to concern it): a session whose gen is not the view's is told again
	// by the next refresh, whoever read the view.
	view    []string
	gen     int64
	sent    map[string]int64
	pending []pending
	asks    bool // pending holds an ask (or an awaited confirmation)
	// lowered: members of this replica told a lowered allowance whose
	// confirming report has not arrived yet.
	lowered map[string]bool
	wake    chan struct{}
	refresh chan struct{}
	pools   atomic.Int64
}

type pending struct {
	s coord.Session
	r *syncv1.LeaseRequest
}

// Open connects to databaseURL (migrated to 0013) and starts the
// replica's background work. Close stops it.
func Open(ctx context.Context, databaseURL string, d coord.Deliver, o Options) (*Coord, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Beat <= 0 {
		o.Beat = time.Second
	}
	if o.MemberTTL <= 0 {
		o.MemberTTL = 15 * time.Second
	}
	if o.ReplicaID == "" {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		o.ReplicaID = hex.EncodeToString(b)
	}
	pcfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, err
	}
	pcfg.MaxConns = 3
	pcfg.ConnConfig.RuntimeParams["application_name"] = "tollgate-coord"
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	bg, cancel := context.WithCancel(context.Background())
	c := &Coord{pool: pool, cfg: pcfg.ConnConfig.Copy(), deliver: d, log: o.Logger, o: o, replica: o.ReplicaID,
		ctx: bg, cancel: cancel, local: map[string]map[string]bool{}, lowered: map[string]bool{},
		syncing: make(chan struct{}, 1), sent: map[string]int64{},
		wake: make(chan struct{}, 1), refresh: make(chan struct{}, 1)}
	c.wg.Add(3)
	go c.listen()
	go c.flusher()
	go c.beat()
	return c, nil
}

// Replica is this replica's id.
func (c *Coord) Replica() string { return c.replica }

// Close implements coord.Coordinator: background work stops; members stay
// (their proxies fail over keeping their place, or expire).
func (c *Coord) Close() error {
	c.cancel()
	c.wg.Wait()
	c.pool.Close()
	return nil
}

// Pools implements coord.Coordinator (open windows as of the last refresh).
func (c *Coord) Pools() int { return int(c.pools.Load()) }

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// tx runs fn in a transaction, retrying deadlocks and serialization
// failures.
func (c *Coord) tx(ctx context.Context, fn func(pgx.Tx) error) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		err = pgx.BeginFunc(ctx, c.pool, fn)
		var pe *pgconn.PgError
		if err == nil || !errors.As(err, &pe) || (pe.Code != "40P01" && pe.Code != "40001") {
			return err
		}
	}
	return err
}

// nowSeq is coord.Pool's seq for a change made now (µs of the database's
// clock).
const nowSeq = `floor(extract(epoch FROM now()) * 1000000)::bigint`

// openWindows restricts lease_pools to windows still open: parallel pools,
// and rpm/tpm windows of this minute or the last.
const openWindows = `(p.window_unix = 0 OR p.window_unix >= floor(extract(epoch FROM now()) / 60)::bigint * 60 - 60)`

// Join implements coord.Coordinator.
func (c *Coord) Join(ctx context.Context, s coord.Session) error {
	var inserted bool
	err := c.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `INSERT INTO sync_members (member, replica_id, session, since, joined_at, heartbeat_at)
			VALUES ($1, $2, $3, now(), now(), now())
			ON CONFLICT (member) DO UPDATE SET replica_id = excluded.replica_id, session = excluded.session,
				joined_at = now(), heartbeat_at = now()
			RETURNING (xmax = 0)`, s.Member, c.replica, s.ID).Scan(&inserted); err != nil {
			return err
		}
		// A new member holds nothing in windows already open: it asks.
		// Its seq (the database's clock, as coord.Pool's) is above any a
		// proxy that departed and came back still holds.
		if _, err := tx.Exec(ctx, `INSERT INTO lease_allocs (scope, window_unix, member, alloc, used, seq)
			SELECT p.scope, p.window_unix, $1, 0, 0, `+nowSeq+` FROM lease_pools p WHERE `+openWindows+`
			ON CONFLICT DO NOTHING`, s.Member); err != nil {
			return err
		}
		if inserted {
			_, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, chanMembers)
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.local[s.Member] == nil {
		c.local[s.Member] = map[string]bool{}
	}
	c.local[s.Member][s.ID] = true
	c.mu.Unlock()
	poke(c.refresh) // this replica's other streams, when the count changed
	return c.sync(ctx, s.ID)
}

// Leave implements coord.Coordinator.
func (c *Coord) Leave(_ context.Context, s coord.Session) {
	c.mu.Lock()
	ss := c.local[s.Member]
	if !ss[s.ID] {
		c.mu.Unlock()
		return
	}
	delete(ss, s.ID)
	delete(c.sent, s.ID)
	if len(ss) > 0 {
		c.mu.Unlock()
		return
	}
	delete(c.local, s.Member)
	delete(c.lowered, s.Member)
	c.mu.Unlock()
	// The stream's context is over: leave on our own.
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	if err := c.depart(ctx, s.Member, s.ID); err != nil && ctx.Err() == nil {
		c.log.Warn("coord: leaving failed; the member expires instead", "err", err)
	}
	poke(c.refresh)
}

// depart deletes member's row (when session still owns it, or session is
// "" and the row expired) and applies coord.Pool.Depart to its pools.
func (c *Coord) depart(ctx context.Context, member, session string) error {
	return c.tx(ctx, func(tx pgx.Tx) error {
		var tag pgconn.CommandTag
		var err error
		if session != "" {
			tag, err = tx.Exec(ctx, `DELETE FROM sync_members WHERE member = $1 AND session = $2`, member, session)
		} else {
			tag, err = tx.Exec(ctx, `DELETE FROM sync_members WHERE member = $1 AND heartbeat_at < now() - make_interval(secs => $2)`,
				member, c.o.MemberTTL.Seconds())
		}
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		// Lock its pools (in the lease transactions' order) before
		// rewriting its allocations.
		if _, err := tx.Exec(ctx, `SELECT 1 FROM lease_pools p WHERE (p.scope, p.window_unix) IN
			(SELECT scope, window_unix FROM lease_allocs WHERE member = $1)
			ORDER BY p.scope, p.window_unix FOR UPDATE`, member); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM lease_allocs WHERE member = $1 AND window_unix = 0`, member); err != nil {
			return err
		}
		// coord.Pool.Depart: what it used stays allocated, its transit stays
		// held.
		if _, err := tx.Exec(ctx, `UPDATE lease_allocs SET alloc = used, seq = greatest(seq + 1, `+nowSeq+`)
			WHERE member = $1 AND window_unix <> 0 AND alloc <> used`, member); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `SELECT pg_notify($1, '')`, chanMembers)
		return err
	})
}

// sync reads the members and tells sessions of this replica their place and
// allowances: session when it is not "" (a stream that just joined), else
// every session not told the current view yet (its gen in sent is older:
// the set changed since, or another sync read the change first). The
// latter runs in the beat loop only, woken by membership NOTIFYs, so a
// burst of joins (a replica's proxies failing over, a deployment starting)
// costs one delivery round per burst rather than one per join.
//
// Syncs run one at a time, reading and delivering in order: a join's own
// read could otherwise be delivered after a newer one from the beat loop,
// leaving its proxy with an older, smaller count (a larger implicit share)
// that no later refresh would correct.
func (c *Coord) sync(ctx context.Context, session string) error {
	select {
	case c.syncing <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-c.syncing }()
	members, err := readMembers(ctx, c.pool)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if !slices.Equal(members, c.view) {
		c.view = members
		c.gen++
	}
	gen := c.gen
	type target struct{ member, session string }
	var targets []target
	for m, ss := range c.local {
		for sid := range ss {
			if sid == session || (session == "" && c.sent[sid] != gen) {
				targets = append(targets, target{m, sid})
			}
		}
	}
	c.mu.Unlock()
	if len(targets) == 0 {
		return nil
	}
	names := make([]string, 0, len(targets))
	for _, t := range targets {
		names = append(names, t.member)
	}
	rows, err := c.pool.Query(ctx, `SELECT a.member, a.scope, a.window_unix, a.alloc, a.seq
		FROM lease_allocs a JOIN lease_pools p USING (scope, window_unix)
		WHERE a.member = ANY($1) AND `+openWindows, names)
	if err != nil {
		return err
	}
	allow := map[string][]*syncv1.LeaseAllowance{}
	var m, scope string
	var w, a, seq int64
	_, err = pgx.ForEachRow(rows, []any{&m, &scope, &w, &a, &seq}, func() error {
		allow[m] = append(allow[m], &syncv1.LeaseAllowance{Scope: scope, WindowUnix: w, Allowance: a, Seq: seq})
		return nil
	})
	if err != nil {
		return err
	}
	for _, t := range targets {
		// Not a member (expired, or taken over elsewhere): nothing to say
		// until it is again (a new view, or its Join).
		if i := slices.Index(members, t.member); i >= 0 {
			c.deliver(t.session, &syncv1.LeaseGrant{Proxies: int32(len(members)), Index: int32(i), Allowances: allow[t.member]})
		}
	}
	c.mu.Lock()
	for _, t := range targets {
		if c.local[t.member][t.session] {
			c.sent[t.session] = gen
		}
	}
	c.mu.Unlock()
	return nil
}

type rankedMember struct {
	name  string
	since time.Time
}

// rank orders members as their indexes: join order, ties by name (the
// same order on every replica).
func rank(ms []rankedMember) []string {
	slices.SortFunc(ms, func(a, b rankedMember) int {
		if c := a.since.Compare(b.since); c != 0 {
			return c
		}
		return cmp.Compare(a.name, b.name)
	})
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.name
	}
	return out
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func readMembers(ctx context.Context, q querier) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT member, since FROM sync_members`)
	if err != nil {
		return nil, err
	}
	var ms []rankedMember
	var m rankedMember
	if _, err := pgx.ForEachRow(rows, []any{&m.name, &m.since}, func() error { ms = append(ms, m); return nil }); err != nil {
		return nil, err
	}
	return rank(ms), nil
}

// Request implements coord.Coordinator: queued for the next lease
// transaction.
func (c *Coord) Request(_ context.Context, s coord.Session, r *syncv1.LeaseRequest) {
	if len(r.GetUses()) == 0 {
		return
	}
	ask := false
	confirms := false
	for _, u := range r.GetUses() {
		ask = ask || u.GetWant() > 0
		confirms = confirms || coord.Confirming(u)
	}
	c.mu.Lock()
	// A report that may confirm a lowering this replica delivered frees
	// units another proxy waits for: it goes without the report gap.
	if confirms && c.lowered[s.Member] {
		delete(c.lowered, s.Member)
		ask = true
	}
	c.pending = append(c.pending, pending{s, r})
	c.asks = c.asks || ask
	c.mu.Unlock()
	poke(c.wake)
}

// Lease transactions per replica are spaced: at least askGap apart when a
// proxy asks for more (it is refusing meanwhile), reportGap when the queue
// holds only reports. So a replica runs at most 1/askGap lease transactions
// a second however many requests its proxies admit: coordination costs
// Postgres a bounded rate, never one statement per request.
const (
	askGap    = 20 * time.Millisecond
	reportGap = 200 * time.Millisecond
)

func (c *Coord) flusher() {
	defer c.wg.Done()
	var last time.Time
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.wake:
		}
		for {
			c.mu.Lock()
			asks := c.asks
			c.mu.Unlock()
			gap := reportGap
			if asks {
				gap = askGap
			}
			wait := time.Until(last.Add(gap))
			if wait <= 0 {
				break
			}
			t := time.NewTimer(wait)
			select {
			case <-c.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			case <-c.wake: // an ask may shorten the wait
				t.Stop()
			}
		}
		c.mu.Lock()
		batch := c.pending
		c.pending, c.asks = nil, false
		c.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		last = time.Now()
		ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
		if err := c.lease(ctx, batch); err != nil && c.ctx.Err() == nil {
			c.log.Warn("coord: lease requests dropped (the proxies report again)", "requests", len(batch), "err", err)
		}
		cancel()
	}
}

type member struct {
	joined time.Time
	alive  bool
}

type notice struct {
	Replica string     `json:"r"`
	Member  string     `json:"m"`
	Allow   []allowVal `json:"a"`
}

type allowVal struct {
	Scope  string `json:"s"`
	Window int64  `json:"w"`
	Alloc  int64  `json:"n"`
	Seq    int64  `json:"q"`
}

// lease applies a queue of requests in one transaction.
func (c *Coord) lease(ctx context.Context, batch []pending) error {
	// The pools touched, with the limit last reported.
	limits := map[coord.PoolKey]int64{}
	var wants bool
	for _, p := range batch {
		for _, u := range p.r.GetUses() {
			if len(u.GetScope()) > coord.MaxScope || (u.GetLimit() < 0 && !coord.Confirming(u)) {
				continue
			}
			// A negative limit (a confirmation only) locks the pool
			// without changing its limit, nor creating it.
			k := coord.PoolKey{Scope: u.GetScope(), Window: u.GetWindowUnix()}
			if l, ok := limits[k]; !ok || l < 0 {
				limits[k] = max(u.GetLimit(), -1)
			}
			wants = wants || u.GetWant() > 0
		}
	}
	if len(limits) == 0 {
		return nil
	}
	keys := make([]coord.PoolKey, 0, len(limits))
	for k := range limits {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b coord.PoolKey) int {
		if a.Scope != b.Scope {
			if a.Scope < b.Scope {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Window, b.Window)
	})
	scopes := make([]string, len(keys))
	windows := make([]int64, len(keys))
	lims := make([]int64, len(keys))
	for i, k := range keys {
		scopes[i], windows[i], lims[i] = k.Scope, k.Window, limits[k]
	}
	c.mu.Lock()
	joinedHere := map[string]bool{}
	for m := range c.local {
		joinedHere[m] = true
	}
	c.mu.Unlock()

	var mine map[string][]*syncv1.LeaseAllowance
	var localLowered []string
	err := c.tx(ctx, func(tx pgx.Tx) error {
		mine, localLowered = map[string][]*syncv1.LeaseAllowance{}, nil
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock_shared($1)`, lockKey); err != nil {
			return err
		}
		// Create or lock every pool, in key order.
		// (A confirmation of a pool that is gone is dropped: the insert
		// skips it, and a pool created meanwhile with no limit is deleted
		// below.)
		rows, err := tx.Query(ctx, `INSERT INTO lease_pools AS p (scope, window_unix, lim, created_at, touched_at)
			SELECT s, w, l, now(), now() FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(s, w, l)
			WHERE l >= 0 OR EXISTS (SELECT 1 FROM lease_pools x WHERE x.scope = t.s AND x.window_unix = t.w)
			ORDER BY s COLLATE "C", w
			ON CONFLICT (scope, window_unix) DO UPDATE
				SET lim = CASE WHEN excluded.lim < 0 THEN p.lim ELSE excluded.lim END, touched_at = excluded.touched_at
			RETURNING p.scope, p.window_unix, p.lim, p.created_at, (p.xmax = 0), now()`, scopes, windows, lims)
		if err != nil {
			return err
		}
		pools := map[coord.PoolKey]*coord.Pool{}
		var created, unlimited []coord.PoolKey
		var now time.Time
		var scope string
		var win, lim int64
		var createdAt time.Time
		var isNew bool
		if _, err := pgx.ForEachRow(rows, []any{&scope, &win, &lim, &createdAt, &isNew, &now}, func() error {
			k := coord.PoolKey{Scope: scope, Window: win}
			if lim < 0 {
				unlimited = append(unlimited, k)
				return nil
			}
			pools[k] = &coord.Pool{Limit: lim, Par: win == 0, Created: createdAt, Allocs: map[string]*coord.Alloc{}}
			if isNew {
				created = append(created, k)
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range unlimited {
			if _, err := tx.Exec(ctx, `DELETE FROM lease_pools WHERE scope = $1 AND window_unix = $2 AND lim < 0`, k.Scope, k.Window); err != nil {
				return err
			}
		}
		// Members: to open new pools with everyone's implicit share, and to
		// decide whom a reclaim may touch.
		var names []string
		info := map[string]member{}
		owner := map[string]string{}
		if len(created) > 0 || wants {
			rows, err := tx.Query(ctx, `SELECT m.member, m.replica_id, m.joined_at, m.since,
				EXISTS (SELECT 1 FROM sync_replicas r JOIN pg_stat_activity a ON a.pid = r.pid AND a.backend_start = r.backend_start
					WHERE r.replica_id = m.replica_id)
				FROM sync_members m`)
			if err != nil {
				return err
			}
			var name, rep string
			var joined, since time.Time
			var alive bool
			var ranked []rankedMember
			if _, err := pgx.ForEachRow(rows, []any{&name, &rep, &joined, &since, &alive}, func() error {
				ranked = append(ranked, rankedMember{name, since})
				info[name] = member{joined, alive}
				owner[name] = rep
				return nil
			}); err != nil {
				return err
			}
			names = rank(ranked)
		}
		for _, k := range created {
			pools[k].Open(names, now)
		}
		rows, err = tx.Query(ctx, `SELECT a.scope, a.window_unix, a.member, a.alloc, a.used, a.transit, a.seq, a.changed_at
			FROM lease_allocs a JOIN unnest($1::text[], $2::bigint[]) AS t(s, w) ON a.scope = t.s AND a.window_unix = t.w`,
			scopes, windows)
		if err != nil {
			return err
		}
		var m string
		var alloc, used, transit, seq int64
		var changed *time.Time
		if _, err := pgx.ForEachRow(rows, []any{&scope, &win, &m, &alloc, &used, &transit, &seq, &changed}, func() error {
			p := pools[coord.PoolKey{Scope: scope, Window: win}]
			if p == nil {
				return nil
			}
			a := &coord.Alloc{Alloc: alloc, Used: used, Transit: transit, Seq: seq}
			if changed != nil {
				a.Changed = *changed
			}
			p.Allocs[m] = a
			return nil
		}); err != nil {
			return err
		}
		lowered := map[string]map[coord.PoolKey]bool{}
		for _, pr := range batch {
			asker := pr.s.Member
			for _, u := range pr.r.GetUses() {
				k := coord.PoolKey{Scope: u.GetScope(), Window: u.GetWindowUnix()}
				p := pools[k]
				if p == nil || (u.GetLimit() < 0 && !coord.Confirming(u)) {
					continue
				}
				p.Use(asker, u, now)
				if u.GetWant() <= 0 || u.GetLimit() < 0 || !joinedHere[asker] {
					continue
				}
				for _, q := range p.Ask(asker, u.GetWant(), names, now, func(q string, a *coord.Alloc) bool {
					mi, ok := info[q]
					return ok && mi.alive && p.Settled(a, mi.joined, now)
				}) {
					if lowered[q] == nil {
						lowered[q] = map[coord.PoolKey]bool{}
					}
					lowered[q][k] = true
				}
				a := p.Allocs[asker]
				mine[asker] = append(mine[asker], &syncv1.LeaseAllowance{Scope: k.Scope, WindowUnix: k.Window, Allowance: a.Alloc, Seq: a.Seq})
			}
		}
		// Write back what changed.
		var ws, wm []string
		var ww, wa, wu, wt, wq []int64
		var wc []*time.Time
		for k, p := range pools {
			for mem, a := range p.Allocs {
				if !a.Dirty {
					continue
				}
				ws, ww, wm, wa, wu = append(ws, k.Scope), append(ww, k.Window), append(wm, mem), append(wa, a.Alloc), append(wu, a.Used)
				wt, wq = append(wt, a.Transit), append(wq, a.Seq)
				if a.Changed.IsZero() {
					wc = append(wc, nil)
				} else {
					t := a.Changed
					wc = append(wc, &t)
				}
			}
		}
		if len(ws) > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO lease_allocs (scope, window_unix, member, alloc, used, changed_at, transit, seq)
				SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::timestamptz[], $7::bigint[], $8::bigint[])
				ON CONFLICT (scope, window_unix, member) DO UPDATE SET alloc = excluded.alloc, used = excluded.used,
					changed_at = excluded.changed_at, transit = excluded.transit, seq = excluded.seq`, ws, ww, wm, wa, wu, wc, wt, wq); err != nil {
				return err
			}
		}
		// Lowered allowances of members of other replicas: told at commit.
		var payloads []string
		for q, ks := range lowered {
			var av []*syncv1.LeaseAllowance
			for k := range ks {
				a := pools[k].Allocs[q]
				av = append(av, &syncv1.LeaseAllowance{Scope: k.Scope, WindowUnix: k.Window, Allowance: a.Alloc, Seq: a.Seq})
			}
			rep := owner[q]
			if rep == c.replica {
				mine[q] = append(mine[q], av...)
				localLowered = append(localLowered, q)
				continue
			}
			n := notice{Replica: rep, Member: q}
			size := 0
			for _, a := range av {
				if size+len(a.GetScope())+40 > maxPayload && len(n.Allow) > 0 {
					payloads = append(payloads, mustJSON(n))
					n.Allow, size = nil, 0
				}
				n.Allow = append(n.Allow, allowVal{a.GetScope(), a.GetWindowUnix(), a.GetAllowance(), a.GetSeq()})
				size += len(a.GetScope()) + 40
			}
			payloads = append(payloads, mustJSON(n))
		}
		if len(payloads) > 0 {
			if _, err := tx.Exec(ctx, `SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p`, chanLeases, payloads); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.expectConfirm(localLowered...)
	for m, av := range mine {
		c.toMember(m, &syncv1.LeaseGrant{Allowances: av})
	}
	return nil
}

// expectConfirm notes members of this replica that were told a lowered
// allowance: their next report that carries their allowance is not held
// back by the report gap (Request).
func (c *Coord) expectConfirm(members ...string) {
	if len(members) == 0 {
		return
	}
	c.mu.Lock()
	for _, m := range members {
		if c.local[m] != nil {
			c.lowered[m] = true
		}
	}
	c.mu.Unlock()
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// toMember delivers g to every session of member on this replica.
func (c *Coord) toMember(member string, g *syncv1.LeaseGrant) {
	c.mu.Lock()
	var ss []string
	for s := range c.local[member] {
		ss = append(ss, s)
	}
	c.mu.Unlock()
	for _, s := range ss {
		c.deliver(s, g)
	}
}

// listen keeps the LISTEN connection (and this replica's registration)
// until Close.
func (c *Coord) listen() {
	defer c.wg.Done()
	for failures := 0; c.ctx.Err() == nil; failures++ {
		err := c.listenOnce()
		if c.ctx.Err() != nil {
			return
		}
		delay := min(100*time.Millisecond<<min(failures, 5), 3*time.Second)
		c.log.Warn("coord: listener connection lost; reconnecting", "err", err, "retry_in", delay)
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

func (c *Coord) listenOnce() error {
	cfg := c.cfg.Copy()
	cfg.RuntimeParams["application_name"] = "tollgate-coord-listener"
	conn, err := pgx.ConnectConfig(c.ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	}()
	if _, err := conn.Exec(c.ctx, "LISTEN "+chanLeases+"; LISTEN "+chanMembers); err != nil {
		return err
	}
	if _, err := conn.Exec(c.ctx, `INSERT INTO sync_replicas (replica_id, pid, backend_start)
		SELECT $1, pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()
		ON CONFLICT (replica_id) DO UPDATE SET pid = excluded.pid, backend_start = excluded.backend_start`, c.replica); err != nil {
		return err
	}
	poke(c.refresh) // notifications sent while nobody listened are lost
	for {
		n, err := conn.WaitForNotification(c.ctx)
		if err != nil {
			return err
		}
		switch n.Channel {
		case chanMembers:
			poke(c.refresh)
		case chanLeases:
			var no notice
			if json.Unmarshal([]byte(n.Payload), &no) != nil || no.Replica != c.replica {
				continue
			}
			g := &syncv1.LeaseGrant{}
			for _, a := range no.Allow {
				g.Allowances = append(g.Allowances, &syncv1.LeaseAllowance{Scope: a.Scope, WindowUnix: a.Window, Allowance: a.Alloc, Seq: a.Seq})
			}
			c.expectConfirm(no.Member)
			c.toMember(no.Member, g)
		}
	}
}

// beat refreshes this replica's members, expires the members of replicas
// that are gone, re-delivers membership when it changed and forgets ended
// windows.
func (c *Coord) beat() {
	defer c.wg.Done()
	t := time.NewTicker(c.o.Beat)
	defer t.Stop()
	var lastGC time.Time
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		case <-c.refresh:
		}
		ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
		if err := c.heartbeat(ctx); err != nil && c.ctx.Err() == nil {
			c.log.Warn("coord: heartbeat failed", "err", err)
		}
		if time.Since(lastGC) > 10*time.Second {
			lastGC = time.Now()
			if err := c.gc(ctx); err != nil && c.ctx.Err() == nil {
				c.log.Warn("coord: pool cleanup failed", "err", err)
			}
		}
		cancel()
	}
}

func (c *Coord) heartbeat(ctx context.Context) error {
	c.mu.Lock()
	var members, sessions []string
	for m, ss := range c.local {
		for s := range ss {
			members, sessions = append(members, m), append(sessions, s)
		}
	}
	c.mu.Unlock()
	if len(members) > 0 {
		rows, err := c.pool.Query(ctx, `UPDATE sync_members m SET heartbeat_at = now()
			FROM unnest($1::text[], $2::text[]) AS t(member, session)
			WHERE m.member = t.member AND m.session = t.session AND m.replica_id = $3
			RETURNING m.member`, members, sessions, c.replica)
		if err != nil {
			return err
		}
		alive, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if len(alive) < len(members) {
			// Expired while this replica could not refresh them (and not
			// taken over elsewhere): join again.
			rows, err := c.pool.Query(ctx, `SELECT member FROM sync_members WHERE member = ANY($1)`, members)
			if err != nil {
				return err
			}
			present, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			for i, m := range members {
				if !slices.Contains(present, m) {
					if err := c.Join(ctx, coord.Session{Member: m, ID: sessions[i]}); err != nil {
						return err
					}
				}
			}
		}
	}
	rows, err := c.pool.Query(ctx, `SELECT member FROM sync_members WHERE heartbeat_at < now() - make_interval(secs => $1)`,
		c.o.MemberTTL.Seconds())
	if err != nil {
		return err
	}
	expired, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, m := range expired {
		if err := c.depart(ctx, m, ""); err != nil {
			return err
		}
	}
	return c.sync(ctx, "")
}

func (c *Coord) gc(ctx context.Context) error {
	if _, err := c.pool.Exec(ctx, `DELETE FROM lease_pools p WHERE NOT `+openWindows+`
		OR (p.window_unix = 0 AND p.touched_at < now() - interval '5 minutes')`); err != nil {
		return err
	}
	if _, err := c.pool.Exec(ctx, `DELETE FROM sync_replicas r WHERE r.replica_id <> $1
		AND NOT EXISTS (SELECT 1 FROM sync_members m WHERE m.replica_id = r.replica_id)
		AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.pid AND a.backend_start = r.backend_start)`, c.replica); err != nil {
		return err
	}
	var n int64
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM lease_pools p WHERE `+openWindows).Scan(&n); err != nil {
		return err
	}
	c.pools.Store(n)
	return nil
}

// Allocations implements coord.Inspector.
func (c *Coord) Allocations(ctx context.Context, scope string, window int64) (map[string]int64, error) {
	return c.perMember(ctx, "alloc", scope, window)
}

// Held implements coord.Inspector.
func (c *Coord) Held(ctx context.Context, scope string, window int64) (map[string]int64, error) {
	return c.perMember(ctx, "alloc + transit", scope, window)
}

// perMember reads expr (a fixed column expression) per member of one pool.
func (c *Coord) perMember(ctx context.Context, expr, scope string, window int64) (map[string]int64, error) {
	rows, err := c.pool.Query(ctx, `SELECT member, `+expr+` FROM lease_allocs WHERE scope = $1 AND window_unix = $2`, scope, window)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	var m string
	var a int64
	_, err = pgx.ForEachRow(rows, []any{&m, &a}, func() error { out[m] = a; return nil })
	return out, err
}

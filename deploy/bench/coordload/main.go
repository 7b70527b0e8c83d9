// Command coordload connects many simulated proxies (lightweight sync
// clients in one process, each reporting lease use and asking for more as a
// real proxy does: every report carries the allowance held and its seq,
// older allowances are ignored, and a lowering is confirmed at once) to control-plane replicas on one Postgres, and measures
// what deployment-wide coordination costs and how exact it is:
//   - time for a membership change to reach every proxy (p50/p99),
//   - time from an ask to its grant (p50/p99),
//   - rpm accuracy with one limit spread over all the proxies,
//   - Postgres transactions/s (and statements/s when pg_stat_statements is
//     installed) at two request rates: coordination must not grow with the
//     request rate.
//
// deploy/bench/coord.sh starts the replicas, runs it and samples each
// replica's CPU and memory.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"log"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/shares"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

const scope = "key:coordload:rpm"

type proxy struct {
	id     string
	stream grpc.BidiStreamingClient[syncv1.ProxyMessage, syncv1.ControlMessage]
	sendMu sync.Mutex

	mu        sync.Mutex
	n, index  int64
	window    int64
	allowance int64 // -1: implicit
	seq       int64 // LeaseAllowance.seq of allowance
	confirm   bool  // a lowering to confirm at once (as the proxy does)
	used      int64
	reported  int64
	asked     bool
	askedAt   time.Time
	// wantSince: the first ask not yet met by a raise of the allowance
	// (zero: none); wantFrom: the allowance then.
	wantSince time.Time
	wantFrom  int64
	countAt   map[int64]time.Time // when this proxy first heard a count
	notify    bool                // an ask to send now (the proxy's Notify)
}

type run struct {
	limit    int64
	admitted sync.Map        // window → *atomic.Int64
	grantLat []time.Duration // ask → answer (maybe nothing more)
	raiseLat []time.Duration // first ask → allowance raised
	latMu    sync.Mutex
}

func (r *run) count(w int64) *atomic.Int64 {
	v, _ := r.admitted.LoadOrStore(w, new(atomic.Int64))
	return v.(*atomic.Int64)
}

func (p *proxy) send(m *syncv1.ProxyMessage) {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	_ = p.stream.Send(m)
}

func (p *proxy) recv(r *run) {
	for {
		m, err := p.stream.Recv()
		if err != nil {
			return
		}
		g := m.GetLeaseGrant()
		if g == nil {
			continue
		}
		now := time.Now()
		p.mu.Lock()
		if g.GetProxies() > 0 {
			p.n, p.index = int64(g.GetProxies()), int64(g.GetIndex())
			if _, ok := p.countAt[p.n]; !ok {
				p.countAt[p.n] = now
			}
		}
		tell := false
		for _, a := range g.GetAllowances() {
			if a.GetScope() != scope || a.GetWindowUnix() < p.window {
				continue
			}
			if a.GetWindowUnix() > p.window {
				p.window, p.used, p.reported, p.allowance, p.seq = a.GetWindowUnix(), 0, -1, -1, 0
				p.wantSince = time.Time{}
			}
			if a.GetSeq() < p.seq {
				continue // older than the allowance held (reordered): ignored
			}
			// As the proxy (dataplane/internal/limits): an allowance that
			// does not raise the one held is reported at once, so the
			// control plane frees what it reclaimed.
			if a.GetSeq() != p.seq && a.GetAllowance() <= p.view(r) {
				p.confirm, tell = true, true
			}
			p.allowance, p.seq = a.GetAllowance(), a.GetSeq()
			if !p.wantSince.IsZero() && p.allowance > p.wantFrom {
				r.latMu.Lock()
				r.raiseLat = append(r.raiseLat, now.Sub(p.wantSince))
				r.latMu.Unlock()
				p.wantSince = time.Time{}
			}
			if p.asked {
				r.latMu.Lock()
				r.grantLat = append(r.grantLat, now.Sub(p.askedAt))
				r.latMu.Unlock()
				p.asked = false
			}
		}
		p.mu.Unlock()
		if tell {
			p.report(r)
		}
	}
}

// view is the allowance p enforces (locked).
func (p *proxy) view(r *run) int64 {
	if p.allowance >= 0 {
		return p.allowance
	}
	return shares.Of(r.limit, max(p.n, 1), p.index)
}

// admit is one request through this proxy, decided as the proxy's gate
// does: within the allowance (the implicit share until one is granted),
// asking for more at 80%.
func (p *proxy) admit(r *run) bool {
	now := time.Now()
	w := now.Unix() - now.Unix()%60
	p.mu.Lock()
	defer p.mu.Unlock()
	if w != p.window {
		p.window, p.used, p.allowance, p.seq, p.reported, p.asked, p.confirm = w, 0, -1, 0, -1, false, false
		p.wantSince = time.Time{}
	}
	allow := p.view(r)
	ok := p.used < allow
	if ok {
		p.used++
		r.count(w).Add(1)
	}
	if allow-p.used <= allow/5 && !p.asked && now.Sub(p.askedAt) >= 50*time.Millisecond {
		p.asked, p.askedAt = true, now
		p.notify = true
		if p.wantSince.IsZero() {
			p.wantSince, p.wantFrom = now, allow
		}
	}
	return ok
}

// report sends this proxy's use when it changed, and its ask.
func (p *proxy) report(r *run) {
	p.mu.Lock()
	if p.window == 0 || (p.used == p.reported && !p.asked && !p.confirm) {
		p.mu.Unlock()
		return
	}
	view := p.view(r)
	u := &syncv1.LeaseUse{Scope: scope, Limit: r.limit, WindowUnix: p.window, Used: p.used, Allowance: &view, AllowanceSeq: p.seq}
	p.confirm = false
	if p.asked {
		u.Want = max(1, r.limit/max(p.n, 1)/2)
	}
	p.reported = p.used
	p.mu.Unlock()
	p.send(&syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_LeaseRequest{LeaseRequest: &syncv1.LeaseRequest{Uses: []*syncv1.LeaseUse{u}}}})
}

func connect(ctx context.Context, conn *grpc.ClientConn, token, id string, r *run) (*proxy, error) {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	st, err := syncv1.NewSyncServiceClient(conn).Sync(ctx)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	p := &proxy{id: id, stream: st, allowance: -1, reported: -1, countAt: map[int64]time.Time{}}
	if err := st.Send(&syncv1.ProxyMessage{Msg: &syncv1.ProxyMessage_Hello{Hello: &syncv1.Hello{ProxyId: id, Instance: hex.EncodeToString(b), Version: "coordload"}}}); err != nil {
		return nil, err
	}
	go p.recv(r)
	return p, nil
}

func pct(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

type pgStats struct{ xacts, stmts, leaseTx, rows int64 }

func readPG(ctx context.Context, dsn string) (pgStats, bool) {
	if dsn == "" {
		return pgStats{}, false
	}
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		log.Printf("postgres stats: %v", err)
		return pgStats{}, false
	}
	defer c.Close(ctx)
	var s pgStats
	if err := c.QueryRow(ctx, `SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()`).Scan(&s.xacts); err != nil {
		return pgStats{}, false
	}
	// Coordination alone: each lease transaction upserts the pool's row
	// (one pool here), and row writes to the coordination tables.
	if err := c.QueryRow(ctx, `SELECT coalesce(sum(n_tup_ins + n_tup_upd) FILTER (WHERE relname = 'lease_pools'), 0)::bigint,
		coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint
		FROM pg_stat_user_tables WHERE relname IN ('lease_pools', 'lease_allocs', 'sync_members')`).Scan(&s.leaseTx, &s.rows); err != nil {
		return pgStats{}, false
	}
	// Statements need pg_stat_statements (optional).
	if err := c.QueryRow(ctx, `SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements`).Scan(&s.stmts); err != nil {
		s.stmts = -1
	}
	return s, true
}

func main() {
	cps := flag.String("cp", "127.0.0.1:18191,127.0.0.1:18193,127.0.0.1:18195", "control-plane gRPC addresses, comma-separated (proxies spread round robin)")
	token := flag.String("sync-token", "", "sync token")
	n := flag.Int("proxies", 1000, "simulated proxies")
	limit := flag.Int64("limit", 2000, "rpm_limit spread over all proxies")
	rate1 := flag.Float64("rate", 50, "requests/s in the first phase")
	rate2 := flag.Float64("rate2", 200, "requests/s in the second phase")
	phase := flag.Duration("phase", 20*time.Second, "duration of each phase")
	dsn := flag.String("db", "", "Postgres URL of the deployment's database (for transactions/s)")
	flag.Parse()
	if *token == "" {
		log.Fatal("-sync-token is required")
	}
	ctx := context.Background()
	r := &run{limit: *limit}
	addrs := strings.Split(*cps, ",")
	conns := make([]*grpc.ClientConn, len(addrs))
	for i, a := range addrs {
		c, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			log.Fatal(err)
		}
		conns[i] = c
	}
	start := time.Now()
	ps := make([]*proxy, *n)
	for i := range ps {
		p, err := connect(ctx, conns[i%len(conns)], *token, fmt.Sprintf("sim-%04d", i), r)
		if err != nil {
			log.Fatalf("proxy %d: %v", i, err)
		}
		ps[i] = p
	}
	// Everyone counts everyone.
	for deadline := time.Now().Add(2 * time.Minute); ; {
		done := 0
		for _, p := range ps {
			p.mu.Lock()
			if p.n == int64(*n) {
				done++
			}
			p.mu.Unlock()
		}
		if done == len(ps) {
			break
		}
		if time.Now().After(deadline) {
			log.Fatalf("after 2 min only %d of %d proxies count %d", done, len(ps), *n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("%d proxies connected to %d replicas and counting each other after %v\n", *n, len(addrs), time.Since(start).Round(time.Millisecond))

	// Membership change: one more proxy joins; how long until each one hears.
	joinAt := time.Now()
	extra, err := connect(ctx, conns[0], *token, "sim-extra", r)
	if err != nil {
		log.Fatal(err)
	}
	var heard []time.Duration
	for deadline := time.Now().Add(time.Minute); len(heard) < len(ps) && time.Now().Before(deadline); {
		heard = heard[:0]
		for _, p := range ps {
			p.mu.Lock()
			if t, ok := p.countAt[int64(*n+1)]; ok {
				heard = append(heard, t.Sub(joinAt))
			}
			p.mu.Unlock()
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("membership change reached %d of %d proxies: p50 %v, p99 %v, max %v\n", len(heard), len(ps),
		pct(heard, 0.5).Round(time.Microsecond), pct(heard, 0.99).Round(time.Microsecond), pct(heard, 1).Round(time.Microsecond))
	ps = append(ps, extra)

	// Reporters: every 200 ms, as a proxy does.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() {
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					p.report(r)
				}
			}
		})
	}
	for i, rate := range []float64{*rate1, *rate2} {
		before, okPG := readPG(ctx, *dsn)
		t0 := time.Now()
		var sent, ok int64
		gap := time.Duration(float64(time.Second) / rate)
		next := time.Now()
		for time.Since(t0) < *phase {
			p := ps[mrand.IntN(len(ps))]
			if p.admit(r) {
				ok++
			}
			p.mu.Lock()
			ask := p.notify
			p.notify = false
			p.mu.Unlock()
			if ask {
				go p.report(r)
			}
			sent++
			next = next.Add(gap)
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
		}
		el := time.Since(t0).Seconds()
		line := fmt.Sprintf("phase %d: %.0f requests/s offered, %d sent, %d admitted", i+1, float64(sent)/el, sent, ok)
		if after, ok2 := readPG(ctx, *dsn); okPG && ok2 {
			line += fmt.Sprintf("; Postgres: %.1f lease transactions/s, %.1f coordination row writes/s, %.1f transactions/s in the database (the store's own included)",
				float64(after.leaseTx-before.leaseTx)/el, float64(after.rows-before.rows)/el, float64(after.xacts-before.xacts)/el)
			if after.stmts >= 0 && before.stmts >= 0 {
				line += fmt.Sprintf(", %.1f statements/s (all databases)", float64(after.stmts-before.stmts)/el)
			}
		}
		fmt.Println(line)
	}
	close(stop)
	wg.Wait()
	r.latMu.Lock()
	fmt.Printf("asks answered: %d; ask → grant p50 %v, p99 %v\n", len(r.grantLat),
		pct(r.grantLat, 0.5).Round(time.Microsecond), pct(r.grantLat, 0.99).Round(time.Microsecond))
	fmt.Printf("allowances raised: %d; first ask → allowance raised p50 %v, p99 %v (an answer may be 'nothing more yet' while a reclaim awaits its holder's confirmation)\n",
		len(r.raiseLat), pct(r.raiseLat, 0.5).Round(time.Microsecond), pct(r.raiseLat, 0.99).Round(time.Microsecond))
	r.latMu.Unlock()
	worst := 0.0
	r.admitted.Range(func(k, v any) bool {
		a := v.(*atomic.Int64).Load()
		fmt.Printf("window %d: %d admitted, rpm_limit %d (%.3f×)\n", k.(int64), a, *limit, float64(a)/float64(*limit))
		worst = max(worst, float64(a)/float64(*limit))
		return true
	})
	if worst > 1 {
		fmt.Println("OVER THE LIMIT")
		os.Exit(1)
	}
}

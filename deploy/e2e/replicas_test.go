package e2e

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Several control-plane replicas on one Postgres, proxies spread over them
// (two per replica): rate limits and budget shares hold for the deployment
// as a whole (controlplane/internal/coord/pgcoord), and killing a replica
// mid-minute keeps rpm within the limit.

// replicated is a deployment of n control planes on one database.
type replicated struct {
	*deployment
	cps []*ControlPlane
}

func newReplicated(t *testing.T, n int) *replicated {
	t.Helper()
	d := newDeployment(t, CPOptions{DatabaseURL: PostgresURL(t)})
	r := &replicated{deployment: d, cps: []*ControlPlane{d.cp}}
	for range n - 1 {
		o := d.cp.Options()
		o.HTTPAddr, o.GRPCAddr = "", ""
		r.cps = append(r.cps, StartControlPlane(t, o))
	}
	return r
}

// proxies starts per proxies on each replica (connected directly) and
// waits until every one counts them all.
func (r *replicated) proxies(t *testing.T, per int) []*DataPlane {
	t.Helper()
	var dps []*DataPlane
	for range per {
		for _, cp := range r.cps {
			dps = append(dps, StartDataPlane(t, DPOptions{ControlPlane: cp.GRPCAddr, SyncToken: cp.SyncToken, Env: r.env}))
		}
	}
	waitMembers(t, dps, len(dps))
	return dps
}

// waitMembers waits until every proxy was told that n proxies share the
// limits: membership is deployment-wide.
func waitMembers(t *testing.T, dps []*DataPlane, n int) {
	t.Helper()
	for _, dp := range dps {
		deadline := time.Now().Add(15 * time.Second)
		for {
			g := proxyGauge(t, dp, "tollgate_limits_lease_proxies")
			if g == float64(n) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("proxy %s counts %v proxies, want %d (every replica's)", dp.ID, g, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func eachReplicaCount(t *testing.T, fn func(t *testing.T, n int)) {
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d replicas", n), func(t *testing.T) { fn(t, n) })
	}
}

// spread sends total requests from clients concurrent clients, round robin
// over dps, and returns how many were admitted.
func spread(t *testing.T, dps []*DataPlane, key, body string, clients, total int) int64 {
	t.Helper()
	var sent, admitted atomic.Int64
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := 0; sent.Add(1) <= int64(total); i++ {
				r := Do(t, "POST", dps[(c+i)%len(dps)].URL()+"/v1/chat/completions", key, body)
				switch r.Status {
				case 200:
					admitted.Add(1)
				case 429:
				default:
					t.Errorf("status %d: %s", r.Status, r.Body)
					return
				}
			}
		})
	}
	wg.Wait()
	return admitted.Load()
}

func TestReplicasRateLimits(t *testing.T) {
	eachReplicaCount(t, func(t *testing.T, n int) {
		r := newReplicated(t, n)
		dps := r.proxies(t, 2)

		t.Run("rpm spread over every replica", func(t *testing.T) {
			key := limitKey(t, r.deployment, map[string]any{"rpm_limit": 20}, dps...)
			inWindow(20)
			got := spread(t, dps, key, chat("gpt-4o-mini", ""), 8, 40*n)
			t.Logf("rpm_limit 20, %d requests over %d proxies on %d replicas: %d admitted", 40*n, len(dps), n, got)
			if got > 20 || got < 19 {
				t.Fatalf("admitted %d, want 19-20 (the limit holds for the deployment)", got)
			}
		})

		t.Run("rpm lent across replicas", func(t *testing.T) {
			// All the load on one proxy of the first replica: the idle
			// proxies' shares, on every replica, are lent to it.
			key := limitKey(t, r.deployment, map[string]any{"rpm_limit": 20}, dps...)
			inWindow(20)
			// A refused request does not wait for the grant its ask
			// brings: lending takes a few asks (each for half a share), so
			// the requests are spread over 3 s.
			got := 0
			for range 150 {
				if Do(t, "POST", dps[0].URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", "")).Status == 200 {
					got++
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("rpm_limit 20, 150 requests through one of %d proxies: %d admitted", len(dps), got)
			if got > 20 || got < 19 {
				t.Fatalf("admitted %d, want 19-20 (idle shares on other replicas lent)", got)
			}
		})

		t.Run("max_parallel_requests", func(t *testing.T) {
			key := limitKey(t, r.deployment, map[string]any{"max_parallel_requests": 2}, dps...)
			slow := chat("gpt-4o-mini", `,"metadata":{"upstream_delay_ms":1500}`)
			got := spread(t, dps, key, slow, 4*n, 4*n)
			t.Logf("max_parallel_requests 2, %d concurrent slow requests over %d proxies: %d admitted", 4*n, len(dps), got)
			if got > 2 || got < 1 {
				t.Fatalf("admitted %d concurrently, want at most 2", got)
			}
		})

		t.Run("budget hammered", func(t *testing.T) {
			const budget = 10 * costPerCall
			h := hammerBudget(t, r.deployment, dps, 16, budget, 0, honourRetryAfter)
			spend := h.spend
			t.Logf("max_budget %d nano-USD (%d calls), 16 clients over %d proxies on %d replicas: %d admitted, spend %d (over %d), refusals: %d budget_exceeded, %d held",
				budget, budget/costPerCall, len(dps), n, h.admitted, spend, spend-budget, h.exceeded, h.held)
			checkBudgetBound(t, h, budget, 16, len(dps), 0)
			// The figure: between the budget minus one request and
			// the budget plus one request per proxy.
			if spend < budget-costPerCall || spend > budget+int64(len(dps))*costPerCall {
				t.Fatalf("spend %d, want %d..%d", spend, budget-costPerCall, budget+int64(len(dps))*costPerCall)
			}
		})
	})
}

// TestReplicaKilledMidMinute: proxies reach the replicas through a balancer;
// one replica is killed in the middle of a minute. Its proxies reconnect to
// a surviving replica keeping their place and allowances (the grants are
// rows), and the minute admits at most the limit.
func TestReplicaKilledMidMinute(t *testing.T) {
	eachReplicaCount(t, func(t *testing.T, n int) {
		r := newReplicated(t, n)
		var addrs []string
		for _, cp := range r.cps {
			addrs = append(addrs, cp.GRPCAddr)
		}
		lb := NewBalancer(t, addrs...)
		var dps []*DataPlane
		for range 2 * n {
			dps = append(dps, StartDataPlane(t, DPOptions{ControlPlane: lb.Addr, SyncToken: r.cp.SyncToken, Env: r.env}))
		}
		waitMembers(t, dps, len(dps))
		flows := lb.Flows()
		victim := r.cps[0]
		t.Logf("sync streams per replica: %v; killing %s", flows, victim.GRPCAddr)

		const limit = 30
		key := limitKey(t, r.deployment, map[string]any{"rpm_limit": limit}, dps...)
		inWindow(40)
		// Requests stop 1.5 s before the minute ends: a refused request
		// may wait up to --rate-limit-wait for room, and one still
		// waiting when the minute turns is admitted in the next window.
		end := time.Now().Truncate(time.Minute).Add(time.Minute - 1500*time.Millisecond)
		body := chat("gpt-4o-mini", "")
		// First the load goes through the victim's proxies only, so that
		// they are lent the idle shares of the proxies of the other
		// replicas: if a survivor forgot those grants, its proxies would
		// admit their shares a second time.
		var mine []*DataPlane
		for _, dp := range dps {
			if victimProxies(t, victim)[dp.ID] {
				mine = append(mine, dp)
			}
		}
		if len(mine) == 0 {
			t.Fatalf("no proxy on the victim %s (flows %v)", victim.GRPCAddr, flows)
		}
		before := paced(t, mine, key, body, 24, 40*time.Millisecond, end)
		killed := time.Now()
		victim.Kill()
		// Keep sending while the victim's proxies fail over, then until
		// well after.
		during := spread(t, dps, key, body, 4, limit)
		for _, dp := range dps {
			deadline := time.Now().Add(15 * time.Second)
			for proxyGauge(t, dp, "tollgate_sync_connected") != 1 {
				if time.Now().After(deadline) {
					t.Fatalf("proxy %s not reconnected", dp.ID)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		reconnected := time.Since(killed)
		// Counted once each: a failover changes no count.
		waitMembers(t, dps, len(dps))
		after := paced(t, dps, key, body, 150, 20*time.Millisecond, end)
		total := before + during + after
		t.Logf("rpm_limit %d, %d replicas, one killed mid-minute: %d admitted through its proxies before, %d during failover, %d after (total %d); proxies reconnected within %v",
			limit, n, before, during, after, total, reconnected.Round(time.Millisecond))
		if total > limit {
			t.Fatalf("admitted %d in the minute, limit %d", total, limit)
		}
		if total < limit-2 {
			t.Fatalf("admitted only %d of %d: shares stranded by the failover", total, limit)
		}
	})
}

// paced sends total requests one at a time, round robin over dps, gap apart,
// and returns how many were admitted; it stops at end.
func paced(t *testing.T, dps []*DataPlane, key, body string, total int, gap time.Duration, end time.Time) int64 {
	t.Helper()
	var n int64
	for i := 0; i < total && time.Now().Before(end); i++ {
		r := Do(t, "POST", dps[i%len(dps)].URL()+"/v1/chat/completions", key, body)
		switch r.Status {
		case 200:
			n++
		case 429:
		default:
			t.Fatalf("status %d: %s", r.Status, r.Body)
		}
		time.Sleep(gap)
	}
	return n
}

// victimProxies returns the ids of the proxies connected to cp.
func victimProxies(t *testing.T, cp *ControlPlane) map[string]bool {
	t.Helper()
	m := ok(t, Do(t, "GET", cp.URL()+"/proxies", cp.MasterKey, nil))
	out := map[string]bool{}
	ps, _ := m["proxies"].([]any)
	for _, p := range ps {
		p, _ := p.(map[string]any)
		if id, _ := p["proxy_id"].(string); id != "" && p["connected"] == true {
			out[id] = true
		}
	}
	return out
}

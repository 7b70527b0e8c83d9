package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// Several control-plane replicas on one Postgres, proxies reaching them
// through a TCP balancer (deploy/compose.yaml: HAProxy; Helm: a Service).

// replicas starts two control planes on one database, a balancer over
// their gRPC ports and one proxy syncing through it.
func replicas(t *testing.T) (*deployment, *ControlPlane, *Balancer, *DataPlane) {
	t.Helper()
	d := newDeployment(t, CPOptions{DatabaseURL: PostgresURL(t)})
	o2 := d.cp.Options()
	o2.HTTPAddr, o2.GRPCAddr = "", ""
	cp2 := StartControlPlane(t, o2)
	lb := NewBalancer(t, d.cp.GRPCAddr, cp2.GRPCAddr)
	dp := StartDataPlane(t, DPOptions{ControlPlane: lb.Addr, SyncToken: d.cp.SyncToken, Env: d.env})
	return d, cp2, lb, dp
}

// waitRefused polls the proxy until key is refused (401) and returns how
// long that took from since; it fails after within.
func waitRefused(t *testing.T, dp *DataPlane, key string, since time.Time, within time.Duration) time.Duration {
	t.Helper()
	for {
		r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", ""))
		if r.Status == 401 {
			return time.Since(since)
		}
		if r.Status != 200 {
			t.Fatalf("proxy: %d %s", r.Status, r.Body)
		}
		if time.Since(since) > within {
			t.Fatalf("proxy still admits the blocked key %s after the block", within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A proxy whose sync connection is black-holed (frozen, not closed) notices
// the silence within 3s, redials on a new connection, and refuses a key
// blocked meanwhile within 5s of the block.
func TestBlackholedSyncStreamRecoversWithinFiveSeconds(t *testing.T) {
	t.Parallel()
	d, cp2, lb, dp := replicas(t)
	key := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", d.cp.MasterKey, `{"models":["gpt-4o-mini"]}`))["key"].(string)
	waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)
	before := lb.Accepted()
	lb.Blackhole()
	blocked := time.Now()
	ok(t, Do(t, "POST", d.cp.URL()+"/key/block", d.cp.MasterKey, map[string]any{"key": key}))
	took := waitRefused(t, dp, key, blocked, 5*time.Second)
	t.Logf("blocked key refused %s after the block, through a new connection", took.Round(time.Millisecond))
	if lb.Accepted() == before {
		t.Fatal("the proxy got the block without a new connection")
	}
	// The replica that served the frozen stream drops it once the proxy's
	// pings stop (5s), without waiting for TCP: the proxy is listed as
	// connected once across the deployment, on its new stream.
	for {
		n := connectedAs(t, d.cp, dp.ID) + connectedAs(t, cp2, dp.ID)
		if n == 1 {
			break
		}
		if time.Since(blocked) > 8*time.Second {
			t.Fatalf("proxy listed as connected %d times 8s after its stream froze", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The proxy serves throughout (static stability).
	key2 := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", d.cp.MasterKey, `{"models":["gpt-4o-mini"]}`))["key"].(string)
	waitStatus(t, dp, key2, chat("gpt-4o-mini", ""), 200)
}

// connectedAs counts cp's connected proxies (GET /proxies) named id.
func connectedAs(t *testing.T, cp *ControlPlane, id string) int {
	t.Helper()
	r := Do(t, "GET", cp.URL()+"/proxies", cp.MasterKey, nil)
	if r.Status != 200 {
		t.Fatalf("GET /proxies: %d %s", r.Status, r.Body)
	}
	n := 0
	ps, _ := r.JSON(t)["proxies"].([]any)
	for _, p := range ps {
		m, _ := p.(map[string]any)
		if m["proxy_id"] == id && m["connected"] == true {
			n++
		}
	}
	return n
}

// failoverBound is the reconnection time the README states: from the kill
// of the replica a proxy syncs from to the proxy applying a change through
// the survivor.
const failoverBound = 3 * time.Second

// Killing the replica a proxy syncs from: it reconnects through the
// balancer to the survivor and receives deltas again within failoverBound.
func TestProxyFailsOverToSurvivingReplica(t *testing.T) {
	t.Parallel()
	d, cp2, lb, dp := replicas(t)
	key := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", d.cp.MasterKey, `{"models":["gpt-4o-mini"]}`))["key"].(string)
	waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)
	victim, survivor := syncingFrom(t, lb, d.cp, cp2)
	victim.Kill()
	killed := time.Now()
	ok(t, Do(t, "POST", survivor.URL()+"/key/block", survivor.MasterKey, map[string]any{"key": key}))
	took := waitRefused(t, dp, key, killed, failoverBound)
	t.Logf("proxy applied a change through the survivor %s after the kill", took.Round(time.Millisecond))
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		m := Do(t, "GET", dp.URL()+"/metrics", "", nil)
		r := Do(t, "GET", dp.URL()+"/health/readiness", "", nil)
		if metric(string(m.Body), "tollgate_sync_connected") == "1" && r.Status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy not connected and ready after failover: connected=%q readiness=%d",
				metric(string(m.Body), "tollgate_sync_connected"), r.Status)
		}
	}
}

// syncingFrom returns the replica the proxy syncs from (the only one with
// flows through the balancer) and the other one.
func syncingFrom(t *testing.T, lb *Balancer, a, b *ControlPlane) (from, other *ControlPlane) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		f := lb.Flows()
		switch {
		case f[a.GRPCAddr] > 0 && f[b.GRPCAddr] == 0:
			return a, b
		case f[b.GRPCAddr] > 0 && f[a.GRPCAddr] == 0:
			return b, a
		}
		if time.Now().After(deadline) {
			t.Fatalf("balancer flows %v: cannot tell which replica the proxy syncs from", f)
		}
	}
}

// frozenBound is what the README states for a replica that stops
// answering without closing anything (its new connections freeze too):
// 3s of silence, at worst one redial that lands on the frozen replica
// again (1.5s without a first message), then the survivor.
const frozenBound = 7 * time.Second

// A replica that freezes (open and new flows to it black-holed): its
// proxies move to the survivor and refuse a key blocked meanwhile within
// frozenBound.
func TestFrozenReplicaProxiesMoveToSurvivor(t *testing.T) {
	t.Parallel()
	d, cp2, lb, dp := replicas(t)
	key := ok(t, Do(t, "POST", d.cp.URL()+"/key/generate", d.cp.MasterKey, `{"models":["gpt-4o-mini"]}`))["key"].(string)
	waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)
	victim, survivor := syncingFrom(t, lb, d.cp, cp2)
	lb.BlackholeBackend(victim.GRPCAddr)
	blocked := time.Now()
	ok(t, Do(t, "POST", survivor.URL()+"/key/block", survivor.MasterKey, map[string]any{"key": key}))
	took := waitRefused(t, dp, key, blocked, frozenBound)
	t.Logf("blocked key refused %s after the replica froze", took.Round(time.Millisecond))
}

// uiSignIn signs in to cp's admin UI and returns the cookie header.
func uiSignIn(t *testing.T, cp *ControlPlane) string {
	t.Helper()
	r := Do(t, "POST", cp.URL()+"/ui/session", "", map[string]any{"credential": cp.MasterKey}, "X-Tollgate-CSRF", "sign-in")
	if r.Status != 200 {
		t.Fatalf("sign-in: %d %s", r.Status, r.Body)
	}
	for _, c := range (&http.Response{Header: r.Header}).Cookies() {
		if c.Name == "tollgate_ui_session" {
			return c.Name + "=" + c.Value
		}
	}
	t.Fatal("no session cookie")
	return ""
}

// uiWhoami returns GET /ui/session's status and CSRF token.
func uiWhoami(t *testing.T, cp *ControlPlane, cookie string) (int, string) {
	t.Helper()
	r := Do(t, "GET", cp.URL()+"/ui/session", "", nil, "Cookie", cookie)
	if r.Status != 200 {
		return r.Status, ""
	}
	csrf, _ := r.JSON(t)["csrf_token"].(string)
	return r.Status, csrf
}

func waitWhoami(t *testing.T, cp *ControlPlane, cookie string, want int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		st, _ := uiWhoami(t, cp, cookie)
		if st == want {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s: GET /ui/session %d, want %d within %s", cp.URL(), st, want, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A UI sign-out on one replica is refused on the other within a second,
// and after a restart of either.
func TestUISignOutAcrossReplicasAndRestarts(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, CPOptions{DatabaseURL: PostgresURL(t)})
	cp1 := d.cp
	o2 := cp1.Options()
	o2.HTTPAddr, o2.GRPCAddr = "", ""
	cp2 := StartControlPlane(t, o2)

	gone := uiSignIn(t, cp1)
	kept := uiSignIn(t, cp2)
	waitWhoami(t, cp2, gone, 200, 5*time.Second)
	waitWhoami(t, cp1, kept, 200, 5*time.Second)
	_, csrf := uiWhoami(t, cp1, gone)
	if csrf == "" {
		t.Fatal("no CSRF token")
	}
	r := Do(t, "POST", cp1.URL()+"/ui/session/logout", "", nil, "Cookie", gone, "X-Tollgate-CSRF", csrf)
	if r.Status != 200 {
		t.Fatalf("sign-out: %d %s", r.Status, r.Body)
	}
	if st, _ := uiWhoami(t, cp1, gone); st != 401 {
		t.Fatalf("signed-out session on its own replica: %d", st)
	}
	took := waitWhoami(t, cp2, gone, 401, time.Second)
	t.Logf("sign-out refused on the other replica after %s", took.Round(time.Millisecond))
	if r := Do(t, "GET", cp2.URL()+"/ui/api/key/list", "", nil, "Cookie", gone); r.Status != 401 {
		t.Fatalf("signed-out session still reaches the API through the other replica: %d", r.Status)
	}

	// Restart each replica: the sign-out survives, the other session too.
	for _, cp := range []*ControlPlane{cp2, cp1} {
		o := cp.Options()
		cp.Stop()
		re := StartControlPlane(t, o)
		waitWhoami(t, re, kept, 200, 10*time.Second)
		if st, _ := uiWhoami(t, re, gone); st != 401 {
			t.Fatalf("restarted replica accepts the signed-out session: %d", st)
		}
		if strings.Contains(re.Output(), strings.TrimPrefix(gone, "tollgate_ui_session=")) {
			t.Fatal("a session cookie in the control plane's log")
		}
	}
}

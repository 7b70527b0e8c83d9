package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/api"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
	"github.com/tollgate-gw/tollgate/controlplane/internal/syncserver"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
)

const master = "sk-master-report-test"

type fixture struct {
	gw      http.Handler
	userKey string
	now     time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st, err := embedded.Open(filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	srv := api.New(st, master, api.WithClock(func() time.Time { return now }))
	srv.SetProxyStats(func() syncserver.Stats {
		return syncserver.Stats{Head: 7, Proxies: []syncserver.ProxyStats{
			{ID: "p1", AppliedRevision: 7, OutboxDepth: 0, ConnectedAt: now, LastSeen: now, Connected: true},
			{ID: "p2", AppliedRevision: 4, OutboxDepth: -1, ConnectedAt: now, LastSeen: now, Connected: true},
		}, Disconnected: []syncserver.ProxyStats{
			{ID: "p0", AppliedRevision: 2, OutboxDepth: 3, ConnectedAt: now, LastSeen: now, DisconnectedAt: now},
		}}
	})
	gw, err := srv.Gateway(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{gw: gw, now: now}
	f.call(t, master, "POST", "/user/new", `{"user_id":"alice","user_role":"internal_user","auto_create_key":false}`, 200)
	f.call(t, master, "POST", "/user/new", `{"user_id":"bob","user_role":"internal_user","auto_create_key":false}`, 200)
	f.userKey = f.call(t, master, "POST", "/key/generate", `{"user_id":"alice"}`, 200)["key"].(string)
	bobKey := f.call(t, master, "POST", "/key/generate", `{"user_id":"bob"}`, 200)["token_id"].(string)
	aliceKey := f.call(t, master, "GET", "/key/info?key="+f.userKey, "", 200)["key"].(string)
	rec := func(seq uint64, tok, user, model string, usd float64, at time.Time) store.SpendRecord {
		cost, err := money.FromUSD(usd)
		if err != nil {
			t.Fatal(err)
		}
		return store.SpendRecord{Seq: seq, RequestID: "r" + string(rune('0'+seq)), TokenID: tok, UserID: user, Model: model,
			PromptTokens: 10, CompletionTokens: 5, Cost: cost, Status: 200, Route: "/chat/completions", StartTime: at, EndTime: at}
	}
	d1, d2 := now.Add(-48*time.Hour), now.Add(-time.Hour)
	err = st.ReadWriteTx(context.Background(), func(ctx context.Context, tx store.Tx) error {
		_, err := tx.ApplySpend(ctx, store.SpendBatch{ProxyID: "p1", OutboxID: "o1", Records: []store.SpendRecord{
			rec(1, aliceKey, "alice", "gpt-4o", 1, d1),
			rec(2, aliceKey, "alice", "gpt-4o", 0.5, d2),
			rec(3, bobKey, "bob", "gpt-4o-mini", 0.25, d2),
		}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) call(t *testing.T, cred, method, path, body string, want int) map[string]any {
	t.Helper()
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, path, nil)
	} else {
		r = httptest.NewRequest(method, path, strings.NewReader(body))
	}
	r.Header.Set("Authorization", "Bearer "+cred)
	w := httptest.NewRecorder()
	f.gw.ServeHTTP(w, r)
	if w.Code != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, w.Code, want, w.Body)
	}
	var out map[string]any
	_ = json.Unmarshal(w.Body.Bytes(), &out)
	return out
}

// daySpend returns group → spend on the day of the report.
func daySpend(t *testing.T, rep map[string]any, day string) map[string]float64 {
	t.Helper()
	for _, d := range rep["days"].([]any) {
		dm := d.(map[string]any)
		if dm["group_by_day"] == day {
			out := map[string]float64{}
			for _, g := range dm["groups"].([]any) {
				gm := g.(map[string]any)
				out[gm["group"].(string)] = gm["total_spend"].(float64)
			}
			return out
		}
	}
	t.Fatalf("no day %s in %v", day, rep)
	return nil
}

func TestSpendReportGroupsPerDay(t *testing.T) {
	f := newFixture(t)
	rep := f.call(t, master, "GET", "/global/spend/report?group_by=user", "", 200)
	if n := len(rep["days"].([]any)); n != 30 {
		t.Fatalf("default range has %d days, want 30", n)
	}
	if got := daySpend(t, rep, "2026-03-08"); got["alice"] != 1 || len(got) != 1 {
		t.Errorf("2026-03-08 by user: %v", got)
	}
	if got := daySpend(t, rep, "2026-03-10"); got["alice"] != 0.5 || got["bob"] != 0.25 {
		t.Errorf("2026-03-10 by user: %v", got)
	}
	rep = f.call(t, master, "GET", "/global/spend/report?group_by=model&start_date=2026-03-10&end_date=2026-03-11", "", 200)
	if got := daySpend(t, rep, "2026-03-10"); got["gpt-4o"] != 0.5 || got["gpt-4o-mini"] != 0.25 {
		t.Errorf("by model: %v", got)
	}
}

func TestSpendReportNarrowsToTheCaller(t *testing.T) {
	f := newFixture(t)
	rep := f.call(t, f.userKey, "GET", "/global/spend/report?group_by=user", "", 200)
	if got := daySpend(t, rep, "2026-03-10"); got["alice"] != 0.5 || len(got) != 1 {
		t.Errorf("alice sees %v, want only her own spend", got)
	}
	f.call(t, f.userKey, "GET", "/global/spend/report?user_id=bob", "", 403)
}

func TestSpendReport400(t *testing.T) {
	f := newFixture(t)
	for _, q := range []string{"group_by=nope", "start_date=yesterday", "start_date=2026-03-10&end_date=2026-03-01", "start_date=2024-01-01&end_date=2026-01-01"} {
		e := f.call(t, master, "GET", "/global/spend/report?"+q, "", 400)
		if e["error"] == nil {
			t.Errorf("%s: no error envelope: %v", q, e)
		}
	}
	f.call(t, "", "GET", "/global/spend/report", "", 401)
}

func TestListProxies(t *testing.T) {
	f := newFixture(t)
	out := f.call(t, master, "GET", "/proxies", "", 200)
	if out["head_revision"] != "7" && out["head_revision"] != float64(7) {
		t.Errorf("head_revision %v", out["head_revision"])
	}
	ps := out["proxies"].([]any)
	if len(ps) != 3 {
		t.Fatalf("proxies: %v", ps)
	}
	if p0 := ps[2].(map[string]any); p0["proxy_id"] != "p0" || p0["connected"] != false || p0["disconnected_at"] == nil {
		t.Errorf("disconnected p0 (listed last): %v", p0)
	}
	if p1 := ps[0].(map[string]any); p1["connected"] != true || p1["disconnected_at"] != nil {
		t.Errorf("p1: %v", p1)
	}
	p2 := ps[1].(map[string]any)
	if p2["proxy_id"] != "p2" || (p2["lag"] != "3" && p2["lag"] != float64(3)) || (p2["outbox_depth"] != "-1" && p2["outbox_depth"] != float64(-1)) {
		t.Errorf("p2: %v", p2)
	}
	f.call(t, f.userKey, "GET", "/proxies", "", 403)
}

func TestIdentify(t *testing.T) {
	st, err := embedded.Open(filepath.Join(t.TempDir(), "i.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv := api.New(st, master)
	id, err := srv.Identify(context.Background(), master)
	if err != nil || !id.Master || !id.Admin {
		t.Fatalf("master: %+v %v", id, err)
	}
	if _, err := srv.Identify(context.Background(), "sk-not-a-key"); err == nil {
		t.Fatal("unknown key identified")
	}
}

func TestListKeysFilters(t *testing.T) {
	f := newFixture(t)
	f.call(t, master, "POST", "/key/generate", `{"user_id":"bob","key_alias":"bob-soon","duration":"2d"}`, 200)
	blocked := f.call(t, master, "POST", "/key/generate", `{"user_id":"bob","key_alias":"bob-blocked","blocked":true}`, 200)["token_id"].(string)
	aliases := func(out map[string]any) []string {
		var a []string
		for _, k := range out["keys_full"].([]any) {
			a = append(a, k.(map[string]any)["key_alias"].(string))
		}
		return a
	}
	list := func(cred, q string) map[string]any {
		return f.call(t, cred, "GET", "/key/list?return_full_object=true&"+q, "", 200)
	}
	if got := aliases(list(master, "blocked=true")); len(got) != 1 || got[0] != "bob-blocked" {
		t.Errorf("blocked=true: %v", got)
	}
	if out := list(master, "blocked=false"); out["total_count"] != float64(3) {
		t.Errorf("blocked=false: %v", out["total_count"])
	}
	if got := aliases(list(master, "expires_before=2026-03-20")); len(got) != 1 || got[0] != "bob-soon" {
		t.Errorf("expires_before: %v", got)
	}
	if got := aliases(list(master, "search=BOB-")); len(got) != 2 {
		t.Errorf("search: %v", got)
	}
	if got := list(master, "search="+blocked[:8]); got["total_count"] != float64(1) {
		t.Errorf("search by token id: %v", got)
	}
	// Pages count the filtered keys.
	out := list(master, "search=bob&size=1&page=2")
	if out["total_count"] != float64(3) || out["total_pages"] != float64(3) || len(out["keys_full"].([]any)) != 1 {
		t.Errorf("paged search: %v", out)
	}
	// A user's filters apply to its own keys only.
	if out := list(f.userKey, "search=bob"); out["total_count"] != float64(0) {
		t.Errorf("alice searching bob: %v", out)
	}
	f.call(t, master, "GET", "/key/list?expires_before=soon", "", 400)
}

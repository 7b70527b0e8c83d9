package e2e

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// delivery is one request the webhook receiver got.
type delivery struct {
	ID, Type string
	Header   http.Header
	Body     []byte
	Data     map[string]any
	Status   int // what the receiver answered
	SigOK    bool
}

// hookReceiver is a webhook endpoint that checks signatures and can fail
// its next requests.
type hookReceiver struct {
	*httptest.Server
	secret string
	mu     sync.Mutex
	got    []delivery
	fail   int // answer 500 to this many more requests
}

func newHookReceiver(t *testing.T) *hookReceiver {
	h := &hookReceiver{secret: "whsec-" + RandomKey()}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var env struct {
			EventID   string         `json:"event_id"`
			Type      string         `json:"type"`
			CreatedAt string         `json:"created_at"`
			Data      map[string]any `json:"data"`
		}
		_ = json.Unmarshal(b, &env)
		m := hmac.New(sha256.New, []byte(h.secret))
		m.Write(b)
		want := "sha256=" + hex.EncodeToString(m.Sum(nil))
		d := delivery{ID: env.EventID, Type: env.Type, Header: r.Header.Clone(), Body: b, Data: env.Data,
			SigOK: hmac.Equal([]byte(want), []byte(r.Header.Get("X-Tollgate-Signature"))) &&
				r.Header.Get("X-Tollgate-Event-Id") == env.EventID && env.EventID != "" && env.CreatedAt != ""}
		h.mu.Lock()
		d.Status = 200
		if h.fail > 0 {
			h.fail--
			d.Status = 500
		}
		h.got = append(h.got, d)
		h.mu.Unlock()
		w.WriteHeader(d.Status)
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *hookReceiver) failNext(n int) { h.mu.Lock(); h.fail = n; h.mu.Unlock() }

func (h *hookReceiver) deliveries() []delivery {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]delivery(nil), h.got...)
}

// waitFor waits until a delivery answered 200 matches and returns it.
func (h *hookReceiver) waitFor(t *testing.T, timeout time.Duration, match func(d delivery) bool) delivery {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, d := range h.deliveries() {
			if d.Status == 200 && match(d) {
				return d
			}
		}
		if time.Now().After(deadline) {
			var types []string
			for _, d := range h.deliveries() {
				types = append(types, d.Type)
			}
			t.Fatalf("no matching event delivered within %s; got %v", timeout, types)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eventDeployment starts a deployment whose control plane delivers events
// to a fresh receiver.
func eventDeployment(t *testing.T, o CPOptions, settings map[string]any) (*deployment, *hookReceiver) {
	h := newHookReceiver(t)
	o.Env = append(o.Env, "WEBHOOK_URL="+h.URL, "TOLLGATE_WEBHOOK_SECRET="+h.secret)
	d := newDeployment(t, o)
	gs := map[string]any{"alerting": []string{"webhook"}}
	for k, v := range settings {
		gs[k] = v
	}
	ok(t, Do(t, "POST", d.cp.URL()+"/config/update", d.cp.MasterKey, map[string]any{"general_settings": gs}))
	return d, h
}

// TestLifecycleEventsWebhook: every lifecycle mutation reaches the webhook
// once it succeeds, signed, with a stable id; a failing webhook gets the
// same event again; no event carries a key.
func TestLifecycleEventsWebhook(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d, h := eventDeployment(t, o, nil)
		u, mk := d.cp.URL(), d.cp.MasterKey
		// The signing secret is never stored in the settings.
		envelope(t, Do(t, "POST", u+"/config/update", mk, `{"general_settings":{"webhook_secret":"whsec-literal"}}`), 400)
		h.failNext(1) // the first delivery fails with 500 and must come again

		userKey, _ := ok(t, Do(t, "POST", u+"/user/new", mk, `{"user_id":"ev-user","user_role":"internal_user"}`))["key"].(string)
		ok(t, Do(t, "POST", u+"/team/new", mk, `{"team_id":"ev-team","team_alias":"Events"}`))
		g := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"key_alias":"ev-key","user_id":"ev-user"}`))
		secret, tok := g["key"].(string), g["token_id"].(string)
		ok(t, Do(t, "POST", u+"/key/update", mk, map[string]any{"key": tok, "max_budget": 3}, "litellm-changed-by", "ops@example.com"))
		ok(t, Do(t, "POST", u+"/key/block", mk, map[string]any{"key": tok}))
		ok(t, Do(t, "POST", u+"/key/unblock", mk, map[string]any{"key": tok}))
		rg := ok(t, Do(t, "POST", u+"/key/regenerate", mk, map[string]any{"key": tok}))
		secret2 := rg["key"].(string)
		ok(t, Do(t, "POST", u+"/key/delete", mk, map[string]any{"keys": []string{tok}}))

		want := []string{"user.created", "team.created", "key.created", "key.updated", "key.blocked", "key.unblocked", "key.regenerated", "key.deleted"}
		for _, typ := range want {
			isKey := strings.HasPrefix(typ, "key.")
			d := h.waitFor(t, 15*time.Second, func(d delivery) bool { return d.Type == typ && (!isKey || d.Data["token_id"] == tok) })
			if !d.SigOK {
				t.Fatalf("%s: bad signature or id headers: %v", typ, d.Header)
			}
			if isKey && (d.Data["key_alias"] != "ev-key" || !strings.HasPrefix(d.Data["key_name"].(string), "sk-...")) {
				t.Fatalf("%s data: %v", typ, d.Data)
			}
		}
		upd := h.waitFor(t, time.Second, func(d delivery) bool { return d.Type == "key.updated" })
		if upd.Data["changed_by"] != "ops@example.com" || !strings.Contains(string(upd.Body), `"max_budget"`) {
			t.Fatalf("key.updated data: %s", upd.Body)
		}
		if c := h.waitFor(t, time.Second, func(d delivery) bool { return d.Type == "user.created" }); c.Data["user_id"] != "ev-user" {
			t.Fatalf("user.created data: %v", c.Data)
		}

		// At least once: the event answered 500 came again with the same id.
		all := h.deliveries()
		if all[0].Status != 500 {
			t.Fatalf("first delivery answered %d, want the injected 500", all[0].Status)
		}
		h.waitFor(t, 15*time.Second, func(d delivery) bool { return d.ID == all[0].ID && d.Type == all[0].Type })
		// Every other event exactly once (no failures), ids unique per event.
		seen := map[string]int{}
		for _, d := range h.deliveries() {
			if d.Status == 200 {
				seen[d.ID]++
			}
		}
		for id, n := range seen {
			if n != 1 {
				t.Fatalf("event %s delivered %d times with success", id, n)
			}
		}
		// (+1: /user/new also creates the user's first key.)
		if len(seen) != len(want)+1 {
			t.Fatalf("%d distinct events delivered, want %d", len(seen), len(want)+1)
		}
		for _, d := range h.deliveries() {
			for _, s := range []string{secret, secret2, mk, userKey} {
				if len(s) > 8 && (strings.Contains(string(d.Body), s) || strings.Contains(string(d.Body), s[3:])) {
					t.Fatalf("%s event carries a key: %s", d.Type, d.Body)
				}
			}
		}
	})
}

// TestAutoRotateDeliversSignedSecret: an auto_rotate key is rotated on
// schedule; the new secret arrives only in the signed key.rotated event and
// works on a proxy, while the old one keeps working for the grace period.
func TestAutoRotateDeliversSignedSecret(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d, h := eventDeployment(t, o, map[string]any{"key_rotation_grace_period": "5s"})
		u, mk := d.cp.URL(), d.cp.MasterKey
		p := d.proxy(t)
		body := chat("gpt-4o-mini", "")

		g := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"key_alias":"rotating","auto_rotate":true,"rotation_interval":"2s"}`))
		old, tok := g["key"].(string), g["token_id"].(string)
		info := ok(t, Do(t, "GET", u+"/key/info?key="+tok, mk, nil))["info"].(map[string]any)
		if info["auto_rotate"] != true || info["key_rotation_at"] == nil || info["rotation_interval"] != "2s" {
			t.Fatalf("key/info before rotation: %v", info)
		}
		waitStatus(t, p, old, body, 200)

		rot := h.waitFor(t, 15*time.Second, func(d delivery) bool { return d.Type == "key.rotated" })
		stop := time.Now()
		ok(t, Do(t, "POST", u+"/key/update", mk, map[string]any{"key": tok, "auto_rotate": false}))
		if !rot.SigOK {
			t.Fatalf("key.rotated: bad signature: %v", rot.Header)
		}
		nk, _ := rot.Data["key"].(string)
		if !strings.HasPrefix(nk, "sk-") || nk == old || rot.Data["token_id"] != tok || rot.Data["grace_until"] == nil ||
			rot.Data["key_name"] != "sk-..."+nk[len(nk)-4:] || rot.Data["sealed_key"] != nil {
			t.Fatalf("key.rotated data: %v", rot.Data)
		}
		graceUntil, err := time.Parse(time.RFC3339Nano, rot.Data["grace_until"].(string))
		if err != nil {
			t.Fatal(err)
		}
		waitStatus(t, p, nk, body, 200)
		if time.Now().Before(graceUntil.Add(-time.Second)) {
			if r := Do(t, "POST", p.URL()+"/v1/chat/completions", old, body); r.Status != 200 {
				t.Fatalf("old secret refused during the grace period: %d %s", r.Status, r.Body)
			}
		}
		info = ok(t, Do(t, "GET", u+"/key/info?key="+tok, mk, nil))["info"].(map[string]any)
		if n, _ := info["rotation_count"].(float64); n < 1 || info["last_rotation_at"] == nil {
			t.Fatalf("key/info after rotation: %v", info)
		}
		// The old secret stops when the grace ends, with no further call.
		time.Sleep(time.Until(graceUntil.Add(300 * time.Millisecond)))
		waitStatus(t, p, old, body, 401)
		// The latest rotated secret still works (auto_rotate was turned off
		// at most one more rotation later).
		var latest string
		for _, dl := range h.deliveries() {
			if dl.Type == "key.rotated" && dl.Status == 200 {
				latest = dl.Data["key"].(string)
			}
		}
		waitStatus(t, p, latest, body, 200)
		_ = stop

		// No event but key.rotated carries a plaintext key.
		for _, dl := range h.deliveries() {
			if dl.Type == "key.rotated" {
				continue
			}
			for _, s := range []string{old, nk, latest} {
				if strings.Contains(string(dl.Body), s) {
					t.Fatalf("%s event carries a key: %s", dl.Type, dl.Body)
				}
			}
		}
		// The audit log has the rotation, without key material.
		a := Do(t, "GET", u+"/audit?object_id="+tok, mk, nil)
		if !strings.Contains(string(a.Body), `"rotated"`) || strings.Contains(string(a.Body), nk) {
			t.Fatalf("audit after rotation: %s", a.Body)
		}
	})
}

// TestSoftBudgetAlertOnce: spend crossing a key's and a team's soft_budget
// sends one budget.soft_budget_crossed event each to the webhook (not one per
// request), naming the object, its spend and its soft budget; requests keep
// flowing (a soft budget never refuses).
func TestSoftBudgetAlertOnce(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		d, h := eventDeployment(t, o, nil)
		dp := d.proxy(t)
		u, mk := d.cp.URL(), d.cp.MasterKey
		// One request costs about $0.000005 (10 prompt, 5 completion tokens).
		ok(t, Do(t, "POST", u+"/team/new", mk, `{"team_id":"soft-team","soft_budget":0.00002}`))
		g := ok(t, Do(t, "POST", u+"/key/generate", mk, `{"key_alias":"soft-key","team_id":"soft-team","soft_budget":0.00001,"max_budget":1}`))
		key, tok := g["key"].(string), g["token_id"].(string)
		waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)
		for range 7 { // 8 requests: about $0.00004 in all
			if r := Do(t, "POST", dp.URL()+"/v1/chat/completions", key, chat("gpt-4o-mini", "")); r.Status != 200 {
				t.Fatalf("request refused under a soft budget: %d %s", r.Status, r.Body)
			}
		}
		kd := h.waitFor(t, 15*time.Second, func(d delivery) bool {
			return d.Type == "budget.soft_budget_crossed" && d.Data["object_type"] == "key"
		})
		if !kd.SigOK || kd.Data["token"] != tok || kd.Data["key_alias"] != "soft-key" || kd.Data["soft_budget"] != 0.00001 ||
			kd.Data["event"] != "soft_budget_crossed" || kd.Data["event_group"] != "key" || kd.Data["max_budget"] != 1.0 {
			t.Fatalf("key alert: %s", kd.Body)
		}
		// The batch that crossed may hold several requests.
		if s, _ := kd.Data["spend"].(float64); s < 0.00001 || s > 0.00004+1e-9 {
			t.Fatalf("key alert spend %v", kd.Data["spend"])
		}
		td := h.waitFor(t, 15*time.Second, func(d delivery) bool {
			return d.Type == "budget.soft_budget_crossed" && d.Data["object_type"] == "team"
		})
		if td.Data["team_id"] != "soft-team" || td.Data["soft_budget"] != 0.00002 {
			t.Fatalf("team alert: %s", td.Body)
		}
		// Let every spend batch land, then count: one alert per object.
		time.Sleep(1500 * time.Millisecond)
		n := map[any]int{}
		for _, dl := range h.deliveries() {
			if dl.Type == "budget.soft_budget_crossed" && dl.Status == 200 {
				n[dl.Data["object_type"]]++
			}
			if strings.Contains(string(dl.Body), key[3:]) {
				t.Fatalf("alert carries the key: %s", dl.Body)
			}
		}
		if n["key"] != 1 || n["team"] != 1 || len(n) != 2 {
			t.Fatalf("alerts per object = %v, want one for the key and one for the team", n)
		}
		info := ok(t, Do(t, "GET", u+"/key/info?key="+tok, mk, nil))
		if s, _ := info["info"].(map[string]any)["spend"].(float64); s < 0.000035 {
			t.Fatalf("key spend %v after 8 requests", info["info"])
		}
	})
}

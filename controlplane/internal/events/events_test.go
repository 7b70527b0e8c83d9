package events

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/settings"
)

func TestSignKnownVector(t *testing.T) {
	// RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
	got := Sign("Jefe", []byte("what do ya want for nothing?"))
	want := "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
	if got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
	if !Verify("Jefe", []byte("what do ya want for nothing?"), want) || Verify("jefe", []byte("what do ya want for nothing?"), want) ||
		Verify("Jefe", []byte("what do ya want for nothing!"), want) {
		t.Fatal("Verify accepts a wrong secret or body, or refuses the right one")
	}
}

func TestBackoffDoublesUpToCap(t *testing.T) {
	base, cap := time.Second, 10*time.Minute
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}
	for i, w := range want {
		if got := Backoff(i+1, base, cap); got != w {
			t.Fatalf("Backoff(%d) = %s, want %s", i+1, got, w)
		}
	}
	for _, n := range []int{11, 12, 50, 1 << 20} {
		if got := Backoff(n, base, cap); got != cap {
			t.Fatalf("Backoff(%d) = %s, want the cap %s", n, got, cap)
		}
	}
	if Backoff(0, base, cap) != base {
		t.Fatal("Backoff(0) is not the base")
	}
	for range 1000 {
		if j := jitter(8 * time.Second); j < 4*time.Second || j > 8*time.Second {
			t.Fatalf("jitter(8s) = %s, outside [4s, 8s]", j)
		}
	}
}

func TestSealRoundTripAndBinding(t *testing.T) {
	s := newSealer("sk-master-1")
	sealed := s.seal("sk-secret-value", "ev1\x00tok1")
	if strings.Contains(sealed, "sk-secret-value") || !strings.HasPrefix(sealed, sealPrefix) {
		t.Fatalf("sealed form leaks or lacks the prefix: %s", sealed)
	}
	if got, err := s.open(sealed, "ev1\x00tok1"); err != nil || got != "sk-secret-value" {
		t.Fatalf("open = %q, %v", got, err)
	}
	if _, err := s.open(sealed, "ev2\x00tok1"); err == nil {
		t.Fatal("a sealed secret opened under another event id")
	}
	if _, err := newSealer("sk-master-2").open(sealed, "ev1\x00tok1"); err == nil {
		t.Fatal("a sealed secret opened with another master key")
	}
}

func TestConfigFrom(t *testing.T) {
	env := map[string]string{"WEBHOOK_URL": "https://env.example/hook", "TOLLGATE_WEBHOOK_SECRET": "env-secret", "MYSECRET": "ref-secret"}
	getenv := func(k string) string { return env[k] }
	parse := func(js string) settings.General {
		g, err := settings.Parse(json.RawMessage(js))
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	c := configFrom(parse(`{}`), getenv)
	if c.Enabled || c.Ready() || c.Grace != DefaultGracePeriod {
		t.Fatalf("no alerting: %+v", c)
	}
	c = configFrom(parse(`{"alerting":["slack","webhook"]}`), getenv)
	if !c.Ready() || c.URL != "https://env.example/hook" || c.Secret != "env-secret" {
		t.Fatalf("env fallback: %+v", c)
	}
	c = configFrom(parse(`{"alerting":["webhook"],"alerting_args":{"webhook_url":"http://s.example/h"},"webhook_secret":"os.environ/MYSECRET","key_rotation_grace_period":"2h"}`), getenv)
	if !c.Ready() || c.URL != "http://s.example/h" || c.Secret != "ref-secret" || c.Grace != 2*time.Hour {
		t.Fatalf("settings: %+v", c)
	}
	c = configFrom(parse(`{"alerting":["webhook"]}`), func(string) string { return "" })
	if c.Ready() || !strings.Contains(c.Problem, "URL") {
		t.Fatalf("no URL: %+v", c)
	}
	c = configFrom(parse(`{"alerting":["webhook"],"alerting_args":{"webhook_url":"https://x.example"}}`), func(string) string { return "" })
	if c.Ready() || !strings.Contains(c.Problem, "secret") {
		t.Fatalf("no secret: %+v", c)
	}
	c = configFrom(parse(`{"alerting":["webhook"],"webhook_secret":"literal-secret"}`), getenv)
	if c.Ready() || c.Secret == "literal-secret" || !strings.Contains(c.Problem, "os.environ") {
		t.Fatalf("literal secret accepted: %+v", c)
	}
	c = configFrom(parse(`{"alerting":["webhook"],"key_rotation_grace_period":"soon"}`), getenv)
	if c.Ready() {
		t.Fatalf("bad grace accepted: %+v", c)
	}
}

func TestAuditPayloadHasNoSecrets(t *testing.T) {
	before := json.RawMessage(`{"token_id":"t1","key_name":"sk-...abcd","key_alias":"a","max_budget":1,"key":"sk-plaintext","key_hash":"deadbeef"}`)
	after := json.RawMessage(`{"token_id":"t1","key_name":"sk-...wxyz","key_alias":"a","max_budget":2,"key":"sk-plaintext","key_hash":"deadbeef"}`)
	p := AuditPayload(store.KindKey, "t1", "master_key", "ops", before, after, time.Unix(0, 0))
	b, _ := json.Marshal(p)
	if strings.Contains(string(b), "plaintext") || strings.Contains(string(b), "deadbeef") {
		t.Fatalf("payload carries key material: %s", b)
	}
	if p["key_name"] != "sk-...wxyz" || p["changed_by"] != "ops" || p["token_id"] != "t1" {
		t.Fatalf("payload: %s", b)
	}
	if ch := p["changed_fields"].([]string); strings.Join(ch, ",") != "key,key_hash,max_budget"[len("key,key_hash,"):] {
		t.Fatalf("changed_fields = %v", ch)
	}
	if ForAudit("created", store.KindKey) != store.EventKeyCreated || ForAudit("updated", store.KindTeam) != "" ||
		ForAudit("created", store.KindUser) != store.EventUserCreated {
		t.Fatal("ForAudit mapping")
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(NewID()) {
		t.Fatal("NewID is not a UUID v4")
	}
}

// hook records deliveries and answers with the statuses queued in fail.
type hook struct {
	srv    *httptest.Server
	mu     sync.Mutex
	bodies [][]byte
	sigs   []string
	fail   int
}

func newHook(t *testing.T) *hook {
	h := &hook{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		defer h.mu.Unlock()
		h.bodies = append(h.bodies, b)
		h.sigs = append(h.sigs, r.Header.Get(SignatureHeader))
		if h.fail > 0 {
			h.fail--
			w.WriteHeader(500)
		}
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func newJob(t *testing.T, h *hook, now *time.Time) (*Job, store.Store) {
	st, err := embedded.Open(filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return newJobOn(t, st, h, now)
}

func newJobOn(t *testing.T, st store.Store, h *hook, now *time.Time) (*Job, store.Store) {
	gs := `{"alerting":["webhook"],"alerting_args":{"webhook_url":"` + h.srv.URL + `"},"webhook_secret":"os.environ/HOOK_SECRET","key_rotation_grace_period":"1h"}`
	if err := st.ReadWriteTx(t.Context(), func(ctx context.Context, tx store.Tx) error {
		return tx.PutSettings(ctx, store.Settings{GeneralSettings: json.RawMessage(gs)})
	}); err != nil {
		t.Fatal(err)
	}
	j := New(st, "sk-master")
	j.Log = slog.New(slog.DiscardHandler)
	j.Now = func() time.Time { return *now }
	j.Getenv = func(k string) string {
		if k == "HOOK_SECRET" {
			return "s3cret"
		}
		return ""
	}
	return j, st
}

func TestJobRetriesUntilDelivered(t *testing.T) {
	h := newHook(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	j, st := newJob(t, h, &now)
	if err := st.ReadWriteTx(t.Context(), func(ctx context.Context, tx store.Tx) error {
		return Enqueue(ctx, tx, store.EventKeyCreated, map[string]any{"token_id": "t1"}, now)
	}); err != nil {
		t.Fatal(err)
	}
	h.fail = 2
	for i := range 2 {
		if err := j.Round(t.Context()); err != nil {
			t.Fatal(err)
		}
		pend, _, _ := st.Read().ListEvents(t.Context(), store.EventFilter{PendingOnly: true})
		if len(pend) != 1 || pend[0].Attempts != i+1 || !strings.Contains(pend[0].LastError, "500") {
			t.Fatalf("after failure %d: %+v", i+1, pend)
		}
		// Not retried before its backoff.
		if err := j.Round(t.Context()); err != nil {
			t.Fatal(err)
		}
		if len(h.bodies) != i+1 {
			t.Fatalf("retried before the backoff: %d requests", len(h.bodies))
		}
		now = now.Add(MaxBackoff)
	}
	if err := j.Round(t.Context()); err != nil {
		t.Fatal(err)
	}
	if pend, _, _ := st.Read().ListEvents(t.Context(), store.EventFilter{PendingOnly: true}); len(pend) != 0 {
		t.Fatalf("still pending after a 200: %+v", pend)
	}
	if len(h.bodies) != 3 {
		t.Fatalf("%d requests, want 3", len(h.bodies))
	}
	var ids []string
	for i, b := range h.bodies {
		if !Verify("s3cret", b, h.sigs[i]) {
			t.Fatalf("request %d: bad signature", i)
		}
		var body Body
		if err := json.Unmarshal(b, &body); err != nil || body.Type != store.EventKeyCreated || string(body.Data) != `{"token_id":"t1"}` {
			t.Fatalf("body %s: %v", b, err)
		}
		ids = append(ids, body.EventID)
	}
	if ids[0] != ids[1] || ids[1] != ids[2] {
		t.Fatalf("event id changed between attempts: %v", ids)
	}
	// Delivered events are purged after the retention.
	now = now.Add(DefaultRetention + time.Hour)
	if err := j.Round(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, n, _ := st.Read().ListEvents(t.Context(), store.EventFilter{}); n != 0 {
		t.Fatalf("%d events left after the retention", n)
	}
}

func TestJobRotatesDueKeysOnce(t *testing.T) {
	t.Run("embedded", func(t *testing.T) {
		h := newHook(t)
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		j, st := newJob(t, h, &now)
		testRotatesOnce(t, h, j, st, &now)
	})
	t.Run("postgres", func(t *testing.T) {
		h := newHook(t)
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		j, st := newJobOn(t, pgtest.NewStore(t), h, &now)
		testRotatesOnce(t, h, j, st, &now)
	})
}

// testRotatesOnce: two replicas racing rotate a due key once.
func testRotatesOnce(t *testing.T, h *hook, j *Job, st store.Store, nowp *time.Time) {
	now := *nowp
	secret := keys.Generate()
	due := now.Add(-time.Second)
	k := store.Key{TokenID: "tok", KeyHash: keys.Hash(secret), KeyName: keys.DisplayName(secret), AutoRotate: true,
		RotationInterval: "30d", KeyRotationAt: &due, CreatedAt: now, UpdatedAt: now}
	if err := st.ReadWriteTx(t.Context(), func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, k) }); err != nil {
		t.Fatal(err)
	}
	// Two jobs (replicas) racing: one rotation.
	j2 := New(st, "sk-master")
	j2.Log, j2.Now, j2.Getenv = j.Log, j.Now, j.Getenv
	var wg sync.WaitGroup
	for _, jj := range []*Job{j, j2} {
		wg.Go(func() {
			if err := jj.Round(context.Background()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, err := st.Read().GetKey(t.Context(), "tok")
	if err != nil {
		t.Fatal(err)
	}
	if got.RotationCount != 1 || got.KeyHash == k.KeyHash || got.LastRotationAt == nil || !got.KeyRotationAt.Equal(now.AddDate(0, 0, 30)) {
		t.Fatalf("after rotation: count %d, last %v, next %v", got.RotationCount, got.LastRotationAt, got.KeyRotationAt)
	}
	if len(got.PreviousHashes) != 1 || got.PreviousHashes[0].KeyHash != k.KeyHash || !got.PreviousHashes[0].ValidUntil.Equal(now.Add(time.Hour)) {
		t.Fatalf("old secret not honoured for the grace: %+v", got.PreviousHashes)
	}
	// The outbox holds the new secret only sealed.
	evs, _, _ := st.Read().ListEvents(t.Context(), store.EventFilter{Type: store.EventKeyRotated})
	if len(evs) != 1 {
		t.Fatalf("%d key.rotated events, want 1", len(evs))
	}
	var stored map[string]any
	_ = json.Unmarshal(evs[0].Payload, &stored)
	if _, plain := stored["key"]; plain || stored["sealed_key"] == nil {
		t.Fatalf("outbox payload: %s", evs[0].Payload)
	}
	// The webhook got the plaintext, signed; it hashes to the stored key.
	if err := j.Round(t.Context()); err != nil {
		t.Fatal(err)
	}
	var rotated *Body
	for i, b := range h.bodies {
		var body Body
		_ = json.Unmarshal(b, &body)
		if body.Type == store.EventKeyRotated {
			if !Verify("s3cret", b, h.sigs[i]) {
				t.Fatal("key.rotated: bad signature")
			}
			rotated = &body
		}
	}
	if rotated == nil {
		t.Fatal("no key.rotated delivered")
	}
	var data struct {
		TokenID    string    `json:"token_id"`
		Key        string    `json:"key"`
		KeyName    string    `json:"key_name"`
		GraceUntil time.Time `json:"grace_until"`
	}
	if err := json.Unmarshal(rotated.Data, &data); err != nil {
		t.Fatal(err)
	}
	if data.TokenID != "tok" || keys.Hash(data.Key) != got.KeyHash || data.KeyName != got.KeyName || !data.GraceUntil.Equal(now.Add(time.Hour)) {
		t.Fatalf("key.rotated data: %s", rotated.Data)
	}
	// Not due again until the interval passed; audit row written.
	if err := j.Round(t.Context()); err != nil {
		t.Fatal(err)
	}
	if again, _ := st.Read().GetKey(t.Context(), "tok"); again.RotationCount != 1 {
		t.Fatal("rotated again before the interval")
	}
	audit, _, _ := st.Read().ListAudit(t.Context(), store.AuditFilter{ObjectID: "tok"})
	if len(audit) != 1 || audit[0].Action != "rotated" || strings.Contains(string(audit[0].After), data.Key) {
		t.Fatalf("audit: %+v", audit)
	}
}

func TestJobDoesNotRotateWithoutWebhook(t *testing.T) {
	h := newHook(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	j, st := newJob(t, h, &now)
	if err := st.ReadWriteTx(t.Context(), func(ctx context.Context, tx store.Tx) error {
		due := now.Add(-time.Second)
		if err := tx.PutSettings(ctx, store.Settings{GeneralSettings: json.RawMessage(`{}`)}); err != nil {
			return err
		}
		if err := Enqueue(ctx, tx, store.EventKeyCreated, map[string]any{}, now); err != nil {
			return err
		}
		return tx.CreateKey(ctx, store.Key{TokenID: "tok", KeyHash: keys.Hash("sk-x-123456"), AutoRotate: true, RotationInterval: "1d", KeyRotationAt: &due, CreatedAt: now})
	}); err != nil {
		t.Fatal(err)
	}
	if err := j.Round(t.Context()); err != nil {
		t.Fatal(err)
	}
	if k, _ := st.Read().GetKey(t.Context(), "tok"); k.RotationCount != 0 {
		t.Fatal("rotated with no webhook to deliver the secret")
	}
	if pend, _, _ := st.Read().ListEvents(t.Context(), store.EventFilter{PendingOnly: true}); len(pend) != 0 || len(h.bodies) != 0 {
		t.Fatalf("events without a webhook: %d pending, %d sent", len(pend), len(h.bodies))
	}
}

// The soft-budget alert shows exact amounts (nano-USD), not rounded to the
// micro-USD.
func TestSoftBudgetPayloadExactAmounts(t *testing.T) {
	max := int64(1_000_000_000)
	p := SoftBudgetPayload(store.SoftBudgetCrossing{Kind: store.KindKey, ID: "tok", Spend: 855, SoftBudget: 100, MaxBudget: &max}, time.Unix(0, 0))
	if msg := p["event_message"]; msg != "Soft budget crossed: key tok spend $0.000000855 reached soft budget $0.0000001" {
		t.Fatalf("event_message %q", msg)
	}
	if p["spend"] != 0.000000855 || p["soft_budget"] != 0.0000001 || p["max_budget"] != 1.0 {
		t.Fatalf("payload %v", p)
	}
}

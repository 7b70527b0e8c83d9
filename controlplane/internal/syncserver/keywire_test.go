package syncserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// outcome is what one way made of a key document.
type outcome struct {
	raw       []byte // the encoded Entity, if any
	decodeErr bool   // the document does not decode (the build fails)
	skipped   bool   // the key is left out of the snapshot
}

// oldWay is the snapshot builder before keyWire: DecodeJSON,
// keyScratch.fill, proto.Marshal.
func oldWay(doc []byte) outcome {
	var k store.Key
	if err := store.DecodeJSON(doc, &k); err != nil {
		return outcome{decodeErr: true}
	}
	e, err := new(keyScratch).fill(&k)
	if err != nil {
		return outcome{skipped: true}
	}
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(e)
	if err != nil {
		return outcome{skipped: true}
	}
	return outcome{raw: raw}
}

func newWay(doc []byte) outcome {
	var w keyWire
	prefix := []byte("prefix")
	out, err := w.appendEntity(prefix, doc)
	if !bytes.Equal(out[:len(prefix)], prefix) {
		panic("appendEntity changed dst")
	}
	switch {
	case errors.As(err, new(errKeyDecode)):
		return outcome{decodeErr: true}
	case err != nil:
		if len(out) != len(prefix) {
			panic("appendEntity appended to a skipped key")
		}
		return outcome{skipped: true}
	}
	return outcome{raw: out[len(prefix):]}
}

// sameOutcome compares the two ways on doc: the same fate, and entities
// that are equal messages, byte for byte when the fast path took doc (it
// writes no maps, so the old encoding is deterministic too).
func sameOutcome(t *testing.T, doc []byte) {
	t.Helper()
	o, n := oldWay(doc), newWay(doc)
	if o.decodeErr != n.decodeErr || o.skipped != n.skipped {
		t.Fatalf("doc %s:\nold way decodeErr=%v skipped=%v, new way decodeErr=%v skipped=%v", doc, o.decodeErr, o.skipped, n.decodeErr, n.skipped)
	}
	if o.raw == nil {
		return
	}
	var oe, ne syncv1.Entity
	if err := proto.Unmarshal(o.raw, &oe); err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(n.raw, &ne); err != nil {
		t.Fatalf("doc %s: new way's bytes do not decode: %v", doc, err)
	}
	if !proto.Equal(&oe, &ne) {
		t.Fatalf("doc %s:\nold way %v\nnew way %v", doc, &oe, &ne)
	}
	if _, fast := new(keyWire).fast(nil, doc); fast && !bytes.Equal(o.raw, n.raw) {
		t.Fatalf("doc %s: fast path bytes differ from proto.Marshal's:\nold %x\nnew %x", doc, o.raw, n.raw)
	}
}

// jsonbStyle re-renders a JSON document the way Postgres renders jsonb:
// object members ordered by name length then bytes, ", " and ": "
// separators.
func jsonbStyle(t testing.TB, doc []byte) []byte {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(doc))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	var render func(v any)
	render = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			names := make([]string, 0, len(v))
			for n := range v {
				names = append(names, n)
			}
			sort.Slice(names, func(i, j int) bool {
				if len(names[i]) != len(names[j]) {
					return len(names[i]) < len(names[j])
				}
				return names[i] < names[j]
			})
			b.WriteByte('{')
			for i, n := range names {
				if i > 0 {
					b.WriteString(", ")
				}
				q, _ := json.Marshal(n)
				b.Write(q)
				b.WriteString(": ")
				render(v[n])
			}
			b.WriteByte('}')
		case []any:
			b.WriteByte('[')
			for i, x := range v {
				if i > 0 {
					b.WriteString(", ")
				}
				render(x)
			}
			b.WriteByte(']')
		default:
			q, _ := json.Marshal(v)
			b.Write(q)
		}
	}
	render(v)
	return []byte(b.String())
}

// wireKeys are keys with every field the fast path takes set, alone and
// together, and with the rarer fields that send it the old way.
func wireKeys() []store.Key {
	at := time.Date(2026, 12, 7, 21, 15, 56, 20_000_000, time.UTC)
	hash := sha256Hex("sk-wire")
	i64 := func(v int64) *int64 { return &v }
	tm := func(t time.Time) *time.Time { return &t }
	base := func() store.Key {
		return store.Key{TokenID: "tok-1", KeyHash: hash, KeyName: "sk-...wire", CreatedAt: at, UpdatedAt: at.Add(time.Second),
			CreatedBy: "master_key", UpdatedBy: "master_key"}
	}
	full := base()
	full.KeyAlias, full.UserID, full.TeamID, full.OrganizationID = "alias", "user-1", "team-1", "org-1"
	full.ServiceAccount, full.BudgetID = true, "budget-1"
	full.Models = []string{"gpt-4o", "", "claude"}
	full.Limits = store.Limits{MaxBudget: i64(9007199254740993), SoftBudget: i64(0), BudgetDuration: "30d",
		BudgetResetAt: tm(at.Add(30 * 24 * time.Hour)), RPMLimit: i64(60), TPMLimit: i64(-5), MaxParallelRequests: i64(4)}
	full.Metadata = json.RawMessage(`{"team":"ml","nested":{"list":[1,2.5,"x",null],"flag":true},"text":"h\u00e9llo \"quoted\" <&>"}`)
	full.Permissions = json.RawMessage(`{"allow_pii_controls":false}`)
	full.Guardrails, full.Tags = []string{"pii"}, []string{"prod", "batch"}
	full.EnforcedParams, full.AllowedRoutes = []string{"user"}, []string{"/chat/completions"}
	full.Blocked, full.Expires = true, tm(at.Add(90*24*time.Hour).In(time.FixedZone("x", 5*3600+1800)))
	full.AutoRotate, full.RotationInterval = true, "30d"
	full.KeyRotationAt, full.LastRotationAt, full.RotationCount = tm(at), tm(at.Add(-time.Hour)), 3
	full.Spend = 1234567
	full.ModelSpend = map[string]int64{"gpt-4o": 12}

	var keys []store.Key
	keys = append(keys, base(), full)
	// Each fast-path field alone.
	for _, set := range []func(*store.Key){
		func(k *store.Key) { k.KeyAlias = "a" },
		func(k *store.Key) { k.UserID = "u" },
		func(k *store.Key) { k.ServiceAccount = true },
		func(k *store.Key) { k.Models = []string{} },
		func(k *store.Key) { k.MaxBudget = i64(0) },
		func(k *store.Key) { k.MaxBudget = i64(-1) },
		func(k *store.Key) { k.SoftBudget = i64(1 << 62) },
		func(k *store.Key) { k.BudgetResetAt = tm(time.Unix(0, 0)) },
		func(k *store.Key) { k.BudgetResetAt = tm(time.Unix(-86400*365*100-1, 999_999_999)) },
		func(k *store.Key) { k.Expires = tm(time.Unix(0, 0).UTC()) },
		func(k *store.Key) { k.Expires = tm(time.Unix(-1, 0).UTC()) },
		func(k *store.Key) { k.Expires = tm(time.Date(2028, 2, 29, 23, 59, 59, 999_999_999, time.UTC)) },
		func(k *store.Key) { k.Spend = -7 },
		func(k *store.Key) { k.Metadata = json.RawMessage(`"just a string"`) },
		func(k *store.Key) { k.Metadata = json.RawMessage(`{}`) },
		func(k *store.Key) { k.Tags = []string{"a", "b", "c"} },
		func(k *store.Key) { k.ModelSpend = map[string]int64{} },
		func(k *store.Key) { k.KeyHash = strings.ToUpper(hash) },
		func(k *store.Key) { k.KeyHash = "sk-plaintext-not-a-hash" },
		func(k *store.Key) { k.TokenID = "" },
		func(k *store.Key) { k.UserID = "h\u00e9 \"q\"" },
		// The old way's fields.
		func(k *store.Key) {
			k.ModelMaxBudget = map[string]store.ModelBudget{"gpt-4o": {BudgetLimit: 5, TimePeriod: "1d"}, "b": {BudgetLimit: 1}}
			k.ModelSpend = map[string]int64{"gpt-4o": 3, "other": 4}
		},
		func(k *store.Key) { k.ModelRPMLimit = map[string]int64{"gpt-4o": 10} },
		func(k *store.Key) { k.ModelTPMLimit = map[string]int64{"gpt-4o": 0} },
		func(k *store.Key) {
			k.PreviousHashes = []store.PreviousHash{{KeyHash: sha256Hex("old"), ValidUntil: at}, {KeyHash: "bad", ValidUntil: at}}
		},
	} {
		k := base()
		set(&k)
		keys = append(keys, k)
		k = full
		set(&k)
		keys = append(keys, k)
	}
	return keys
}

// The fast path gives what the old way gave, for keys with every field
// set, in both stores' renderings.
func TestKeyWireMatchesOldWay(t *testing.T) {
	fast := 0
	for i, k := range wireKeys() {
		doc, err := json.Marshal(k)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range [][]byte{doc, jsonbStyle(t, doc)} {
			t.Run(fmt.Sprint(i), func(t *testing.T) { sameOutcome(t, d) })
			if _, ok := new(keyWire).fast(nil, d); ok {
				fast++
			}
		}
	}
	// Guard against a fast path that silently never runs.
	if fast < 40 {
		t.Errorf("the fast path took %d documents, want most of them", fast)
	}
}

// keyWireEdgeDocs are documents no store writes, which the fast path must
// still either reproduce or leave to the old way.
var keyWireEdgeDocs = []string{
	``, `null`, `[]`, `{}`, ` { } `, `{"token_id":"a"}`, `{"token_id":"a"} x`, `{"token_id":"a",}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","token_id":null}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","token_id":"a","token_id":"b"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","Token_ID":"a"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","unknown":1}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","token_id":"a\u0041"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","token_id":"é"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","max_budget":1.5}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","max_budget":1e3}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","max_budget":-0}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","max_budget":01}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","max_budget":9223372036854775807}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","max_budget":9223372036854775808}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","spend":-9223372036854775808}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","spend":-9223372036854775809}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","spend":"1"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","blocked":1}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","blocked":truex}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","models":["a",1]}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","models":"a"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","metadata":{"a":}}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","metadata":{"a":"}"} }`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","metadata":[1,{"b":"\"]"}] ,"blocked":true}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","metadata":null}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","expires":"2026-02-29T00:00:00Z"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","expires":"2026-02-28T24:00:00Z"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","expires":"2026-02-28T23:59:60Z"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","expires":"2026-02-28T23:59:59.1234567891Z"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","expires":"2026-02-28T23:59:59,5Z"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","expires":"2026-02-28t23:59:59Z"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","expires":"2026-02-28T23:59:59+25:00"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","expires":"2026-02-28T23:59:59-07:30"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","expires":"0000-01-01T00:00:00Z"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","created_at":"yesterday"}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","model_spend":{"a":1.5}}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","model_spend":{"a":1,"a":2}}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","model_max_budget":{}}`,
	`{"key_hash":"` + strings.Repeat("ab", 32) + `","previous_hashes":[]}`,
	`{"key_hash":"` + strings.Repeat("zz", 32) + `"}`,
	"{\"key_hash\":\"" + strings.Repeat("ab", 32) + "\",\t\"blocked\"\n:\rtrue}",
}

func TestKeyWireEdgeDocuments(t *testing.T) {
	for i, doc := range keyWireEdgeDocs {
		t.Run(fmt.Sprint(i), func(t *testing.T) { sameOutcome(t, []byte(doc)) })
	}
}

func FuzzKeyWire(f *testing.F) {
	for _, k := range wireKeys() {
		doc, _ := json.Marshal(k)
		f.Add(doc)
		f.Add(jsonbStyle(f, doc))
	}
	for _, doc := range keyWireEdgeDocs {
		f.Add([]byte(doc))
	}
	f.Fuzz(func(t *testing.T, doc []byte) { sameOutcome(t, doc) })
}

// unixRFC3339Z agrees with time.Time.UnmarshalJSON on every timestamp it
// takes.
func TestUnixRFC3339Z(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(s string) {
		t.Helper()
		u, ok := unixRFC3339Z([]byte(s))
		var tm time.Time
		err := tm.UnmarshalJSON([]byte(`"` + s + `"`))
		if ok && (err != nil || tm.Unix() != u) {
			t.Fatalf("%s: unixRFC3339Z = %d, time says %d, %v", s, u, tm.Unix(), err)
		}
	}
	for range 200000 {
		tm := time.Unix(rng.Int64N(400*365*86400)-200*365*86400, rng.Int64N(1e9)).UTC()
		check(tm.Format(time.RFC3339Nano))
		check(tm.Format(time.RFC3339))
	}
	for _, s := range []string{"0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z", "2024-02-29T12:00:00Z",
		"2100-02-29T12:00:00Z", "2000-02-29T12:00:00Z", "1969-12-31T23:59:59.5Z", "2026-13-01T00:00:00Z",
		"2026-04-31T00:00:00Z", "2026-01-01T00:00:00.Z", "2026-01-01T00:00:00.1234567890Z"} {
		check(s)
	}
	if _, ok := unixRFC3339Z([]byte("2026-12-07T21:15:56.02Z")); !ok {
		t.Error("the common shape is not taken")
	}
}

func FuzzUnixRFC3339Z(f *testing.F) {
	f.Add("2026-12-07T21:15:56.02Z")
	f.Add("0000-02-29T00:00:00Z")
	f.Fuzz(func(t *testing.T, s string) {
		u, ok := unixRFC3339Z([]byte(s))
		if !ok {
			return
		}
		var tm time.Time
		if err := tm.UnmarshalJSON([]byte(`"` + s + `"`)); err != nil || tm.Unix() != u {
			t.Fatalf("%q: unixRFC3339Z = %d, time says %d, %v", s, u, tm.Unix(), err)
		}
	})
}

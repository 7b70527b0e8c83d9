package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fillZero sets every zero field of k that the samples below left out (a
// field added to Key later) to some value of its type.
func fillZero(t testing.TB, k *Key) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for name, f := range keyJSONFields {
		v := reflect.ValueOf(k).Elem().FieldByIndex(f.index)
		if !v.IsZero() {
			continue
		}
		raw := map[reflect.Kind]string{reflect.String: `"s"`, reflect.Bool: `true`, reflect.Int64: `7`}[v.Kind()]
		switch v.Type() {
		case reflect.TypeFor[time.Time](), reflect.TypeFor[*time.Time]():
			b, _ := json.Marshal(at)
			raw = string(b)
		case reflect.TypeFor[*int64]():
			raw = `7`
		case reflect.TypeFor[[]string]():
			raw = `["a"]`
		case reflect.TypeFor[map[string]int64]():
			raw = `{"m":1}`
		}
		if raw == "" || json.Unmarshal([]byte(raw), v.Addr().Interface()) != nil {
			t.Logf("sample leaves %s (%s) unset", name, v.Type())
		}
	}
}

// For every field: decoding a document into a key where that field is
// already set behaves as encoding/json (which reuses pointers, slices and
// maps), and so does decoding into a zero key.
func TestKeyJSONEveryField(t *testing.T) {
	full := sampleKeys(t)[1]
	doc, err := json.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(doc, &all); err != nil {
		t.Fatal(err)
	}
	if len(all) != len(keyJSONFields) {
		t.Fatalf("the full sample sets %d of %d fields", len(all), len(keyJSONFields))
	}
	for name, f := range keyJSONFields {
		prefilled := func() Key {
			var k Key
			other := sampleKeys(t)[1]
			reflect.ValueOf(&k).Elem().FieldByIndex(f.index).Set(reflect.ValueOf(other).FieldByIndex(f.index))
			return k
		}
		same(t, prefilled, doc)
		same(t, prefilled, []byte(`{"`+name+`":`+string(all[name])+`}`))
		same(t, func() Key { return Key{} }, []byte(`{"`+name+`":`+string(all[name])+`}`))
	}
}

func ptr[T any](v T) *T { return &v }

func sampleKeys(t testing.TB) []Key {
	at := time.Date(2026, 12, 2, 5, 4, 0, 12345, time.UTC)
	full := Key{
		TokenID: "3f1a2b3c4d5e6f708192a3b4c5d6e7f8", KeyHash: strings.Repeat("ab", 32), KeyName: "sk-...1234",
		KeyAlias: "alias-1", UserID: "u1", TeamID: "t1", OrganizationID: "o1", ServiceAccount: true,
		Models: []string{"gpt-4o", "claude"},
		Limits: Limits{MaxBudget: ptr[int64](10_000_000), SoftBudget: ptr[int64](0), BudgetDuration: "30d",
			BudgetResetAt: ptr(at.Add(time.Hour)), RPMLimit: ptr[int64](-1), TPMLimit: ptr[int64](9223372036854775807),
			MaxParallelRequests: ptr[int64](3)},
		ModelMaxBudget: map[string]ModelBudget{"gpt-4o": {BudgetLimit: 5, TimePeriod: "1d"}},
		ModelRPMLimit:  map[string]int64{"gpt-4o": 7}, ModelTPMLimit: map[string]int64{"x": 0},
		Metadata: json.RawMessage(`{"a":[1,2,{"b":"c\"}"}],"d":null}`), Permissions: json.RawMessage(`{}`),
		Guardrails: []string{"g"}, Tags: []string{"x"}, EnforcedParams: []string{"user", "metadata.generation_name"},
		AllowedRoutes: []string{"/chat/completions"}, Blocked: true, Expires: ptr(at.Add(48 * time.Hour)),
		AutoRotate: true, RotationInterval: "30d", KeyRotationAt: ptr(at.Add(24 * time.Hour)),
		LastRotationAt: ptr(at.Add(-time.Hour)), RotationCount: 2,
		PreviousHashes: []PreviousHash{{KeyHash: strings.Repeat("cd", 32), ValidUntil: at}},
		Spend:          123456, CreatedAt: at, UpdatedAt: at.Add(time.Second), CreatedBy: "master_key", UpdatedBy: "u1",
	}
	seeded := Key{TokenID: "0011", KeyHash: strings.Repeat("0f", 32), KeyName: "sk-...d-42", UserID: "seed-user-42",
		TeamID: "seed-team-2", Limits: Limits{MaxBudget: ptr[int64](10_000_000), RPMLimit: ptr[int64](60),
			BudgetDuration: "30d", BudgetResetAt: ptr(at)}, CreatedAt: at, UpdatedAt: at, CreatedBy: "master_key",
		UpdatedBy: "master_key"}
	odd := Key{TokenID: "é-ünïcode", KeyName: "<html>&", UserID: "tab\there", KeyAlias: "quote\"back\\slash",
		TeamID: "\u2028", CreatedAt: time.Date(1, 1, 1, 0, 0, 0, 0, time.FixedZone("x", 3600))}
	fillZero(t, &full)
	return []Key{{}, full, seeded, odd}
}

// docs returns the documents to try: each sample as json.Marshal writes it,
// indented, re-ordered with jsonb-style spacing, and a set of mutations
// (unknown and case-variant names, duplicates, nulls, wrong types, odd
// numbers, escapes, broken syntax).
func docs(t testing.TB) [][]byte {
	var out [][]byte
	add := func(s string) { out = append(out, []byte(s)) }
	rng := rand.New(rand.NewPCG(1, 2))
	for _, k := range sampleKeys(t) {
		b, err := json.Marshal(k)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
		var ind bytes.Buffer
		_ = json.Indent(&ind, b, "\t", "  ")
		out = append(out, ind.Bytes())
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		names := make([]string, 0, len(m))
		for n := range m {
			names = append(names, n)
		}
		for round := range 3 {
			rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
			var sb strings.Builder
			sb.WriteString("{")
			for i, n := range names {
				if i > 0 {
					sb.WriteString(", ")
				}
				fmt.Fprintf(&sb, "%q: %s", n, m[n])
			}
			sb.WriteString("}")
			base := sb.String()
			add(base)
			if round > 0 || len(names) == 0 {
				continue
			}
			for _, n := range names {
				without := strings.Replace(base, fmt.Sprintf("%q: %s", n, m[n]), fmt.Sprintf("%q: null", n), 1)
				add(without)
				add(strings.Replace(base, fmt.Sprintf("%q:", n), fmt.Sprintf("%q:", strings.ToUpper(n)), 1))
				add(strings.Replace(base, "{", fmt.Sprintf("{%q: %s, ", n, m[n]), 1)) // duplicates
				for _, o := range sampleKeys(t)[1:] {
					ob, _ := json.Marshal(o)
					var om map[string]json.RawMessage
					_ = json.Unmarshal(ob, &om)
					if v, ok := om[n]; ok {
						add(strings.Replace(base, "{", fmt.Sprintf("{%q: %s, ", n, v), 1))
						add(strings.Replace(base, "}", fmt.Sprintf(", %q: %s}", n, v), 1))
					}
				}
				for _, v := range []string{`"x"`, `1`, `1.5`, `1e3`, `-0`, `01`, `99999999999999999999`, `true`,
					`[]`, `{}`, `["a",1]`, `"\u0041"`, `"\ud83d\ude00"`, `"bad\x01"`, `"2026-13-01T00:00:00Z"`,
					`"2026-12-02T05:04:00+01:00"`, `{"k":{"budget_limit":"x"}}`, `[{"key_hash":1}]`, `-`, `tru`, `"`} {
					add(strings.Replace(base, fmt.Sprintf("%q: %s", n, m[n]), fmt.Sprintf("%q: %s", n, v), 1))
				}
			}
		}
	}
	for _, s := range []string{``, `{`, `}`, `[]`, `"x"`, `null`, `1`, `{}`, ` { } `, `{} x`, `{"token_id":"a",}`,
		`{"token_id":"a" "key_hash":"b"}`, `{"token_id":"a"}}`, `{"unknown":1}`, `{"token_id":"a","unknown":{"x":[1,"]"]}}`,
		`{"metadata":{"a":1} , "tags":[ "x" , "y" ] }`, `{"metadata": 5 , "permissions": "s" }`, `{"metadata":[}`,
		`{"metadata":{"a":}}`, `{"tags":["a",]}`, `{"tags":[,]}`, `{"blocked":truefalse}`, `{"spend":-}`,
		`{"created_at":"2026-12-02T05:04:00Z","created_at":"2026-12-02T05:04:00Z"}`, "{\"token_id\":\"\xff\"}",
		`{"model_rpm_limit":{"a":1,"a":2}}`, `{"previous_hashes":[{"key_hash":"x","valid_until":"nope"}]}`} {
		add(s)
	}
	return out
}

// same decodes doc with the fast path (through json.Unmarshal, and by a
// direct UnmarshalJSON call, which skips encoding/json's validation) and
// with encoding/json alone, into copies of start, and compares.
func same(t testing.TB, start func() Key, doc []byte) {
	t.Helper()
	want := start()
	werr := json.Unmarshal(doc, (*keyJSON)(&want))
	got := start()
	gerr := json.Unmarshal(doc, &got)
	direct := start()
	derr := direct.UnmarshalJSON(doc)
	if (gerr == nil) != (werr == nil) || (derr == nil) != (werr == nil) {
		t.Fatalf("%s\nerrors: encoding/json %v, via Unmarshal %v, direct %v", doc, werr, gerr, derr)
	}
	if werr != nil {
		return
	}
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(direct, want) {
		t.Fatalf("%s\nencoding/json %+v\nfast          %+v\ndirect        %+v", doc, want, got, direct)
	}
}

func TestKeyJSONMatchesEncodingJSON(t *testing.T) {
	zero := func() Key { return Key{} }
	prefilled := func() Key {
		return Key{TokenID: "old", Models: []string{"m"}, Limits: Limits{MaxBudget: ptr[int64](1)},
			ModelRPMLimit: map[string]int64{"old": 1}, Metadata: json.RawMessage(`{"old":1}`)}
	}
	scalars := func() Key { return Key{TokenID: "old", Blocked: true, Spend: 5} }
	ds := docs(t)
	for _, d := range ds {
		same(t, zero, d)
		same(t, prefilled, d)
		same(t, scalars, d)
	}
	t.Logf("%d documents", len(ds))
}

// The documents the backends write must take the fast path (else the
// snapshot builds are ~3x slower again, silently).
func TestKeyJSONFastPathTaken(t *testing.T) {
	for _, k := range sampleKeys(t)[:3] {
		b, _ := json.Marshal(k)
		var ind bytes.Buffer
		_ = json.Indent(&ind, b, "", " ")
		for _, d := range [][]byte{b, ind.Bytes()} {
			var got Key
			if !fastKey(d, &got) {
				t.Errorf("slow path for %s", d)
			}
		}
	}
	jsonb := `{"spend": 0, "team_id": "seed-team-2", "user_id": "seed-user-42", "key_hash": "` + strings.Repeat("0f", 32) +
		`", "key_name": "sk-...d-42", "token_id": "0011", "rpm_limit": 60, "created_at": "2026-12-02T05:04:00.000012Z", ` +
		`"created_by": "master_key", "max_budget": 10000000, "updated_at": "2026-12-02T05:04:00.000012Z", "updated_by": "master_key", ` +
		`"metadata": {"env": "bench"}, "models": ["gpt-4o-mini"], "budget_duration": "30d", "budget_reset_at": "2027-01-01T05:04:00Z"}`
	var k Key
	if !fastKey([]byte(jsonb), &k) {
		t.Errorf("slow path for jsonb output %s", jsonb)
	}
}

func FuzzKeyJSON(f *testing.F) {
	for _, d := range docs(f) {
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		same(t, func() Key { return Key{} }, doc)
		same(t, func() Key { return Key{Models: []string{"m"}, TokenID: "x"} }, doc)
	})
}

func BenchmarkKeyJSON(b *testing.B) {
	doc, _ := json.Marshal(sampleKeys(b)[2])
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			var k Key
			if err := json.Unmarshal(doc, &k); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("fast-direct", func(b *testing.B) {
		for b.Loop() {
			var k Key
			if err := k.UnmarshalJSON(doc); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			var k Key
			if err := json.Unmarshal(doc, (*keyJSON)(&k)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestPlainLen(t *testing.T) {
	for in, want := range map[string]int{"": 0, `abc"`: 3, `a\b`: 1, "a\x1fb": 1, "a\x7fb\x80": 3, "h\u00e9": 1, " ~": 2} {
		if got := PlainLen([]byte(in)); got != want {
			t.Errorf("PlainLen(%q) = %d, want %d", in, got, want)
		}
	}
}

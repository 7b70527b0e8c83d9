package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var auditTests = []test{
	{"RoundTrip", testAuditRoundTrip},
	{"NewestFirstWithFilters", testAuditFilters},
}

func testAuditRoundTrip(t *testing.T, s store.Store) {
	want := store.AuditEntry{
		ID:         "audit-1",
		Action:     "regenerated",
		ObjectType: store.KindKey,
		ObjectID:   "tok-1",
		Caller:     "master_key",
		ChangedBy:  "ops@example.com",
		Before:     json.RawMessage(`{"token_id":"tok-1","key_alias":"a","max_budget":1.5}`),
		After:      json.RawMessage(`{"token_id":"tok-1","key_alias":"b","tags":["x"]}`),
		CreatedAt:  t0.In(zone),
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.AppendAudit(ctx, want) })
	got, n, err := s.Read().ListAudit(t.Context(), store.AuditFilter{})
	if err != nil || n != 1 || len(got) != 1 {
		t.Fatalf("ListAudit = %d entries, total %d, %v", len(got), n, err)
	}
	expectEqual(t, "audit entry", want, got[0])
}

func testAuditFilters(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Entry i is created at at(10*i), so at(10*i+5) falls between entries.
	type spec struct{ typ, obj, caller string }
	specs := []spec{
		{"key", "k1", "alice"}, {"key", "k2", "bob"}, {"team", "t1", "alice"}, {"key", "k1", "master_key"},
		{"user", "u1", "alice"}, {"key", "k1", "alice"}, {"team", "t1", "bob"}, {"organization", "o1", "master_key"},
	}
	entry := func(i int) store.AuditEntry {
		sp := specs[i]
		return store.AuditEntry{ID: fmt.Sprintf("e%d", i), Action: "updated", ObjectType: sp.typ, ObjectID: sp.obj,
			Caller: sp.caller, CreatedAt: at(10 * i)}
	}
	// Several transactions, several entries each.
	for start := 0; start < len(specs); start += 3 {
		write(t, s, func(ctx context.Context, tx store.Tx) error {
			for i := start; i < min(start+3, len(specs)); i++ {
				if err := tx.AppendAudit(ctx, entry(i)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	newestFirst := func(match func(i int) bool) []string {
		var out []string
		for i := len(specs) - 1; i >= 0; i-- {
			if match(i) {
				out = append(out, fmt.Sprintf("e%d", i))
			}
		}
		return out
	}
	r := s.Read()
	for _, c := range []struct {
		name  string
		f     store.AuditFilter
		match func(i int) bool
	}{
		{"all", store.AuditFilter{}, func(int) bool { return true }},
		{"object type", store.AuditFilter{ObjectType: "key"}, func(i int) bool { return specs[i].typ == "key" }},
		{"object id", store.AuditFilter{ObjectID: "k1"}, func(i int) bool { return specs[i].obj == "k1" }},
		{"caller", store.AuditFilter{Caller: "alice"}, func(i int) bool { return specs[i].caller == "alice" }},
		{"type and caller", store.AuditFilter{ObjectType: "team", Caller: "bob"},
			func(i int) bool { return specs[i].typ == "team" && specs[i].caller == "bob" }},
		{"since", store.AuditFilter{Since: at(25)}, func(i int) bool { return i >= 3 }},
		{"until", store.AuditFilter{Until: at(45)}, func(i int) bool { return i <= 4 }},
		{"window", store.AuditFilter{Since: at(15), Until: at(55).In(zone)}, func(i int) bool { return i >= 2 && i <= 5 }},
		{"window and object", store.AuditFilter{ObjectID: "k1", Since: at(15), Until: time.Time{}},
			func(i int) bool { return i >= 2 && specs[i].obj == "k1" }},
		{"no match", store.AuditFilter{Caller: "nobody"}, func(int) bool { return false }},
	} {
		want := newestFirst(c.match)
		got, total := pages(t, 2, func(p store.Page) ([]store.AuditEntry, int, error) {
			f := c.f
			f.Page = p
			return r.ListAudit(ctx, f)
		})
		if gotIDs := ids(got, auditID); !slices.Equal(gotIDs, want) || total != len(want) {
			t.Errorf("ListAudit %s = %v total %d, want %v", c.name, gotIDs, total, want)
		}
	}
	// Page 1 of size 3 is the three newest.
	got, total, err := r.ListAudit(ctx, store.AuditFilter{Page: store.Page{Page: 1, Size: 3}})
	if err != nil || total != len(specs) || !slices.Equal(ids(got, auditID), []string{"e7", "e6", "e5"}) {
		t.Errorf("ListAudit page 1 size 3 = %v total %d, %v", ids(got, auditID), total, err)
	}
}

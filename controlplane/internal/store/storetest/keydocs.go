package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// EachKeyDocs is what snapshots of a million keys read: its documents must
// decode to exactly the keys EachKey yields (but for store.KeyDocOmits),
// for every field, for owners and aliases that need escaping in JSON, and
// across the backends' page boundaries.
var keyDocsTests = []test{
	{"MatchEachKey", testKeyDocsMatchEachKey},
	{"CallbackErrorReturned", testKeyDocsError},
}

// keyDocsKeys are n keys covering every field and the strings a document
// must escape.
func keyDocsKeys(n int) []store.Key {
	odd := []string{`quote"d`, `back\slash`, "tab\there", "h\u00e9llo", "<&>", "\u2028", "emoji \U0001F600"}
	keys := make([]store.Key, n)
	for i := range keys {
		id := fmt.Sprintf("kd%05d", i)
		var k store.Key
		switch i % 4 {
		case 0:
			k = fullKey(id)
			k.KeyAlias = "alias-" + id
		case 1:
			k = newKey(id, at(i))
		case 2:
			k = newKey(id, at(i))
			k.UserID, k.TeamID = "user-"+id, "team-"+id
			k.Limits = fullLimits()
			k.Models = []string{}
			k.Metadata = json.RawMessage(`{"a": [1, 2], "b": {"c": null}}`)
		case 3:
			k = newKey(id, at(i))
			o := odd[(i/4)%len(odd)]
			k.UserID, k.TeamID, k.OrganizationID, k.KeyAlias = o+"u", o+"t", o+"o", o+id
			k.KeyName, k.CreatedBy = o, o
			k.Tags = []string{o, ""}
		}
		keys[i] = k
	}
	return keys
}

func testKeyDocsMatchEachKey(t *testing.T, s store.Store) {
	ctx := t.Context()
	// More than a page of either backend's Each* outside snapshots.
	keys := keyDocsKeys(1100)
	for lo := 0; lo < len(keys); lo += 500 {
		write(t, s, func(ctx context.Context, tx store.Tx) error {
			var errs []error
			for _, k := range keys[lo:min(lo+500, len(keys))] {
				errs = append(errs, tx.CreateKey(ctx, k))
			}
			return errors.Join(errs...)
		})
	}
	check := func(where string, r store.Reader) {
		t.Helper()
		want := map[string]store.Key{}
		if err := r.EachKey(ctx, func(k store.Key) error { want[k.TokenID] = withoutDocOmits(t, k); return nil }); err != nil {
			t.Fatalf("%s EachKey: %v", where, err)
		}
		got := map[string]store.Key{}
		batches := 0
		err := r.EachKeyDocs(ctx, func(docs [][]byte) error {
			batches++
			if len(docs) == 0 {
				t.Errorf("%s EachKeyDocs passed an empty batch", where)
			}
			for _, doc := range docs {
				var k store.Key
				if err := store.DecodeJSON(doc, &k); err != nil {
					t.Errorf("%s EachKeyDocs: %v", where, err)
					continue
				}
				if _, dup := got[k.TokenID]; dup {
					t.Errorf("%s EachKeyDocs passed %s twice", where, k.TokenID)
				}
				got[k.TokenID] = withoutDocOmits(t, k)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s EachKeyDocs: %v", where, err)
		}
		if len(got) != len(keys) || len(want) != len(keys) {
			t.Fatalf("%s EachKeyDocs: %d keys, EachKey: %d; want %d", where, len(got), len(want), len(keys))
		}
		for id, w := range want {
			expectEqual(t, where+" EachKeyDocs "+id, w, got[id])
		}
	}
	check("Read()", s.Read())
	write(t, s, func(ctx context.Context, tx store.Tx) error { check("in a transaction:", tx); return nil })
	snapshot(t, s, func(_ int64, r store.Reader) { check("in a snapshot:", r) })
}

// withoutDocOmits is k without the fields EachKeyDocs may leave out.
func withoutDocOmits(t testing.TB, k store.Key) store.Key {
	t.Helper()
	b, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, name := range store.KeyDocOmits {
		delete(m, name)
	}
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	var out store.Key
	if err := store.DecodeJSON(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func testKeyDocsError(t *testing.T, s store.Store) {
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.CreateKey(ctx, newKey("k1", at(1))), tx.CreateKey(ctx, newKey("k2", at(2))))
	})
	stop := errors.New("stop")
	check := func(where string, r store.Reader) {
		t.Helper()
		calls := 0
		err := r.EachKeyDocs(t.Context(), func([][]byte) error { calls++; return fmt.Errorf("caller: %w", stop) })
		if !errors.Is(err, stop) || calls != 1 {
			t.Errorf("%s EachKeyDocs = %v after %d calls, want the callback's error after 1", where, err, calls)
		}
	}
	check("Read()", s.Read())
	snapshot(t, s, func(_ int64, r store.Reader) { check("in a snapshot:", r) })
}

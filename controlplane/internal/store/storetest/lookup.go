package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var lookupTests = []test{
	{"ByHashAndAlias", testLookupByHashAndAlias},
	{"AfterRegenerate", testLookupAfterRegenerate},
	{"AfterDelete", testLookupAfterDelete},
}

func testLookupByHashAndAlias(t *testing.T, s store.Store) {
	ctx := t.Context()
	keys := []store.Key{newKey("a", at(0)), newKey("b", at(1)), newKey("c", at(2))}
	keys[0].KeyAlias, keys[1].KeyAlias = "alias-a", "alias-b"
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for _, k := range keys {
			if err := tx.CreateKey(ctx, k); err != nil {
				return err
			}
		}
		return nil
	})
	for _, k := range keys {
		got, err := s.Read().GetKeyByHash(ctx, k.KeyHash)
		if err != nil || got.TokenID != k.TokenID {
			t.Errorf("GetKeyByHash(hash of %s) = %q, %v", k.TokenID, got.TokenID, err)
		}
		if k.KeyAlias == "" {
			continue
		}
		got, err = s.Read().GetKeyByAlias(ctx, k.KeyAlias)
		if err != nil || got.TokenID != k.TokenID {
			t.Errorf("GetKeyByAlias(%s) = %q, %v", k.KeyAlias, got.TokenID, err)
		}
	}
	// Lookups are exact: no prefix, case or token_id matches.
	for _, h := range []string{keys[0].KeyHash[:32], "A" + keys[0].KeyHash[1:], "a"} {
		_, err := s.Read().GetKeyByHash(ctx, h)
		expectNotFound(t, "GetKeyByHash("+h+")", err)
	}
	for _, alias := range []string{"alias", "ALIAS-A", "a", ""} {
		_, err := s.Read().GetKeyByAlias(ctx, alias)
		expectNotFound(t, "GetKeyByAlias("+alias+")", err)
	}
}

// testLookupAfterRegenerate: GetKeyByHash finds the current secret only;
// the previous hashes kept for a grace period are data, not an index.
func testLookupAfterRegenerate(t *testing.T, s store.Store) {
	ctx := t.Context()
	k := newKey("k", at(0))
	k.KeyAlias = "before"
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, k) })
	old := k.KeyHash
	k2 := k
	k2.KeyHash = hashOf("sk-regenerated")
	k2.KeyAlias = "after"
	k2.PreviousHashes = []store.PreviousHash{{KeyHash: old, ValidUntil: t0.Add(time.Hour)}}
	k2.RotationCount = 1
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateKey(ctx, k2) })

	got, err := s.Read().GetKeyByHash(ctx, k2.KeyHash)
	if err != nil {
		t.Fatalf("GetKeyByHash(new hash): %v", err)
	}
	expectEqual(t, "regenerated key", k2, got)
	_, err = s.Read().GetKeyByHash(ctx, old)
	expectNotFound(t, "GetKeyByHash(previous hash)", err)
	_, err = s.Read().GetKeyByAlias(ctx, "before")
	expectNotFound(t, "GetKeyByAlias(old alias)", err)
	if got, err := s.Read().GetKeyByAlias(ctx, "after"); err != nil || got.TokenID != "k" {
		t.Errorf("GetKeyByAlias(new alias) = %q, %v", got.TokenID, err)
	}
	// The old secret is free for another key.
	other := newKey("other", at(1))
	other.KeyHash = old
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, other) })
}

func testLookupAfterDelete(t *testing.T, s store.Store) {
	ctx := t.Context()
	k := newKey("k", at(0))
	k.KeyAlias = "alias"
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, k) })
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteKey(ctx, "k") })
	_, err := s.Read().GetKeyByHash(ctx, k.KeyHash)
	expectNotFound(t, "GetKeyByHash after delete", err)
	_, err = s.Read().GetKeyByAlias(ctx, "alias")
	expectNotFound(t, "GetKeyByAlias after delete", err)
}

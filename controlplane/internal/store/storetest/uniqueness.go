package storetest

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var uniquenessTests = []test{
	{"KeyHash", testUniqueKeyHash},
	{"KeyAlias", testUniqueKeyAlias},
	{"EmptyAliasIsNotUnique", testEmptyAliasNotUnique},
	{"TokenID", testUniqueTokenID},
	{"UpdateKeyAlias", testUniqueUpdateKeyAlias},
	{"UpdateKeyHash", testUniqueUpdateKeyHash},
	{"PrimaryIDs", testUniquePrimaryIDs},
	{"ModelNameIsShared", testModelNameShared},
	{"SameTransaction", testUniqueSameTransaction},
	{"FreedByDeleteAndUpdate", testUniqueFreed},
	{"FailedTransactionLeavesNothing", testConflictLeavesNothing},
}

// tryWrite runs fn in its own transaction and returns ReadWriteTx's error.
func tryWrite(s store.Store, fn func(ctx context.Context, tx store.Tx) error) error {
	return s.ReadWriteTx(context.Background(), fn)
}

func testUniqueKeyHash(t *testing.T, s store.Store) {
	a := newKey("a", at(0))
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, a) })
	b := newKey("b", at(1))
	b.KeyHash = a.KeyHash
	b.KeyAlias = "b-alias"
	err := tryWrite(s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, b) })
	expectConflict(t, "CreateKey with a taken hash", err, "key")
	if _, err := s.Read().GetKey(t.Context(), "b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the conflicting key was stored: %v", err)
	}
	if _, err := s.Read().GetKeyByAlias(t.Context(), "b-alias"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the conflicting key's alias was stored: %v", err)
	}
}

func testUniqueKeyAlias(t *testing.T, s store.Store) {
	a := newKey("a", at(0))
	a.KeyAlias = "shared"
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, a) })
	b := newKey("b", at(1))
	b.KeyAlias = "shared"
	err := tryWrite(s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, b) })
	expectConflict(t, "CreateKey with a taken alias", err, "key_alias")
	if _, err := s.Read().GetKeyByHash(t.Context(), b.KeyHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the conflicting key was stored: %v", err)
	}
	if got, err := s.Read().GetKeyByAlias(t.Context(), "shared"); err != nil || got.TokenID != "a" {
		t.Errorf("GetKeyByAlias(shared) = %q, %v; want a", got.TokenID, err)
	}
}

func testEmptyAliasNotUnique(t *testing.T, s store.Store) {
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for i, id := range []string{"a", "b", "c"} {
			if err := tx.CreateKey(ctx, newKey(id, at(i))); err != nil {
				return err
			}
		}
		return nil
	})
	// Updating a key that has no alias, to no alias, is no conflict either.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		k := newKey("b", at(1))
		k.Spend = 10
		return tx.UpdateKey(ctx, k)
	})
	if _, n, err := s.Read().ListKeys(t.Context(), store.KeyFilter{}); err != nil || n != 3 {
		t.Fatalf("ListKeys total = %d, %v; want 3", n, err)
	}
}

func testUniqueTokenID(t *testing.T, s store.Store) {
	a := newKey("a", at(0))
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, a) })
	b := newKey("a", at(1))
	b.KeyHash = hashOf("another secret")
	b.KeyAlias = "new-alias"
	err := tryWrite(s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, b) })
	expectConflict(t, "CreateKey with a taken token_id", err, "token_id")
	got, err := s.Read().GetKey(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	expectEqual(t, "the key that held the id", a, got)
	if _, err := s.Read().GetKeyByHash(t.Context(), b.KeyHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the conflicting key's hash was stored: %v", err)
	}
}

func testUniqueUpdateKeyAlias(t *testing.T, s store.Store) {
	a, b := newKey("a", at(0)), newKey("b", at(1))
	a.KeyAlias, b.KeyAlias = "alias-a", "alias-b"
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.CreateKey(ctx, a), tx.CreateKey(ctx, b))
	})
	b2 := b
	b2.KeyAlias = "alias-a"
	err := tryWrite(s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateKey(ctx, b2) })
	expectConflict(t, "UpdateKey to another key's alias", err, "key_alias")
	got, err := s.Read().GetKey(t.Context(), "b")
	if err != nil {
		t.Fatal(err)
	}
	expectEqual(t, "key b after its refused update", b, got)

	// Keeping its own alias is no conflict.
	b3 := b
	b3.Spend = 99
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateKey(ctx, b3) })
}

func testUniqueUpdateKeyHash(t *testing.T, s store.Store) {
	a, b := newKey("a", at(0)), newKey("b", at(1))
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.CreateKey(ctx, a), tx.CreateKey(ctx, b))
	})
	b2 := b
	b2.KeyHash = a.KeyHash
	err := tryWrite(s, func(ctx context.Context, tx store.Tx) error { return tx.UpdateKey(ctx, b2) })
	expectConflict(t, "UpdateKey to another key's hash", err, "key")
	if got, err := s.Read().GetKeyByHash(t.Context(), a.KeyHash); err != nil || got.TokenID != "a" {
		t.Errorf("GetKeyByHash(a's hash) = %q, %v; want a", got.TokenID, err)
	}
	if got, err := s.Read().GetKeyByHash(t.Context(), b.KeyHash); err != nil || got.TokenID != "b" {
		t.Errorf("GetKeyByHash(b's hash) = %q, %v; want b", got.TokenID, err)
	}
}

func testUniquePrimaryIDs(t *testing.T, s store.Store) {
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.CreateTeam(ctx, newTeam("t", at(0))), tx.CreateUser(ctx, newUser("u", at(0))),
			tx.CreateOrganization(ctx, newOrg("o", at(0))), tx.CreateModel(ctx, newModel("m", "gpt")))
	})
	for _, c := range []struct {
		field string
		fn    func(ctx context.Context, tx store.Tx) error
	}{
		{"team_id", func(ctx context.Context, tx store.Tx) error { return tx.CreateTeam(ctx, fullTeam("t")) }},
		{"user_id", func(ctx context.Context, tx store.Tx) error { return tx.CreateUser(ctx, fullUser("u")) }},
		{"organization_id", func(ctx context.Context, tx store.Tx) error { return tx.CreateOrganization(ctx, fullOrg("o")) }},
		{"id", func(ctx context.Context, tx store.Tx) error { return tx.CreateModel(ctx, fullModel("m")) }},
	} {
		expectConflict(t, "duplicate "+c.field, tryWrite(s, c.fn), c.field)
	}
	// The originals are untouched.
	ctx := t.Context()
	r := s.Read()
	if got, err := r.GetTeam(ctx, "t"); err != nil {
		t.Error(err)
	} else {
		expectEqual(t, "team", newTeam("t", at(0)), got)
	}
	if got, err := r.GetUser(ctx, "u"); err != nil {
		t.Error(err)
	} else {
		expectEqual(t, "user", newUser("u", at(0)), got)
	}
	if got, err := r.GetOrganization(ctx, "o"); err != nil {
		t.Error(err)
	} else {
		expectEqual(t, "organization", newOrg("o", at(0)), got)
	}
	if got, err := r.GetModel(ctx, "m"); err != nil {
		t.Error(err)
	} else {
		expectEqual(t, "model", newModel("m", "gpt"), got)
	}
}

func testModelNameShared(t *testing.T, s store.Store) {
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.CreateModel(ctx, newModel("m2", "gpt-4o")), tx.CreateModel(ctx, newModel("m1", "gpt-4o")),
			tx.CreateModel(ctx, newModel("m0", "o1")), tx.CreateModel(ctx, newModel("m3", "claude")))
	})
	models, err := s.Read().ListModels(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// Ordered by model_name, then id.
	if got, want := ids(models, modelID), []string{"m3", "m1", "m2", "m0"}; !slices.Equal(got, want) {
		t.Errorf("ListModels = %v, want %v", got, want)
	}
}

// testUniqueSameTransaction: uniqueness holds against the transaction's own
// writes too.
func testUniqueSameTransaction(t *testing.T, s store.Store) {
	for _, c := range []struct {
		field string
		fn    func(ctx context.Context, tx store.Tx) error
	}{
		{"key", func(ctx context.Context, tx store.Tx) error {
			b := newKey("b", at(1))
			b.KeyHash = newKey("a", at(0)).KeyHash
			return tx.CreateKey(ctx, b)
		}},
		{"key_alias", func(ctx context.Context, tx store.Tx) error {
			b := newKey("b", at(1))
			b.KeyAlias = "a-alias"
			return tx.CreateKey(ctx, b)
		}},
		{"token_id", func(ctx context.Context, tx store.Tx) error {
			b := newKey("a", at(1))
			b.KeyHash = hashOf("other")
			return tx.CreateKey(ctx, b)
		}},
		{"team_id", func(ctx context.Context, tx store.Tx) error {
			return errors.Join(tx.CreateTeam(ctx, newTeam("t", at(0))), tx.CreateTeam(ctx, newTeam("t", at(1))))
		}},
	} {
		err := tryWrite(s, func(ctx context.Context, tx store.Tx) error {
			a := newKey("a", at(0))
			a.KeyAlias = "a-alias"
			if err := tx.CreateKey(ctx, a); err != nil {
				return err
			}
			return c.fn(ctx, tx)
		})
		expectConflict(t, "second write of "+c.field+" in one transaction", err, c.field)
	}
	if _, n, err := s.Read().ListKeys(t.Context(), store.KeyFilter{}); err != nil || n != 0 {
		t.Errorf("ListKeys total = %d, %v after failed transactions; want 0", n, err)
	}
}

// testUniqueFreed: a deleted key's hash and alias, and an alias an update
// gave up, may be taken again.
func testUniqueFreed(t *testing.T, s store.Store) {
	a, b := newKey("a", at(0)), newKey("b", at(1))
	a.KeyAlias, b.KeyAlias = "alias-a", "alias-b"
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return errors.Join(tx.CreateKey(ctx, a), tx.CreateKey(ctx, b))
	})
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		// a gives up its alias; b takes it in the same transaction.
		a2, b2 := a, b
		a2.KeyAlias = ""
		b2.KeyAlias = "alias-a"
		return errors.Join(tx.UpdateKey(ctx, a2), tx.UpdateKey(ctx, b2))
	})
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		// b is deleted; c reuses its hash and alias.
		if err := tx.DeleteKey(ctx, "b"); err != nil {
			return err
		}
		c := newKey("c", at(2))
		c.KeyHash, c.KeyAlias = b.KeyHash, "alias-a"
		return tx.CreateKey(ctx, c)
	})
	ctx := t.Context()
	if got, err := s.Read().GetKeyByAlias(ctx, "alias-a"); err != nil || got.TokenID != "c" {
		t.Errorf("GetKeyByAlias(alias-a) = %q, %v; want c", got.TokenID, err)
	}
	if got, err := s.Read().GetKeyByHash(ctx, b.KeyHash); err != nil || got.TokenID != "c" {
		t.Errorf("GetKeyByHash(b's old hash) = %q, %v; want c", got.TokenID, err)
	}
	_, err := s.Read().GetKeyByAlias(ctx, "alias-b")
	expectNotFound(t, "GetKeyByAlias(alias-b)", err)
}

// testConflictLeavesNothing: when a conflict fails the transaction, its
// earlier writes are gone and it gets no revision.
func testConflictLeavesNothing(t *testing.T, s store.Store) {
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey("a", at(0))) })
	waitHead(t, s, 1)
	err := tryWrite(s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateTeam(ctx, newTeam("t", at(1))); err != nil {
			return err
		}
		if err := tx.CreateUser(ctx, newUser("u", at(1))); err != nil {
			return err
		}
		k := newKey("b", at(1))
		if err := tx.CreateKey(ctx, k); err != nil {
			return err
		}
		dup := newKey("a", at(2))
		dup.KeyHash = hashOf("other")
		return tx.CreateKey(ctx, dup)
	})
	expectConflict(t, "the failing transaction", err, "token_id")
	ctx := t.Context()
	r := s.Read()
	_, err = r.GetTeam(ctx, "t")
	expectNotFound(t, "team of the failed transaction", err)
	_, err = r.GetUser(ctx, "u")
	expectNotFound(t, "user of the failed transaction", err)
	_, err = r.GetKey(ctx, "b")
	expectNotFound(t, "key of the failed transaction", err)

	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey("c", at(3))) })
	expectChanges(t, changeSet(t, s, 2), "key/c/put")
}

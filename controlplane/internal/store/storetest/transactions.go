package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var txTests = []test{
	{"CallbackErrorRollsBackEverything", testRollbackEverything},
	{"CallbackErrorReturnedUnchanged", testErrorReturnedUnchanged},
	{"UncommittedWritesInvisible", testUncommittedInvisible},
	{"LaterWriteOfSameObjectWins", testLaterWriteWins},
}

// callerError is an error type of the caller's own, which must come back
// from ReadWriteTx as it was returned.
type callerError struct{ reason string }

func (e *callerError) Error() string { return "refused: " + e.reason }

// state is everything a store holds, read through Read.
type state struct {
	keys     []store.Key
	teams    []store.Team
	users    []store.User
	orgs     []store.Organization
	models   []store.Model
	settings store.Settings
	audit    []store.AuditEntry
}

func readState(t testing.TB, r store.Reader) state {
	t.Helper()
	ctx := context.Background()
	var st state
	all := store.Page{Size: store.MaxPageSize}
	var errs [7]error
	st.keys, _, errs[0] = r.ListKeys(ctx, store.KeyFilter{Page: all})
	st.teams, _, errs[1] = r.ListTeams(ctx, store.TeamFilter{Page: all})
	st.users, _, errs[2] = r.ListUsers(ctx, store.UserFilter{Page: all})
	st.orgs, _, errs[3] = r.ListOrganizations(ctx, all)
	st.models, errs[4] = r.ListModels(ctx)
	st.settings, errs[5] = r.GetSettings(ctx)
	st.audit, _, errs[6] = r.ListAudit(ctx, store.AuditFilter{Page: all})
	if err := errors.Join(errs[:]...); err != nil {
		t.Fatalf("reading the store: %v", err)
	}
	return st
}

func expectState(t testing.TB, what string, want, got state) {
	t.Helper()
	expectEqual(t, what+": keys", want.keys, got.keys)
	expectEqual(t, what+": teams", want.teams, got.teams)
	expectEqual(t, what+": users", want.users, got.users)
	expectEqual(t, what+": organizations", want.orgs, got.orgs)
	expectEqual(t, what+": models", want.models, got.models)
	expectEqual(t, what+": settings", want.settings, got.settings)
	expectEqual(t, what+": audit", want.audit, got.audit)
}

// seed writes one of everything, with references between them, as
// revision 1.
func seed(t testing.TB, s store.Store) {
	t.Helper()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		org := newOrg("o", at(0))
		org.Members = []store.OrgMember{{UserID: "u", Role: "org_admin"}}
		team := newTeam("t", at(0))
		team.OrganizationID = "o"
		team.Members = []store.TeamMember{{UserID: "u", Role: store.TeamRoleAdmin}}
		k := newKey("k", at(0))
		k.UserID, k.TeamID, k.OrganizationID, k.KeyAlias = "u", "t", "o", "alias-k"
		sa := newKey("sa", at(1))
		sa.TeamID, sa.ServiceAccount = "t", true
		return errors.Join(tx.CreateOrganization(ctx, org), tx.CreateTeam(ctx, team), tx.CreateUser(ctx, newUser("u", at(0))),
			tx.CreateKey(ctx, k), tx.CreateKey(ctx, sa), tx.CreateModel(ctx, newModel("m", "gpt")),
			tx.PutSettings(ctx, fullSettings()),
			tx.AppendAudit(ctx, store.AuditEntry{ID: "a1", Action: "created", ObjectType: "key", ObjectID: "k",
				Caller: "master_key", CreatedAt: at(0)}))
	})
	waitHead(t, s, 1)
}

// testRollbackEverything: a callback that wrote to every kind of object,
// cascades included, and then failed leaves the store as it was, with no
// revision and no audit row.
func testRollbackEverything(t *testing.T, s store.Store) {
	seed(t, s)
	before := readState(t, s.Read())
	refused := errors.New("refused by the caller")
	err := s.ReadWriteTx(t.Context(), func(ctx context.Context, tx store.Tx) error {
		k := newKey("k", at(0))
		k.Spend, k.Blocked = 100, true
		if err := errors.Join(
			tx.UpdateKey(ctx, k),
			tx.CreateKey(ctx, newKey("new", at(5))),
			tx.UpdateModel(ctx, newModel("m", "other")),
			tx.CreateModel(ctx, newModel("m2", "gpt")),
			tx.CreateTeam(ctx, newTeam("t2", at(5))),
			tx.UpdateUser(ctx, fullUser("u")),
			tx.CreateUser(ctx, newUser("u2", at(5))),
			tx.CreateOrganization(ctx, newOrg("o2", at(5))),
			tx.PutSettings(ctx, store.Settings{GeneralSettings: json.RawMessage(`{"changed":true}`), UpdatedAt: at(5)}),
			tx.AppendAudit(ctx, store.AuditEntry{ID: "a2", Action: "updated", ObjectType: "key", ObjectID: "k",
				Caller: "master_key", CreatedAt: at(5)}),
			tx.DeleteOrganization(ctx, "o"),
			tx.DeleteUser(ctx, "u"),
			tx.DeleteTeam(ctx, "t"),
			tx.DeleteModel(ctx, "m2"),
		); err != nil {
			return fmt.Errorf("setting up the rollback: %w", err)
		}
		return refused
	})
	if !errors.Is(err, refused) {
		t.Fatalf("ReadWriteTx = %v, want the callback's error", err)
	}
	expectState(t, "after a rolled back transaction", before, readState(t, s.Read()))

	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteModel(ctx, "m") })
	expectChanges(t, changeSet(t, s, 2), "model/m/delete")
}

func testErrorReturnedUnchanged(t *testing.T, s store.Store) {
	ctx := t.Context()
	mine := &callerError{reason: "budget"}
	err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateKey(ctx, newKey("k", at(0))); err != nil {
			return err
		}
		return fmt.Errorf("wrapped by the caller: %w", mine)
	})
	var got *callerError
	if !errors.As(err, &got) || got != mine {
		t.Errorf("ReadWriteTx = %v (%T), want the callback's error", err, err)
	}
	if err == nil || err.Error() != "wrapped by the caller: refused: budget" {
		t.Errorf("ReadWriteTx error text = %v, want the callback's error unchanged", err)
	}

	// A store error the callback passes on stays recognisable.
	err = s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		_, err := tx.GetTeam(ctx, "missing")
		return fmt.Errorf("team check: %w", err)
	})
	expectNotFound(t, "ReadWriteTx returning a wrapped GetTeam error", err)

	// An error from a read-only callback is returned too.
	plain := errors.New("plain")
	if err := s.ReadWriteTx(ctx, func(context.Context, store.Tx) error { return plain }); !errors.Is(err, plain) {
		t.Errorf("ReadWriteTx = %v, want %v", err, plain)
	}
	_, err = s.Read().GetKey(ctx, "k")
	expectNotFound(t, "key written by a failed transaction", err)
}

// testUncommittedInvisible: until the callback returns, its writes are not
// visible outside the transaction.
func testUncommittedInvisible(t *testing.T, s store.Store) {
	ctx := t.Context()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateKey(ctx, newKey("k", at(0))); err != nil {
			return err
		}
		if err := tx.CreateTeam(ctx, newTeam("t", at(0))); err != nil {
			return err
		}
		// Read from another goroutine, as another request would: a reader
		// must not wait for the writer.
		type result struct {
			errKey, errList error
			teams           int
		}
		done := make(chan result, 1)
		go func() {
			var res result
			_, res.errKey = s.Read().GetKey(context.Background(), "k")
			_, res.teams, res.errList = s.Read().ListTeams(context.Background(), store.TeamFilter{})
			done <- res
		}()
		select {
		case res := <-done:
			expectNotFound(t, "uncommitted key read outside its transaction", res.errKey)
			if res.errList != nil || res.teams != 0 {
				t.Errorf("ListTeams outside the transaction = total %d, %v; want 0", res.teams, res.errList)
			}
		case <-time.After(wait):
			t.Errorf("Read blocked for %v while a write transaction was open", wait)
		}
		return nil
	})
	if _, err := s.Read().GetKey(ctx, "k"); err != nil {
		t.Errorf("GetKey after commit: %v", err)
	}
}

// testLaterWriteWins: within one transaction, later writes of an object
// replace earlier ones, and the change log carries the final state.
func testLaterWriteWins(t *testing.T, s store.Store) {
	ctx := t.Context()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		k := newKey("k", at(0))
		if err := tx.CreateKey(ctx, k); err != nil {
			return err
		}
		k.Spend = 1
		if err := tx.UpdateKey(ctx, k); err != nil {
			return err
		}
		k.Spend = 2
		if err := tx.UpdateKey(ctx, k); err != nil {
			return err
		}
		// Created and deleted in the same transaction.
		if err := tx.CreateTeam(ctx, newTeam("gone", at(0))); err != nil {
			return err
		}
		return tx.DeleteTeam(ctx, "gone")
	})
	got, err := s.Read().GetKey(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	want := newKey("k", at(0))
	want.Spend = 2
	expectEqual(t, "key", want, got)
	_, err = s.Read().GetTeam(ctx, "gone")
	expectNotFound(t, "team created and deleted in one transaction", err)

	// However the change set spells it, replaying it gives the final state.
	cs := changeSet(t, s, 1)
	replayed := replay(t, []store.ChangeSet{cs})
	expectReplayed(t, s.Read(), replayed)
}

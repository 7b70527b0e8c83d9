package postgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/postgres"
)

// These tests pin Postgres-specific behaviour of the Tx (conflicts that do
// not abort, retries, cascades' change records). storetest covers the
// contract shared with the embedded backend.

func TestConflictsNameTheFieldAndDoNotAbortTheTransaction(t *testing.T) {
	s := pgtest.NewStore(t)
	a := key("a", base)
	a.KeyAlias = "alias-a"
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, a) })

	cases := []struct {
		name  string
		k     store.Key
		field string
	}{
		{"same hash", store.Key{TokenID: "b", KeyHash: a.KeyHash}, "key"},
		{"same alias", store.Key{TokenID: "b", KeyHash: hash("b"), KeyAlias: "alias-a"}, "key_alias"},
		{"same id", store.Key{TokenID: "a", KeyHash: hash("other")}, "token_id"},
		{"hash wins over alias", store.Key{TokenID: "b", KeyHash: a.KeyHash, KeyAlias: "alias-a"}, "key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			write(t, s, func(ctx context.Context, tx store.Tx) error {
				err := tx.CreateKey(ctx, c.k)
				var ce *store.ConflictError
				if !errors.As(err, &ce) || ce.Field != c.field || !errors.Is(err, store.ErrConflict) {
					t.Fatalf("CreateKey: %v, want conflict on %s", err, c.field)
				}
				// The transaction is still usable after the conflict.
				_, err = tx.GetKey(ctx, "a")
				return err
			})
		})
	}

	b := key("b", base.Add(time.Second))
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, b) })
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		b2 := b
		b2.KeyAlias = "alias-a"
		var ce *store.ConflictError
		if err := tx.UpdateKey(ctx, b2); !errors.As(err, &ce) || ce.Field != "key_alias" {
			t.Fatalf("UpdateKey to a taken alias: %v", err)
		}
		b2.KeyAlias, b2.KeyHash = "", a.KeyHash
		if err := tx.UpdateKey(ctx, b2); !errors.As(err, &ce) || ce.Field != "key" {
			t.Fatalf("UpdateKey to a taken hash: %v", err)
		}
		if err := tx.UpdateKey(ctx, key("missing", base)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("UpdateKey of a missing key: %v", err)
		}
		// Keeping its own alias is no conflict.
		a2 := a
		a2.Blocked = true
		return tx.UpdateKey(ctx, a2)
	})
	got, err := s.Read().GetKeyByAlias(context.Background(), "alias-a")
	if err != nil || !got.Blocked {
		t.Fatalf("GetKeyByAlias = %+v, %v", got, err)
	}
	if _, err := s.Read().GetKeyByAlias(context.Background(), ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetKeyByAlias(\"\"): %v", err)
	}
	// Many keys without alias: empty aliases are not unique values.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for i := range 3 {
			if err := tx.CreateKey(ctx, key(fmt.Sprint("noalias", i), base)); err != nil {
				return err
			}
		}
		return nil
	})
}

func TestCallbackErrorRollsBackAndIsReturnedUnchanged(t *testing.T) {
	s := pgtest.NewStore(t)
	sentinel := errors.New("handler says no")
	err := s.ReadWriteTx(context.Background(), func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateKey(ctx, key("a", base)); err != nil {
			return err
		}
		return sentinel
	})
	if err != sentinel {
		t.Fatalf("ReadWriteTx = %v, want the callback's error itself", err)
	}
	if _, err := s.Read().GetKey(context.Background(), "a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("key of a rolled back transaction: %v", err)
	}
}

func TestTransactionWithoutWritesGetsNoRevision(t *testing.T) {
	s := pgtest.NewStore(t)
	ctx := context.Background()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		_, err := tx.GetKey(ctx, "nothing")
		if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		// Audit rows are not synced: no revision either.
		return tx.AppendAudit(ctx, store.AuditEntry{ID: "a1", Action: "created", ObjectType: "key", CreatedAt: base})
	})
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, key("a", base)) })
	waitHead(t, s, 1)
	time.Sleep(50 * time.Millisecond)
	if head, _ := s.Head(ctx); head != 1 {
		t.Fatalf("head %d after one writing transaction", head)
	}
}

func TestTxIsDeadAfterItsCallback(t *testing.T) {
	s := pgtest.NewStore(t)
	var leaked store.Tx
	write(t, s, func(ctx context.Context, tx store.Tx) error { leaked = tx; return nil })
	if err := leaked.CreateKey(context.Background(), key("a", base)); err == nil {
		t.Fatal("CreateKey on a finished Tx succeeded")
	}
}

// A serialization failure reruns the callback; the interleaving is forced:
// the first attempt reads, a concurrent transaction updates the same key and
// commits, then the first attempt writes.
func TestSerializationFailureRerunsTheCallback(t *testing.T) {
	s := pgtest.NewStore(t)
	ctx := context.Background()
	k := key("a", base)
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, k) })

	var attempts atomic.Int32
	read, committed := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
			n := attempts.Add(1)
			cur, err := tx.GetKey(ctx, "a")
			if err != nil {
				return err
			}
			if n == 1 {
				close(read)
				<-committed
			}
			cur.Spend += 10
			return tx.UpdateKey(ctx, cur)
		})
	}()
	<-read
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		cur, err := tx.GetKey(ctx, "a")
		if err != nil {
			return err
		}
		cur.Spend += 1
		return tx.UpdateKey(ctx, cur)
	})
	close(committed)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if attempts.Load() != 2 {
		t.Errorf("callback ran %d times, want 2", attempts.Load())
	}
	got, err := s.Read().GetKey(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if got.Spend != 11 {
		t.Errorf("spend %d, want 11: an update was lost", got.Spend)
	}
}

// A racing insert of the same alias is reported as a conflict after a retry
// instead of an aborted transaction.
func TestRacingUniqueInsertEndsAsConflict(t *testing.T) {
	s := pgtest.NewStore(t)
	ctx := context.Background()
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, key("a", base)) })
	started, committed := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	var attempts atomic.Int32
	go func() {
		done <- s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
			if attempts.Add(1) == 1 {
				if _, err := tx.GetKey(ctx, "a"); err != nil { // takes the snapshot
					return err
				}
				close(started)
				<-committed
			}
			k := key("b", base)
			k.KeyAlias = "shared"
			return tx.CreateKey(ctx, k)
		})
	}()
	<-started
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		k := key("c", base)
		k.KeyAlias = "shared"
		return tx.CreateKey(ctx, k)
	})
	close(committed)
	err := <-done
	var ce *store.ConflictError
	if !errors.As(err, &ce) || ce.Field != "key_alias" {
		t.Fatalf("racing insert: %v, want a key_alias conflict", err)
	}
	if attempts.Load() != 2 {
		t.Errorf("callback ran %d times, want 2 (the race is seen as a serialization failure)", attempts.Load())
	}
}

func TestCascadesRecordEveryChange(t *testing.T) {
	s := pgtest.NewStore(t)
	ctx := context.Background()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for _, o := range []store.Organization{
			{OrganizationID: "org", OrganizationAlias: "Org", CreatedAt: base,
				Members: []store.OrgMember{{UserID: "alice", Role: "org_admin"}, {UserID: "bob", Role: "internal_user"}}},
		} {
			if err := tx.CreateOrganization(ctx, o); err != nil {
				return err
			}
		}
		for _, u := range []string{"alice", "bob"} {
			if err := tx.CreateUser(ctx, store.User{UserID: u, UserRole: store.RoleInternalUser, CreatedAt: base}); err != nil {
				return err
			}
		}
		for _, tm := range []store.Team{
			{TeamID: "t1", OrganizationID: "org", CreatedAt: base, Members: []store.TeamMember{
				{UserID: "alice", Role: store.TeamRoleAdmin}, {UserID: "bob", Role: store.TeamRoleUser}}},
			{TeamID: "t2", CreatedAt: base.Add(time.Second), Members: []store.TeamMember{{UserID: "alice", Role: store.TeamRoleUser}}},
		} {
			if err := tx.CreateTeam(ctx, tm); err != nil {
				return err
			}
		}
		keys := []store.Key{key("alice-personal", base), key("alice-in-t1", base), key("sa-t1", base), key("bob-in-t2", base)}
		keys[0].UserID = "alice"
		keys[1].UserID, keys[1].TeamID, keys[1].OrganizationID = "alice", "t1", "org"
		keys[2].TeamID, keys[2].ServiceAccount, keys[2].OrganizationID = "t1", true, "org"
		keys[3].UserID, keys[3].TeamID = "bob", "t2"
		for _, k := range keys {
			if err := tx.CreateKey(ctx, k); err != nil {
				return err
			}
		}
		return nil
	})

	lastSet := func(want int64) store.ChangeSet {
		t.Helper()
		waitHead(t, s, want)
		sets, err := s.Changes(ctx, want-1, 1)
		if err != nil || len(sets) != 1 {
			t.Fatalf("Changes: %v, %v", sets, err)
		}
		return sets[0]
	}
	lastSet(1)

	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, "alice") })
	got := changeIDs(lastSet(2))
	want := []string{"user/alice/delete", "key/alice-personal/delete", "key/alice-in-t1/delete",
		"team/t1/put", "team/t2/put", "organization/org/put"}
	if !sameSet(got, want) {
		t.Errorf("DeleteUser changes %v, want %v", got, want)
	}
	r := s.Read()
	if _, err := r.GetKey(ctx, "sa-t1"); err != nil {
		t.Errorf("service-account key after DeleteUser: %v", err)
	}
	if teams, n, err := r.ListTeams(ctx, store.TeamFilter{UserID: "alice"}); err != nil || n != 0 || len(teams) != 0 {
		t.Errorf("teams of a deleted user: %v %d %v", teams, n, err)
	}
	t1, _ := r.GetTeam(ctx, "t1")
	if _, ok := t1.Member("alice"); ok || len(t1.Members) != 1 {
		t.Errorf("t1 members after DeleteUser: %+v", t1.Members)
	}
	org, _ := r.GetOrganization(ctx, "org")
	if len(org.Members) != 1 || org.Members[0].UserID != "bob" {
		t.Errorf("org members after DeleteUser: %+v", org.Members)
	}

	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteOrganization(ctx, "org") })
	got = changeIDs(lastSet(3))
	want = []string{"organization/org/delete", "team/t1/put", "key/sa-t1/put"}
	if !sameSet(got, want) {
		t.Errorf("DeleteOrganization changes %v, want %v", got, want)
	}
	t1, _ = r.GetTeam(ctx, "t1")
	sa, _ := r.GetKey(ctx, "sa-t1")
	if t1.OrganizationID != "" || sa.OrganizationID != "" {
		t.Errorf("organization_id kept: team %q key %q", t1.OrganizationID, sa.OrganizationID)
	}
	if keys, n, _ := r.ListKeys(ctx, store.KeyFilter{OrganizationID: "org"}); n != 0 || len(keys) != 0 {
		t.Errorf("keys still listed under the deleted org: %d", n)
	}
	// The change's post-image is the stored entity.
	for _, c := range lastSet(3).Changes {
		if c.Kind == store.KindKey {
			var k store.Key
			if err := json.Unmarshal(c.Data, &k); err != nil || k.TokenID != "sa-t1" || !k.ServiceAccount || k.OrganizationID != "" {
				t.Errorf("post-image %s: %+v %v", c.Data, k, err)
			}
		}
	}

	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteTeam(ctx, "t1") })
	got = changeIDs(lastSet(4))
	want = []string{"team/t1/delete", "key/sa-t1/delete"}
	if !sameSet(got, want) {
		t.Errorf("DeleteTeam changes %v, want %v", got, want)
	}
	if users, n, _ := r.ListUsers(ctx, store.UserFilter{TeamID: "t1"}); n != 0 || len(users) != 0 {
		t.Errorf("users of a deleted team: %d", n)
	}

	for name, del := range map[string]func(context.Context, store.Tx) error{
		"team":  func(ctx context.Context, tx store.Tx) error { return tx.DeleteTeam(ctx, "t1") },
		"user":  func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, "alice") },
		"org":   func(ctx context.Context, tx store.Tx) error { return tx.DeleteOrganization(ctx, "org") },
		"key":   func(ctx context.Context, tx store.Tx) error { return tx.DeleteKey(ctx, "alice-personal") },
		"model": func(ctx context.Context, tx store.Tx) error { return tx.DeleteModel(ctx, "m") },
	} {
		if err := s.ReadWriteTx(ctx, del); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("delete missing %s: %v", name, err)
		}
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// Timestamps that differ below the microsecond (time.Now in a loop) still
// list in creation order, not id order.
func TestListOrderUsesNanoseconds(t *testing.T) {
	s := pgtest.NewStore(t)
	ctx := context.Background()
	ids := []string{"c", "a", "b", "e", "d"}
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for i, id := range ids {
			k := key(id, base.Add(time.Duration(i)*100*time.Nanosecond))
			k.TeamID = "t"
			if err := tx.CreateKey(ctx, k); err != nil {
				return err
			}
		}
		// Same instant: ties go by id.
		for _, id := range []string{"z2", "z1"} {
			if err := tx.CreateKey(ctx, key(id, base.Add(time.Hour))); err != nil {
				return err
			}
		}
		return nil
	})
	var got []string
	for p := 1; ; p++ {
		keys, total, err := s.Read().ListKeys(ctx, store.KeyFilter{Page: store.Page{Page: p, Size: 2}})
		if err != nil {
			t.Fatal(err)
		}
		if total != 7 {
			t.Fatalf("total %d", total)
		}
		if len(keys) == 0 {
			break
		}
		for _, k := range keys {
			got = append(got, k.TokenID)
		}
	}
	if want := append(slices.Clone(ids), "z1", "z2"); !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	keys, total, err := s.Read().ListKeys(ctx, store.KeyFilter{TeamID: "t", Page: store.Page{Page: 9}})
	if err != nil || total != 5 || len(keys) != 0 {
		t.Errorf("page past the end: %d keys, total %d, %v", len(keys), total, err)
	}
}

func TestAuditNewestFirstWithFilters(t *testing.T) {
	s := pgtest.NewStore(t)
	ctx := context.Background()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for i := range 5 {
			e := store.AuditEntry{ID: fmt.Sprint("e", i), Action: "updated", ObjectType: "key", ObjectID: fmt.Sprint("k", i%2),
				Caller: "master_key", CreatedAt: base.Add(time.Duration(i) * time.Minute)}
			if err := tx.AppendAudit(ctx, e); err != nil {
				return err
			}
		}
		var ce *store.ConflictError
		if err := tx.AppendAudit(ctx, store.AuditEntry{ID: "e0", CreatedAt: base}); !errors.As(err, &ce) || ce.Field != "id" {
			t.Errorf("duplicate audit id: %v", err)
		}
		return nil
	})
	ids := func(f store.AuditFilter) ([]string, int) {
		es, n, err := s.Read().ListAudit(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.ID)
		}
		return out, n
	}
	if got, n := ids(store.AuditFilter{}); n != 5 || !slices.Equal(got, []string{"e4", "e3", "e2", "e1", "e0"}) {
		t.Errorf("all: %v (%d)", got, n)
	}
	if got, n := ids(store.AuditFilter{ObjectID: "k1"}); n != 2 || !slices.Equal(got, []string{"e3", "e1"}) {
		t.Errorf("object k1: %v (%d)", got, n)
	}
	if got, n := ids(store.AuditFilter{Since: base.Add(time.Minute), Until: base.Add(3 * time.Minute)}); n != 2 ||
		!slices.Equal(got, []string{"e2", "e1"}) {
		t.Errorf("[1m, 3m): %v (%d)", got, n)
	}
	if got, n := ids(store.AuditFilter{Caller: "someone", ObjectType: "key"}); n != 0 || len(got) != 0 {
		t.Errorf("other caller: %v (%d)", got, n)
	}
}

func TestSettingsModelsAndChangeData(t *testing.T) {
	s := pgtest.NewStore(t)
	ctx := context.Background()
	if st, err := s.Read().GetSettings(ctx); err != nil || st.GeneralSettings != nil {
		t.Fatalf("settings of an empty store: %+v %v", st, err)
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.PutSettings(ctx, store.Settings{GeneralSettings: json.RawMessage(`{"a":1}`), UpdatedAt: base}); err != nil {
			return err
		}
		for _, m := range []store.Model{{ID: "2", ModelName: "b"}, {ID: "1", ModelName: "b"}, {ID: "3", ModelName: "a"}} {
			if err := tx.CreateModel(ctx, m); err != nil {
				return err
			}
		}
		var ce *store.ConflictError
		if err := tx.CreateModel(ctx, store.Model{ID: "1", ModelName: "z"}); !errors.As(err, &ce) || ce.Field != "id" {
			t.Errorf("duplicate model id: %v", err)
		}
		return tx.PutSettings(ctx, store.Settings{GeneralSettings: json.RawMessage(`{"a":2}`), UpdatedAt: base})
	})
	st, err := s.Read().GetSettings(ctx)
	if err != nil || string(st.GeneralSettings) != `{"a": 2}` && string(st.GeneralSettings) != `{"a":2}` {
		t.Fatalf("settings %s %v", st.GeneralSettings, err)
	}
	models, err := s.Read().ListModels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, m := range models {
		order = append(order, m.ID)
	}
	if !slices.Equal(order, []string{"3", "1", "2"}) {
		t.Errorf("models order %v", order)
	}
	waitHead(t, s, 1)
	sets, err := s.Changes(ctx, 0, 10)
	if err != nil || len(sets) != 1 {
		t.Fatal(sets, err)
	}
	// Settings written twice in one transaction: one change, the last value.
	got := changeIDs(sets[0])
	if !sameSet(got, []string{"settings/" + postgres.SettingsID + "/put", "model/1/put", "model/2/put", "model/3/put"}) {
		t.Errorf("changes %v", got)
	}
	for _, c := range sets[0].Changes {
		if c.Kind == store.KindSettings {
			var st store.Settings
			if err := json.Unmarshal(c.Data, &st); err != nil {
				t.Fatal(err)
			}
			var v struct{ A int }
			if json.Unmarshal(st.GeneralSettings, &v); v.A != 2 {
				t.Errorf("settings change %s", c.Data)
			}
		}
	}
	if sets[0].CommittedAt.IsZero() || time.Since(sets[0].CommittedAt) > time.Minute {
		t.Errorf("committed at %v", sets[0].CommittedAt)
	}
}

// createNumberedKeys creates keys k00000, k00001, ... in one transaction (revision 1).
func createNumberedKeys(t *testing.T, s store.Store, n int) {
	t.Helper()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for i := range n {
			if err := tx.CreateKey(ctx, key(fmt.Sprintf("k%05d", i), base)); err != nil {
				return err
			}
		}
		return nil
	})
	waitHead(t, s, 1)
}

// Each* read in pages; the callback may use the same reader (one
// connection inside a Snapshot) between pages.
func TestEachStreamsInPages(t *testing.T) {
	s := pgtest.NewStore(t)
	ctx := context.Background()
	const n = 2345
	createNumberedKeys(t, s, n)
	seen := map[string]bool{}
	err := s.Snapshot(ctx, func(rev int64, r store.Reader) error {
		if rev != 1 {
			t.Errorf("snapshot revision %d", rev)
		}
		return r.EachKey(ctx, func(k store.Key) error {
			if seen[k.TokenID] {
				t.Fatalf("%s seen twice", k.TokenID)
			}
			seen[k.TokenID] = true
			_, err := r.GetKey(ctx, k.TokenID)
			return err
		})
	})
	if err != nil || len(seen) != n {
		t.Fatalf("EachKey saw %d of %d: %v", len(seen), n, err)
	}
	stop := errors.New("stop")
	calls := 0
	err = s.Read().EachKey(ctx, func(store.Key) error { calls++; return stop })
	if err != stop || calls != 1 {
		t.Errorf("EachKey after an error: %v, %d calls", err, calls)
	}
}

// Inside a Snapshot, EachKeyDocs streams the keys through one query, in
// pages: every key once over several pages; the reader, used from fn,
// answers an error instead of waiting for the stream; after the stream the
// reader works again; an error from fn halfway ends the stream at once and
// leaves the store usable.
func TestSnapshotKeyDocsStream(t *testing.T) {
	s := pgtest.NewStore(t)
	ctx := t.Context()
	const n = 12345 // more than two pages (fetchPage)
	createNumberedKeys(t, s, n)
	err := s.Snapshot(ctx, func(rev int64, r store.Reader) error {
		seen := map[string]bool{}
		batches := 0
		err := r.EachKeyDocs(ctx, func(docs [][]byte) error {
			batches++
			for _, doc := range docs {
				var k store.Key
				if err := store.DecodeJSON(doc, &k); err != nil {
					return err
				}
				if seen[k.TokenID] {
					return fmt.Errorf("%s twice", k.TokenID)
				}
				seen[k.TokenID] = true
			}
			if batches == 2 {
				if _, err := r.GetKey(ctx, "k00001"); err == nil || errors.Is(err, store.ErrNotFound) {
					return fmt.Errorf("GetKey inside EachKeyDocs: %v, want the reader-in-use error", err)
				}
			}
			return nil
		})
		if err != nil || len(seen) != n || batches < 3 {
			return fmt.Errorf("EachKeyDocs: %d keys in %d batches: %v", len(seen), batches, err)
		}
		_, err = r.GetKey(ctx, "k00001")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	calls := 0
	start := time.Now()
	err = s.Snapshot(ctx, func(_ int64, r store.Reader) error {
		return r.EachKeyDocs(ctx, func([][]byte) error {
			if calls++; calls == 2 {
				return stop
			}
			return nil
		})
	})
	if !errors.Is(err, stop) || calls != 2 {
		t.Fatalf("EachKeyDocs with fn failing on the second batch: %v after %d calls", err, calls)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the failed stream took %s to end", took)
	}
	if _, err := s.Read().GetKey(ctx, "k00002"); err != nil {
		t.Fatalf("after a stream ended by an error: %v", err)
	}
}

func TestCanceledContextStaysCanceled(t *testing.T) {
	s := pgtest.NewStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Read().GetKey(ctx, "a"); !errors.Is(err, context.Canceled) {
		t.Errorf("GetKey: %v", err)
	}
	err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, key("a", base)) })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("ReadWriteTx: %v", err)
	}
}

func TestUnreachableServerIsUnavailable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := postgres.Open(ctx, "postgres://postgres@127.0.0.1:1/none?connect_timeout=2")
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Open: %v, want ErrUnavailable", err)
	}
	_, err = postgres.Open(ctx, "postgres://u:secret-password@[::1")
	if err == nil || errors.Is(err, store.ErrUnavailable) || strings.Contains(err.Error(), "secret-password") {
		t.Errorf("Open with a bad URL: %v", err)
	}
}

// A panicking callback rolls back and returns its connection to the pool.
func TestPanickingCallbackDoesNotLeakConnections(t *testing.T) {
	s := pgtest.NewStore(t, postgres.WithMaxConns(2))
	for range 5 {
		func() {
			defer func() { _ = recover() }()
			s.ReadWriteTx(context.Background(), func(ctx context.Context, tx store.Tx) error { //nolint:errcheck
				if err := tx.CreateKey(ctx, key("a", base)); err != nil {
					return err
				}
				panic("handler bug")
			})
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.Read().GetKey(ctx, "a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after panics: %v (want ErrNotFound: rolled back, connections free)", err)
	}
}

// When the server drops every connection, calls fail with ErrUnavailable at
// worst, and the store (pool, sequencer, listener) recovers by itself.
func TestRecoversWhenConnectionsAreKilled(t *testing.T) {
	url := pgtest.NewDatabaseURL(t)
	s := open(t, url, postgres.WithPollInterval(20*time.Millisecond))
	ctx := context.Background()
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, key("before", base)) })
	waitHead(t, s, 1)
	waitFor(t, "leader", s.IsLeader)

	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var killed int
	err = conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&killed)
	if err != nil || killed < 3 {
		t.Fatalf("terminated %d backends: %v", killed, err)
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, key("after", base)) })
		if err == nil {
			break
		}
		if !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("write after the connections died: %v, want ErrUnavailable", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("store did not recover: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitHead(t, s, 2)
}

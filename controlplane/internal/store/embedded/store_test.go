package embedded_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
)

// open opens a store in a fresh directory and closes it when the test ends.
func open(t *testing.T, opts ...embedded.Option) (*embedded.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data", "tollgate.db")
	s, err := embedded.Open(path, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func write(t *testing.T, s store.Store, fn func(ctx context.Context, tx store.Tx) error) {
	t.Helper()
	if err := s.ReadWriteTx(context.Background(), fn); err != nil {
		t.Fatalf("ReadWriteTx: %v", err)
	}
}

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func hash(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

func newKey(id string, i int) store.Key {
	return store.Key{
		TokenID:   id,
		KeyHash:   hash("sk-" + id),
		KeyName:   "sk-..." + id,
		CreatedAt: epoch.Add(time.Duration(i) * time.Millisecond),
		UpdatedAt: epoch,
	}
}

func head(t *testing.T, s store.Store) int64 {
	t.Helper()
	h, err := s.Head(context.Background())
	if err != nil {
		t.Fatalf("Head: %v", err)
	}
	return h
}

func changes(t *testing.T, s store.Store, after int64) []store.ChangeSet {
	t.Helper()
	cs, err := s.Changes(context.Background(), after, 1<<30)
	if err != nil {
		t.Fatalf("Changes: %v", err)
	}
	return cs
}

func TestOpenCreatesPrivateFiles(t *testing.T) {
	_, path := open(t)
	for p, want := range map[string]os.FileMode{filepath.Dir(path): 0o700, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %v, want %v", p, got, want)
		}
	}
}

func TestReopenKeepsDataAndRevisions(t *testing.T) {
	ctx := context.Background()
	s, path := open(t)
	k := newKey("tok-1", 0)
	k.KeyAlias = "alias-1"
	k.UserID = "u1"
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateUser(ctx, store.User{UserID: "u1", UserRole: store.RoleInternalUser, CreatedAt: epoch}); err != nil {
			return err
		}
		return tx.CreateKey(ctx, k)
	})
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.PutSettings(ctx, store.Settings{GeneralSettings: json.RawMessage(`{"a":1}`), UpdatedAt: epoch})
	})
	wantChanges := changes(t, s, 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := embedded.Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	if h := head(t, s2); h != 2 {
		t.Fatalf("head after reopen = %d, want 2", h)
	}
	got, err := s2.Read().GetKeyByHash(ctx, k.KeyHash)
	if err != nil || got.TokenID != k.TokenID || got.UserID != "u1" || !got.CreatedAt.Equal(k.CreatedAt) {
		t.Fatalf("GetKeyByHash after reopen = %+v, %v", got, err)
	}
	if got, err := s2.Read().GetKeyByAlias(ctx, "alias-1"); err != nil || got.TokenID != k.TokenID {
		t.Fatalf("GetKeyByAlias after reopen = %+v, %v", got, err)
	}
	if keys, n, err := s2.Read().ListKeys(ctx, store.KeyFilter{UserID: "u1"}); err != nil || n != 1 || len(keys) != 1 {
		t.Fatalf("ListKeys after reopen = %v, %d, %v", keys, n, err)
	}
	if st, err := s2.Read().GetSettings(ctx); err != nil || string(st.GeneralSettings) != `{"a":1}` {
		t.Fatalf("GetSettings after reopen = %+v, %v", st, err)
	}
	gotChanges := changes(t, s2, 0)
	if len(gotChanges) != len(wantChanges) {
		t.Fatalf("changes after reopen: %d, want %d", len(gotChanges), len(wantChanges))
	}
	for i := range gotChanges {
		a, _ := json.Marshal(gotChanges[i])
		b, _ := json.Marshal(wantChanges[i])
		if string(a) != string(b) {
			t.Errorf("change set %d after reopen:\n got %s\nwant %s", i, a, b)
		}
	}
	write(t, s2, func(ctx context.Context, tx store.Tx) error { return tx.DeleteKey(ctx, k.TokenID) })
	if h := head(t, s2); h != 3 {
		t.Fatalf("head after a write on the reopened store = %d, want 3", h)
	}
}

func TestSecondOpenFailsWithLockError(t *testing.T) {
	_, path := open(t)
	start := time.Now()
	_, err := embedded.Open(path, embedded.WithLockTimeout(200*time.Millisecond))
	if !errors.Is(err, embedded.ErrLocked) || !strings.Contains(err.Error(), "is locked by another process") {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("second Open took %v", d)
	}
}

// TestSecondProcessFailsWithLockError runs the second Open in another
// process, as a second controlplane on the same --data-dir would.
func TestSecondProcessFailsWithLockError(t *testing.T) {
	if path := os.Getenv("EMBEDDED_LOCK_HELPER"); path != "" {
		_, err := embedded.Open(path, embedded.WithLockTimeout(200*time.Millisecond))
		fmt.Println("open error:", err)
		os.Exit(0)
	}
	_, path := open(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestSecondProcessFailsWithLockError$")
	cmd.Env = append(os.Environ(), "EMBEDDED_LOCK_HELPER="+path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "open error: embedded: store "+path+" is locked by another process") {
		t.Fatalf("helper output:\n%s", out)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	s, path := open(t)
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(embedded.BucketMeta).Put(embedded.MetaSchemaVersion, binary.BigEndian.AppendUint64(nil, 99))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, err = embedded.Open(path)
	if !errors.Is(err, embedded.ErrSchemaTooNew) || !strings.Contains(err.Error(), "schema version 99") {
		t.Fatalf("Open of a newer file: %v, want ErrSchemaTooNew", err)
	}
}

func TestOpenRefusesForeignFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tollgate.db")
	if err := os.WriteFile(path, []byte(strings.Repeat("not a bolt file ", 1024)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := embedded.Open(path); err == nil || !strings.Contains(err.Error(), "not a valid Tollgate store") {
		t.Fatalf("Open of a foreign file: %v", err)
	}
}

func TestOpenRefusesForeignBoltFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("outbox")); return err })
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := embedded.Open(path); err == nil || !strings.Contains(err.Error(), "not a Tollgate control-plane store") {
		t.Fatalf("Open of another program's bbolt file: %v", err)
	}
}

func TestOpenMigratesOlderSchema(t *testing.T) {
	ctx := context.Background()
	s, path := open(t)
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey("k1", 0)) })
	s.Close()

	// A future release adds a step; the v1 file must come out of it at the
	// new version with its data and revisions intact.
	ran := 0
	embedded.AddMigrationForTest(t, func(tx *bolt.Tx) error {
		ran++
		_, err := tx.CreateBucket([]byte("v2_bucket"))
		return err
	})
	for i := 0; i < 2; i++ { // the second open finds nothing to do
		s2, err := embedded.Open(path)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		if k, err := s2.Read().GetKey(ctx, "k1"); err != nil || k.TokenID != "k1" {
			t.Fatalf("GetKey after migration = %+v, %v", k, err)
		}
		if h := head(t, s2); h != 1 {
			t.Fatalf("head after migration = %d", h)
		}
		s2.Close()
	}
	if ran != 1 {
		t.Fatalf("migration ran %d times, want 1", ran)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(embedded.BucketMeta).Get(embedded.MetaSchemaVersion)
		if got := binary.BigEndian.Uint64(v); int(got) != embedded.SchemaVersionForTest() {
			t.Errorf("schema version %d, want %d", got, embedded.SchemaVersionForTest())
		}
		if tx.Bucket([]byte("v2_bucket")) == nil {
			t.Error("migration step did not run")
		}
		return nil
	})
}

func TestCallbackErrorRollsBackUnchanged(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	sentinel := &struct{ error }{errors.New("boom")}
	err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateKey(ctx, newKey("k1", 0)); err != nil {
			return err
		}
		return sentinel
	})
	if err != error(sentinel) {
		t.Fatalf("ReadWriteTx returned %v, want the callback's error itself", err)
	}
	if _, err := s.Read().GetKey(ctx, "k1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("key of a rolled-back tx: %v", err)
	}
	if h := head(t, s); h != 0 {
		t.Fatalf("head = %d after a rollback", h)
	}
}

func TestConflictLeavesTransactionUsable(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey("k1", 0)) })
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		dup := newKey("k2", 1)
		dup.KeyHash = hash("sk-k1")
		var ce *store.ConflictError
		if err := tx.CreateKey(ctx, dup); !errors.As(err, &ce) || ce.Field != "key" {
			t.Errorf("duplicate hash: %v", err)
		}
		return tx.CreateKey(ctx, newKey("k2", 1))
	})
	k, err := s.Read().GetKeyByHash(ctx, hash("sk-k2"))
	if err != nil || k.TokenID != "k2" {
		t.Fatalf("k2 = %+v, %v", k, err)
	}
	if k, err := s.Read().GetKeyByHash(ctx, hash("sk-k1")); err != nil || k.TokenID != "k1" {
		t.Fatalf("k1 = %+v, %v (hash index damaged by the failed write?)", k, err)
	}
}

func TestAuditAloneGetsNoRevision(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.AppendAudit(ctx, store.AuditEntry{Action: "created", ObjectType: "key", ObjectID: "k", Caller: "master_key", CreatedAt: epoch})
	})
	if h := head(t, s); h != 0 {
		t.Fatalf("head = %d after an audit-only tx", h)
	}
	es, n, err := s.Read().ListAudit(ctx, store.AuditFilter{})
	if err != nil || n != 1 || len(es) != 1 || es[0].ID == "" {
		t.Fatalf("ListAudit = %+v, %d, %v", es, n, err)
	}
}

func TestChangeSetKeepsLastImage(t *testing.T) {
	s, _ := open(t)
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		k := newKey("k1", 0)
		if err := tx.CreateKey(ctx, k); err != nil {
			return err
		}
		k.KeyAlias = "second"
		if err := tx.UpdateKey(ctx, k); err != nil {
			return err
		}
		return tx.CreateTeam(ctx, store.Team{TeamID: "t1", CreatedAt: epoch})
	})
	cs := changes(t, s, 0)
	if len(cs) != 1 || cs[0].Revision != 1 || len(cs[0].Changes) != 2 {
		t.Fatalf("change sets = %+v", cs)
	}
	var k store.Key
	if err := json.Unmarshal(cs[0].Changes[0].Data, &k); err != nil || k.KeyAlias != "second" {
		t.Fatalf("key image = %s (%v)", cs[0].Changes[0].Data, err)
	}
	if c := cs[0].Changes[1]; c.Kind != store.KindTeam || c.ID != "t1" || c.Op != store.OpPut {
		t.Fatalf("second change = %+v", c)
	}
}

// TestDeleteUserCascade checks the change set of a cascading delete: the
// user's keys go, its service-account keys in the same team stay, and its
// teams and organizations come back as post-images without it.
func TestDeleteUserCascade(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for _, err := range []error{
			tx.CreateUser(ctx, store.User{UserID: "u1", UserRole: store.RoleInternalUser, CreatedAt: epoch}),
			tx.CreateUser(ctx, store.User{UserID: "u2", UserRole: store.RoleInternalUser, CreatedAt: epoch}),
			tx.CreateOrganization(ctx, store.Organization{OrganizationID: "o1", CreatedAt: epoch,
				Members: []store.OrgMember{{UserID: "u1", Role: "org_admin"}, {UserID: "u2", Role: "internal_user"}}}),
			tx.CreateTeam(ctx, store.Team{TeamID: "t1", OrganizationID: "o1", CreatedAt: epoch,
				Members: []store.TeamMember{{UserID: "u1", Role: store.TeamRoleAdmin}}}),
		} {
			if err != nil {
				return err
			}
		}
		personal, inTeam, sa, other := newKey("personal", 1), newKey("in-team", 2), newKey("sa", 3), newKey("other", 4)
		personal.UserID, inTeam.UserID, inTeam.TeamID, other.UserID = "u1", "u1", "t1", "u2"
		sa.TeamID, sa.ServiceAccount = "t1", true
		for _, k := range []store.Key{personal, inTeam, sa, other} {
			if err := tx.CreateKey(ctx, k); err != nil {
				return err
			}
		}
		return nil
	})
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, "u1") })

	cs := changes(t, s, 1)
	if len(cs) != 1 {
		t.Fatalf("change sets = %+v", cs)
	}
	var got []string
	for _, c := range cs[0].Changes {
		got = append(got, c.Kind+"/"+c.ID+"/"+c.Op)
	}
	slices.Sort(got)
	want := []string{"key/in-team/delete", "key/personal/delete", "organization/o1/put", "team/t1/put", "user/u1/delete"}
	if !slices.Equal(got, want) {
		t.Fatalf("changes = %v, want %v", got, want)
	}
	r := s.Read()
	if _, err := r.GetKey(ctx, "sa"); err != nil {
		t.Errorf("service-account key: %v", err)
	}
	if _, err := r.GetKey(ctx, "other"); err != nil {
		t.Errorf("other user's key: %v", err)
	}
	tm, _ := r.GetTeam(ctx, "t1")
	if len(tm.Members) != 0 {
		t.Errorf("team members = %+v", tm.Members)
	}
	o, _ := r.GetOrganization(ctx, "o1")
	if len(o.Members) != 1 || o.Members[0].UserID != "u2" {
		t.Errorf("org members = %+v", o.Members)
	}
	if ks, n, _ := r.ListKeys(ctx, store.KeyFilter{UserID: "u1"}); n != 0 || len(ks) != 0 {
		t.Errorf("u1 still lists %d keys", n)
	}

	// Deleting the organization clears it on the team and its keys.
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		k, err := tx.GetKey(ctx, "sa")
		if err != nil {
			return err
		}
		k.OrganizationID = "o1"
		if err := tx.UpdateKey(ctx, k); err != nil {
			return err
		}
		return tx.DeleteOrganization(ctx, "o1")
	})
	if tm, _ := r.GetTeam(ctx, "t1"); tm.OrganizationID != "" {
		t.Errorf("team organization = %q", tm.OrganizationID)
	}
	if k, _ := r.GetKey(ctx, "sa"); k.OrganizationID != "" {
		t.Errorf("key organization = %q", k.OrganizationID)
	}
	if _, n, _ := r.ListKeys(ctx, store.KeyFilter{OrganizationID: "o1"}); n != 0 {
		t.Errorf("o1 still lists %d keys", n)
	}

	// Deleting the team takes its service-account key.
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteTeam(ctx, "t1") })
	if _, err := r.GetKey(ctx, "sa"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("service-account key after DeleteTeam: %v", err)
	}
	if _, err := r.GetKeyByHash(ctx, hash("sk-sa")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("hash index after DeleteTeam: %v", err)
	}
}

func TestListKeysFiltersAndPages(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for i := 0; i < 25; i++ {
			k := newKey(fmt.Sprintf("k%02d", 24-i), i) // ids against creation order
			k.UserID = []string{"a", "b"}[i%2]
			k.TeamID = []string{"t1", "t2", "t3"}[i%3]
			if i == 7 {
				k.KeyAlias = "seven"
			}
			if err := tx.CreateKey(ctx, k); err != nil {
				return err
			}
		}
		return nil
	})
	r := s.Read()
	ids := func(ks []store.Key) (out []string) {
		for _, k := range ks {
			out = append(out, k.TokenID)
		}
		return out
	}
	ks, n, err := r.ListKeys(ctx, store.KeyFilter{Page: store.Page{Page: 2, Size: 10}})
	if err != nil || n != 25 || !slices.Equal(ids(ks), []string{"k14", "k13", "k12", "k11", "k10", "k09", "k08", "k07", "k06", "k05"}) {
		t.Fatalf("page 2 = %v, %d, %v", ids(ks), n, err)
	}
	ks, n, _ = r.ListKeys(ctx, store.KeyFilter{UserID: "a", TeamID: "t1"}) // i ≡ 0 mod 6
	if n != 5 || !slices.Equal(ids(ks), []string{"k24", "k18", "k12", "k06", "k00"}) {
		t.Fatalf("user a, team t1 = %v, %d", ids(ks), n)
	}
	ks, n, _ = r.ListKeys(ctx, store.KeyFilter{TeamID: "t2", Page: store.Page{Page: 3, Size: 3}})
	if n != 8 || !slices.Equal(ids(ks), []string{"k05", "k02"}) {
		t.Fatalf("team t2 page 3 = %v, %d", ids(ks), n)
	}
	ks, n, _ = r.ListKeys(ctx, store.KeyFilter{KeyAlias: "seven", UserID: "b"})
	if n != 1 || !slices.Equal(ids(ks), []string{"k17"}) {
		t.Fatalf("alias = %v, %d", ids(ks), n)
	}
	if ks, n, _ = r.ListKeys(ctx, store.KeyFilter{KeyAlias: "seven", UserID: "a"}); n != 0 || ks == nil || len(ks) != 0 {
		t.Fatalf("alias with the wrong user = %v, %d", ids(ks), n)
	}
	if ks, n, _ = r.ListKeys(ctx, store.KeyFilter{Page: store.Page{Page: 9}}); n != 25 || ks == nil || len(ks) != 0 {
		t.Fatalf("page past the end = %v, %d", ids(ks), n)
	}
}

func TestListAuditNewestFirst(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for i := 0; i < 10; i++ {
			e := store.AuditEntry{ID: fmt.Sprint("a", i), Action: "created", ObjectType: []string{"key", "team"}[i%2],
				ObjectID: fmt.Sprint("o", i), Caller: "master_key", CreatedAt: epoch.Add(time.Duration(i/2) * time.Second)}
			if err := tx.AppendAudit(ctx, e); err != nil {
				return err
			}
		}
		var ce *store.ConflictError
		if err := tx.AppendAudit(ctx, store.AuditEntry{ID: "a3", CreatedAt: epoch}); !errors.As(err, &ce) || ce.Field != "id" {
			t.Errorf("duplicate audit id: %v", err)
		}
		return nil
	})
	r := s.Read()
	ids := func(es []store.AuditEntry) (out []string) {
		for _, e := range es {
			out = append(out, e.ID)
		}
		return out
	}
	es, n, _ := r.ListAudit(ctx, store.AuditFilter{Page: store.Page{Size: 4}})
	if n != 10 || !slices.Equal(ids(es), []string{"a9", "a8", "a7", "a6"}) {
		t.Fatalf("page 1 = %v, %d", ids(es), n)
	}
	es, n, _ = r.ListAudit(ctx, store.AuditFilter{ObjectType: "team", Since: epoch.Add(time.Second), Until: epoch.Add(4 * time.Second)})
	if n != 3 || !slices.Equal(ids(es), []string{"a7", "a5", "a3"}) {
		t.Fatalf("teams in [1s,4s) = %v, %d", ids(es), n)
	}
}

func TestListModelsOrder(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for _, m := range []store.Model{{ID: "3", ModelName: "b"}, {ID: "2", ModelName: "a"}, {ID: "1", ModelName: "b"}} {
			if err := tx.CreateModel(ctx, m); err != nil {
				return err
			}
		}
		return nil
	})
	ms, err := s.Read().ListModels(ctx)
	if err != nil || len(ms) != 3 || ms[0].ID != "2" || ms[1].ID != "1" || ms[2].ID != "3" {
		t.Fatalf("ListModels = %+v, %v", ms, err)
	}
}

func TestConcurrentWritersGetGaplessRevisions(t *testing.T) {
	s, _ := open(t)
	const writers, each = 8, 25
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				err := s.ReadWriteTx(context.Background(), func(ctx context.Context, tx store.Tx) error {
					return tx.CreateKey(ctx, newKey(id, i))
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	cs := changes(t, s, 0)
	if len(cs) != writers*each {
		t.Fatalf("%d change sets, want %d", len(cs), writers*each)
	}
	seen := map[string]bool{}
	for i, c := range cs {
		if c.Revision != int64(i+1) || len(c.Changes) != 1 {
			t.Fatalf("change set %d = revision %d with %d changes", i, c.Revision, len(c.Changes))
		}
		seen[c.Changes[0].ID] = true
	}
	if len(seen) != writers*each || head(t, s) != writers*each {
		t.Fatalf("%d distinct keys in the log, head %d", len(seen), head(t, s))
	}
}

func TestCompactionKeepsRetention(t *testing.T) {
	ctx := context.Background()
	s, path := open(t, embedded.WithRetention(5))
	for i := 0; i < 12; i++ {
		write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey(fmt.Sprint("k", i), i)) })
	}
	if o, _ := s.Oldest(ctx); o != 8 {
		t.Fatalf("Oldest = %d, want 8", o)
	}
	cs := changes(t, s, 0)
	if len(cs) != 5 || cs[0].Revision != 8 || cs[4].Revision != 12 {
		t.Fatalf("changes after compaction: %d sets from %d", len(cs), cs[0].Revision)
	}
	s.Close()
	s2, err := embedded.Open(path, embedded.WithRetention(5))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if o, _ := s2.Oldest(ctx); o != 8 {
		t.Fatalf("Oldest after reopen = %d, want 8", o)
	}
}

func TestOldestOfEmptyLog(t *testing.T) {
	s, _ := open(t)
	if o, err := s.Oldest(context.Background()); err != nil || o != 1 {
		t.Fatalf("Oldest = %d, %v; want 1", o, err)
	}
}

func TestSubscribe(t *testing.T) {
	s, _ := open(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch := s.Subscribe(ctx)
	select {
	case <-ch:
		t.Fatal("signal before any write")
	default:
	}
	// Many commits while nobody reads: the store never blocks, the
	// subscriber sees one coalesced signal.
	for i := 0; i < 5; i++ {
		write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey(fmt.Sprint("k", i), i)) })
	}
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no signal after writes")
	}
	select {
	case <-ch:
		t.Fatal("signals were not coalesced")
	default:
	}
	// A tx that wrote nothing advances nothing.
	write(t, s, func(ctx context.Context, tx store.Tx) error { return nil })
	select {
	case <-ch:
		t.Fatal("signal for an empty tx")
	case <-time.After(20 * time.Millisecond):
	}
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			if _, ok = <-ch; ok {
				t.Fatal("channel still open after cancel")
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after cancel")
	}

	ch2 := s.Subscribe(context.Background())
	s.Close()
	if _, ok := <-ch2; ok {
		t.Fatal("channel open after Close")
	}
	if _, ok := <-s.Subscribe(context.Background()); ok {
		t.Fatal("Subscribe after Close returned an open channel")
	}
}

func TestSnapshotIsConsistent(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey("k1", 0)) })
	var saved store.Reader
	err := s.Snapshot(ctx, func(rev int64, r store.Reader) error {
		saved = r
		// A write committed while the snapshot is open is not in it.
		write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey("k2", 1)) })
		n := 0
		if err := r.EachKey(ctx, func(store.Key) error { n++; return nil }); err != nil {
			return err
		}
		if rev != 1 || n != 1 {
			t.Errorf("snapshot revision %d with %d keys, want 1 and 1", rev, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := saved.GetKey(ctx, "k1"); err == nil {
		t.Fatal("snapshot reader usable after Snapshot returned")
	}
}

func TestTxUnusableAfterCallback(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	var saved store.Tx
	write(t, s, func(ctx context.Context, tx store.Tx) error { saved = tx; return nil })
	if err := saved.CreateKey(ctx, newKey("k1", 0)); err == nil {
		t.Fatal("CreateKey on a finished tx succeeded")
	}
	if _, err := saved.GetKey(ctx, "k1"); err == nil || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetKey on a finished tx: %v", err)
	}
}

func TestClosedStoreIsUnavailable(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	s.Close()
	if err := s.Ping(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Ping: %v", err)
	}
	if _, err := s.Read().GetKey(ctx, "k"); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("GetKey: %v", err)
	}
	err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error { return nil })
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("ReadWriteTx: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestEachKeyWhileWriting iterates with Read().EachKey across batches while
// the callback writes: batches are separate read transactions, so this must
// neither deadlock nor skip keys that existed throughout.
func TestEachKeyWhileWriting(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	const n = 2500
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for i := 0; i < n; i++ {
			if err := tx.CreateKey(ctx, newKey(fmt.Sprintf("k%05d", i), i)); err != nil {
				return err
			}
		}
		return nil
	})
	seen := 0
	err := s.Read().EachKey(ctx, func(k store.Key) error {
		seen++
		if seen%500 == 0 {
			write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteKey(ctx, k.TokenID) })
		}
		return nil
	})
	if err != nil || seen != n {
		t.Fatalf("EachKey saw %d of %d keys: %v", seen, n, err)
	}
	stop := errors.New("stop")
	if err := s.Read().EachKey(ctx, func(store.Key) error { return stop }); err != stop {
		t.Fatalf("EachKey returned %v, want the callback's error", err)
	}
}

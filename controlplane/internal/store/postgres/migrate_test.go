package postgres_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/pgtest"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/postgres"
)

// Data written at schema version 1 (teams with members in their doc, no
// team_members table) is readable through the Store after migrating to the
// newest version, and the 0002 backfill makes the membership filters work.
func TestMigrateExistingData(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewEmptyDatabaseURL(t)
	if err := postgres.MigrateTo(ctx, url, 1); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	doc := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	team := store.Team{TeamID: "t1", TeamAlias: "one", CreatedAt: base, Members: []store.TeamMember{
		{UserID: "alice", Role: store.TeamRoleAdmin}, {UserID: "bob", Role: store.TeamRoleUser}}}
	empty := store.Team{TeamID: "t2", CreatedAt: base.Add(time.Second)}
	users := []store.User{
		{UserID: "alice", UserRole: store.RoleInternalUser, CreatedAt: base},
		{UserID: "bob", UserRole: store.RoleInternalUser, CreatedAt: base.Add(time.Second)},
	}
	k := key("k1", base)
	k.UserID, k.TeamID = "alice", "t1"
	for _, tm := range []store.Team{team, empty} {
		if _, err := conn.Exec(ctx, "INSERT INTO teams (team_id, created_at, doc) VALUES ($1, $2, $3)",
			tm.TeamID, tm.CreatedAt, doc(tm)); err != nil {
			t.Fatal(err)
		}
	}
	// A doc without "members" at all, as an older writer might have left it.
	if _, err := conn.Exec(ctx, `INSERT INTO teams (team_id, created_at, doc) VALUES ('t3', $1, '{"team_id":"t3","members":null}')`,
		base.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, u := range users {
		if _, err := conn.Exec(ctx, "INSERT INTO users (user_id, user_role, created_at, doc) VALUES ($1, $2, $3, $4)",
			u.UserID, u.UserRole, u.CreatedAt, doc(u)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO keys (token_id, key_hash, user_id, team_id, created_at, doc)
VALUES ($1, $2, $3, $4, $5, $6)`, k.TokenID, k.KeyHash, k.UserID, k.TeamID, k.CreatedAt, doc(k)); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	s := open(t, url) // migrates to the newest version
	r := s.Read()
	got, err := r.GetKeyByHash(ctx, k.KeyHash)
	if err != nil || got.TokenID != "k1" || got.TeamID != "t1" {
		t.Fatalf("key after migration: %+v, %v", got, err)
	}
	teams, n, err := r.ListTeams(ctx, store.TeamFilter{UserID: "bob"})
	if err != nil || n != 1 || teams[0].TeamID != "t1" {
		t.Fatalf("teams of bob after migration: %+v (%d), %v", teams, n, err)
	}
	members, n, err := r.ListUsers(ctx, store.UserFilter{TeamID: "t1"})
	if err != nil || n != 2 || members[0].UserID != "alice" || members[1].UserID != "bob" {
		t.Fatalf("users of t1 after migration: %+v (%d), %v", members, n, err)
	}
	if _, n, err := r.ListTeams(ctx, store.TeamFilter{}); err != nil || n != 3 {
		t.Fatalf("all teams: %d, %v", n, err)
	}
	if _, n, err := r.ListAudit(ctx, store.AuditFilter{}); err != nil || n != 0 {
		t.Fatalf("audit (created by 0003): %d, %v", n, err)
	}
	// And the migrated data takes writes: the cascade uses the backfilled rows.
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteUser(ctx, "alice") })
	t1, err := r.GetTeam(ctx, "t1")
	if err != nil || len(t1.Members) != 1 || t1.Members[0].UserID != "bob" {
		t.Fatalf("t1 after DeleteUser: %+v, %v", t1, err)
	}
	if _, err := r.GetKey(ctx, "k1"); err == nil {
		t.Fatal("alice's key survived DeleteUser")
	}
}

// Replicas starting together migrate a database once, without errors.
func TestConcurrentMigrate(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewEmptyDatabaseURL(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- postgres.Migrate(ctx, url) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n, max int
	if err := conn.QueryRow(ctx, "SELECT count(*), max(version) FROM schema_migrations").Scan(&n, &max); err != nil {
		t.Fatal(err)
	}
	if n != postgres.SchemaVersion() || max != postgres.SchemaVersion() {
		t.Fatalf("schema_migrations has %d rows up to %d, want %d", n, max, postgres.SchemaVersion())
	}
}

// An applied migration whose file changed is refused instead of leaving
// databases that differ under one version number.
func TestMigrateRefusesAnEditedMigration(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabaseURL(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 2"); err != nil {
		t.Fatal(err)
	}
	err = postgres.Migrate(ctx, url)
	if err == nil || !strings.Contains(err.Error(), "0002") {
		t.Fatalf("Migrate over an edited migration: %v", err)
	}
	if err := postgres.MigrateTo(ctx, url, postgres.SchemaVersion()+1); err == nil {
		t.Fatal("MigrateTo an unknown version succeeded")
	}
}

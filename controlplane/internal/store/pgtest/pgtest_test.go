package pgtest

import (
	"context"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store/postgres"
)

func TestMain(m *testing.M) { Main(m) }

func TestNewDatabaseURLIsMigratedIsolatedAndDropped(t *testing.T) {
	ctx := context.Background()
	var names []string
	t.Run("use", func(t *testing.T) {
		for range 2 {
			u := NewDatabaseURL(t)
			pu, err := url.Parse(u)
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, strings.TrimPrefix(pu.Path, "/"))
			conn, err := pgx.Connect(ctx, u)
			if err != nil {
				t.Fatal(err)
			}
			var version, keys int
			if err := conn.QueryRow(ctx, "SELECT max(version) FROM schema_migrations").Scan(&version); err != nil {
				t.Fatal(err)
			}
			if version != postgres.SchemaVersion() {
				t.Errorf("schema version %d, want %d", version, postgres.SchemaVersion())
			}
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM keys").Scan(&keys); err != nil {
				t.Fatal(err)
			}
			if keys != 0 {
				t.Errorf("%d keys in a new database", keys)
			}
			// Isolation: what one test writes, the next database does not have.
			if _, err := conn.Exec(ctx, `INSERT INTO keys (token_id, key_hash, created_at, doc) VALUES ('t', 'h', now(), '{}')`); err != nil {
				t.Fatal(err)
			}
			conn.Close(ctx)
		}
	})
	if len(names) != 2 || names[0] == names[1] {
		t.Fatalf("database names %v", names)
	}
	for _, name := range names {
		var exists bool
		if err := server.admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists {
			t.Errorf("database %s still exists after its test ended", name)
		}
	}
}

func TestNewDatabaseURLParallel(t *testing.T) {
	for i := range 8 {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			_ = i
			s := NewStore(t)
			if err := s.Ping(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestNewEmptyDatabaseURLHasNoSchema(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, NewEmptyDatabaseURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d tables in an empty database", n)
	}
}

// The fallback when no server is configured or running: a cluster of our own.
func TestThrowawayCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Postgres cluster")
	}
	if _, err := findBinDir(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, u, err := startCluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := dialServer(ctx, u)
	if err != nil {
		c.stop()
		t.Fatal(err)
	}
	srv.admin.Close()
	if err := pingURL(ctx, u); err != nil {
		t.Error(err)
	}
	c.stop()
	if _, err := os.Stat(c.dir); !os.IsNotExist(err) {
		t.Errorf("cluster directory %s left behind", c.dir)
	}
	if err := pingURL(ctx, u); err == nil {
		t.Error("server still answers after stop")
	}
}

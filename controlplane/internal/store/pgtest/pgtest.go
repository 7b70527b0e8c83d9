// Package pgtest gives each test a fresh, migrated Postgres database of its
// own, cloned from a template in milliseconds and dropped when the test ends.
//
// # Architecture
//
// The server is found once per test binary: TOLLGATE_TEST_DATABASE_URL if
// set, else a local server at postgres://postgres@127.0.0.1:5432 (trust
// auth), else a throwaway cluster started from the installed Postgres
// binaries. If none works the test is skipped, or fails when CI=true.
//
// The schema is migrated once into a template database named after
// postgres.SchemaFingerprint (a changed migration gets a new template, a stale
// one is never reused); each test then runs CREATE DATABASE ... TEMPLATE.
// Template creation and cloning take an advisory lock, because test binaries
// of several packages run at once and Postgres refuses to clone a template
// that another session is connected to.
//
// # Thread safety
//
// Every function is safe for concurrent use by parallel tests.
//
// # Failure modes
//
// Databases of a test binary that was killed are left behind (named
// tollgate_test_*); a throwaway cluster dies with the binary that started it.
// Use Main in TestMain to stop the throwaway cluster and remove its files.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/postgres"
)

// EnvURL names the environment variable that points the tests at a server.
// The role needs CREATEDB.
const EnvURL = "TOLLGATE_TEST_DATABASE_URL"

const localURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// cloneLockKey serializes template creation and cloning across processes.
const cloneLockKey int64 = 0x746f6c6c636c6f6e // "tollclon"

var (
	serverOnce sync.Once
	server     *serverInfo
	serverErr  error

	templateMu   sync.Mutex
	templateName string // set once built
)

type serverInfo struct {
	url     string        // admin URL: a database we may connect to and CREATE DATABASE from
	admin   *pgxpool.Pool // connections to url
	cluster *cluster      // non-nil when we started the server
}

// NewDatabaseURL returns the URL of a new database holding the current
// schema and no data, dropped when t ends.
func NewDatabaseURL(t testing.TB) string {
	t.Helper()
	srv := serverFor(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tmpl, err := ensureTemplate(ctx, srv)
	if err != nil {
		t.Fatalf("pgtest: template database: %v", err)
	}
	return newDatabase(ctx, t, srv, tmpl)
}

// NewEmptyDatabaseURL returns the URL of a new database without any schema,
// dropped when t ends (for migration tests).
func NewEmptyDatabaseURL(t testing.TB) string {
	t.Helper()
	srv := serverFor(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return newDatabase(ctx, t, srv, "template0")
}

// NewStore opens a postgres.Store on a new database, closed and dropped when
// t ends.
func NewStore(t testing.TB, opts ...postgres.Option) store.Store {
	t.Helper()
	return NewPostgresStore(t, opts...)
}

// NewPostgresStore is NewStore with the concrete type, for tests of
// Postgres-only behaviour.
func NewPostgresStore(t testing.TB, opts ...postgres.Option) *postgres.Store {
	t.Helper()
	u := NewDatabaseURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := postgres.Open(ctx, u, append([]postgres.Option{postgres.WithLogger(Logger())}, opts...)...)
	if err != nil {
		t.Fatalf("pgtest: open store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Logger is the logger stores opened here use: warnings and errors only, so
// that leader elections do not drown test output.
func Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// Main runs the tests and then stops a throwaway cluster, if one was
// started. Use it as TestMain(m) { pgtest.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	shutdown()
	os.Exit(code)
}

func shutdown() {
	if server == nil {
		return
	}
	server.admin.Close()
	if server.cluster != nil {
		server.cluster.stop()
	}
}

// serverFor returns the server, skipping (or failing on CI) when none works.
func serverFor(t testing.TB) *serverInfo {
	t.Helper()
	serverOnce.Do(func() { server, serverErr = findServer() })
	if serverErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pgtest: no Postgres server: %v", serverErr)
		}
		t.Skipf("pgtest: no Postgres server (set %s): %v", EnvURL, serverErr)
	}
	return server
}

func findServer() (*serverInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if u := os.Getenv(EnvURL); u != "" {
		srv, err := dialServer(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", EnvURL, err)
		}
		return srv, nil
	}
	srv, localErr := dialServer(ctx, localURL)
	if localErr == nil {
		return srv, nil
	}
	c, u, err := startCluster(ctx)
	if err != nil {
		return nil, fmt.Errorf("local server: %v; throwaway cluster: %w", localErr, err)
	}
	srv, err = dialServer(ctx, u)
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("throwaway cluster: %w", err)
	}
	srv.cluster = c
	return srv, nil
}

// dialServer checks that u answers and lets us create databases.
func dialServer(ctx context.Context, u string) (*serverInfo, error) {
	if _, err := withDatabase(u, "x"); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(u)
	if err != nil {
		return nil, errors.New("cannot parse the database URL")
	}
	cfg.MaxConns = 4
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(dctx, cfg)
	if err != nil {
		return nil, err
	}
	var canCreate bool
	err = pool.QueryRow(dctx, "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&canCreate)
	if err != nil {
		pool.Close()
		return nil, err
	}
	if !canCreate {
		pool.Close()
		return nil, errors.New("the role may not create databases (needs CREATEDB)")
	}
	return &serverInfo{url: u, admin: pool}, nil
}

// ensureTemplate builds the migrated template database once per schema.
func ensureTemplate(ctx context.Context, srv *serverInfo) (string, error) {
	templateMu.Lock()
	defer templateMu.Unlock()
	if templateName != "" {
		return templateName, nil
	}
	name := "tollgate_tmpl_" + postgres.SchemaFingerprint()[:16]
	err := withCloneLock(ctx, srv, func(conn *pgxpool.Conn) error {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return nil
		}
		// Build under another name and rename when complete: a template
		// that exists is a template that is fully migrated.
		build := name + "_build"
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(build)); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+ident(build)+" TEMPLATE template0"); err != nil {
			return err
		}
		bu, err := withDatabase(srv.url, build)
		if err != nil {
			return err
		}
		if err := postgres.Migrate(ctx, bu); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, "ALTER DATABASE "+ident(build)+" RENAME TO "+ident(name)); err != nil {
			return err
		}
		_, err = conn.Exec(ctx, "ALTER DATABASE "+ident(name)+" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
		return err
	})
	if err != nil {
		return "", err
	}
	templateName = name
	return name, nil
}

// newDatabase clones tmpl into a new database dropped when t ends.
func newDatabase(ctx context.Context, t testing.TB, srv *serverInfo, tmpl string) string {
	t.Helper()
	name := "tollgate_test_" + randomHex(8)
	err := withCloneLock(ctx, srv, func(conn *pgxpool.Conn) error {
		_, err := conn.Exec(ctx, "CREATE DATABASE "+ident(name)+" TEMPLATE "+ident(tmpl))
		return err
	})
	if err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// FORCE ends sessions a test leaked, so they cannot keep the
		// database alive.
		if _, err := srv.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(name)+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	u, err := withDatabase(srv.url, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return u
}

// withCloneLock runs fn on an admin connection holding the clone lock.
func withCloneLock(ctx context.Context, srv *serverInfo, fn func(*pgxpool.Conn) error) error {
	conn, err := srv.admin.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", cloneLockKey); err != nil {
		return err
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", cloneLockKey); err != nil {
			// The lock would outlive this use of the connection.
			conn.Conn().Close(context.WithoutCancel(ctx)) //nolint:errcheck
		}
	}()
	return fn(conn)
}

// withDatabase returns u pointing at database name.
func withDatabase(u, name string) (string, error) {
	pu, err := url.Parse(u)
	if err != nil || (pu.Scheme != "postgres" && pu.Scheme != "postgresql") {
		return "", errors.New("the server must be given as a postgres:// URL")
	}
	pu.Path = "/" + name
	pu.RawPath = ""
	return pu.String(), nil
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return strings.ToLower(hex.EncodeToString(b))
}

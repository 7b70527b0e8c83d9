package postgres

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one numbered SQL file, applied in its own transaction.
type migration struct {
	version  int
	name     string // file name, e.g. "0001_init.sql"
	sql      string
	checksum string
}

var migrations, migrationsFingerprint = loadMigrations()

// migrateLockKey serializes concurrent migrators (replicas starting
// together, tests cloning templates) on one database.
const migrateLockKey int64 = 0x746f6c6c6d696772 // "tollmigr"

const createSchemaMigrations = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     NOT NULL PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)`

func loadMigrations() ([]migration, string) {
	names, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		panic(err)
	}
	sort.Strings(names)
	sum := sha256.New()
	var ms []migration
	for i, p := range names {
		b, err := migrationFiles.ReadFile(p)
		if err != nil {
			panic(err)
		}
		name := path.Base(p)
		prefix, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(prefix)
		if !ok || err != nil || v != i+1 {
			// Numbering is checked at init so that a misnamed file fails every
			// test instead of silently skipping a migration in production.
			panic(fmt.Sprintf("postgres: migration %q: want version %04d", name, i+1))
		}
		c := sha256.Sum256(b)
		ms = append(ms, migration{version: v, name: name, sql: string(b), checksum: hex.EncodeToString(c[:])})
		fmt.Fprintf(sum, "%s %x\n", name, c)
	}
	return ms, hex.EncodeToString(sum.Sum(nil))
}

// SchemaVersion is the version of the newest embedded migration.
func SchemaVersion() int { return len(migrations) }

// SchemaFingerprint is a hash of every embedded migration file. Two binaries
// with the same fingerprint create identical schemas (pgtest names its
// template databases with it).
func SchemaFingerprint() string { return migrationsFingerprint }

// Migrate applies every embedded migration not yet applied to the database.
// It is safe to run from several processes at once.
func Migrate(ctx context.Context, databaseURL string) error {
	return MigrateTo(ctx, databaseURL, SchemaVersion())
}

// MigrateTo applies the embedded migrations up to and including version.
// Tests use it to create data at an older schema before migrating forward.
func MigrateTo(ctx context.Context, databaseURL string, version int) error {
	cfg, err := parseURL(databaseURL)
	if err != nil {
		return err
	}
	return migrate(ctx, cfg.ConnConfig, version)
}

// parseURL parses a database URL without letting it (and the password in
// it) leak into the error.
func parseURL(databaseURL string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, errors.New("postgres: cannot parse the database URL (expected postgres://user:password@host:port/database?options)")
	}
	return cfg, nil
}

func migrate(ctx context.Context, cfg *pgx.ConnConfig, version int) error {
	if version < 0 || version > SchemaVersion() {
		return fmt.Errorf("postgres: no migration %d (newest is %d)", version, SchemaVersion())
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.Copy())
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", classify(ctx, err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, m := range migrations[:version] {
		if err := applyMigration(ctx, conn, m); err != nil {
			return fmt.Errorf("postgres: migration %s: %w", m.name, classify(ctx, err))
		}
	}
	return nil
}

// applyMigration applies m unless it already was, in one transaction that
// holds the migration lock, so that a crash leaves either all of m or none
// of it and concurrent migrators apply it exactly once.
func applyMigration(ctx context.Context, conn *pgx.Conn, m migration) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrateLockKey); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, createSchemaMigrations); err != nil {
			return err
		}
		var checksum string
		err := tx.QueryRow(ctx, "SELECT checksum FROM schema_migrations WHERE version = $1", m.version).Scan(&checksum)
		switch {
		case err == nil:
			if checksum != m.checksum {
				// Editing an applied migration would leave databases that
				// differ while claiming the same version; add a new one.
				return fmt.Errorf("applied with checksum %.12s, the embedded file has %.12s", checksum, m.checksum)
			}
			return nil
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		// No arguments: pgx sends the file with the simple protocol, which
		// allows several statements.
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
			m.version, m.name, m.checksum)
		return err
	})
}

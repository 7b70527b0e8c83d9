// Command seed fills a control plane's store with N virtual keys (and a few
// teams, users and one model) through the store API, in large transactions,
// for the scale benchmark (deploy/bench/scale.sh). The REST API creates
// about a thousand keys a second; this writes a million in about a minute.
//
//	go run ./controlplane/internal/cmd/seed --data-dir ./tollgate-data -n 1000000
//	go run ./controlplane/internal/cmd/seed --database-url postgres://... -n 1000000
//
// Key i's plaintext is <prefix><i> (default sk-seed-0, sk-seed-1, ...), so a
// benchmark can use any seeded key; only its SHA-256 is stored, as with
// every key. Token ids are derived from i too, so the same seed gives the
// same store. Key i belongs to user seed-user-<i mod users> and to that
// user's team seed-team-<(i mod users) mod teams>; every 4th key has a
// budget (10 USD per 30d) and an rpm limit, every 10th is restricted to the
// seeded model and carries metadata. Run it on a fresh store, with the
// control plane stopped (the embedded store file is locked by its process).
//
// Every key batch is one store transaction, hence one change set (one
// revision). A change log made of a few huge change sets is not what a real
// store holds (a million keys created over time are a million small ones),
// and a control plane reads the last ~1000 change sets into its delta ring
// at start. So by default the log is trimmed afterwards to its last change
// set, as the store's own compaction would after enough revisions: the
// embedded store is opened with a retention of 1 while seeding; with
// Postgres the rows of older revisions are deleted from the change log once
// the sequencer has numbered them (-trim-log=false keeps them). Proxies
// that start empty get a snapshot either way. A Postgres database is
// vacuumed and analyzed at the end, as after any bulk load.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/postgres"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
)

type config struct {
	dataDir, dbURL, prefix string
	n, start               int
	teams, users           int
	batch, workers         int
	trim                   bool
	model                  string
	apiBase                string
}

func main() {
	var c config
	flag.StringVar(&c.dataDir, "data-dir", "", "embedded store directory (the control plane's --data-dir)")
	flag.StringVar(&c.dbURL, "database-url", "", "Postgres URL (the control plane's --database-url)")
	flag.IntVar(&c.n, "n", 1_000_000, "keys to create")
	flag.IntVar(&c.start, "start", 0, "index of the first key (to add keys to a seeded store)")
	flag.StringVar(&c.prefix, "prefix", "sk-seed-", "plaintext of key i is <prefix><i>")
	flag.IntVar(&c.teams, "teams", 10, "teams to create (0: keys without team)")
	flag.IntVar(&c.users, "users", 100, "users to create (0: keys without user)")
	flag.IntVar(&c.batch, "batch", 10_000, "keys per transaction")
	flag.IntVar(&c.workers, "workers", 0, "concurrent transactions (default 1 embedded, 4 Postgres)")
	flag.BoolVar(&c.trim, "trim-log", true, "keep only the last change set in the change log (see the package doc)")
	flag.StringVar(&c.model, "model", "gpt-4o-mini", "public name of the one model created (empty: none)")
	flag.StringVar(&c.apiBase, "api-base", "http://127.0.0.1:1/v1", "the model's upstream base URL")
	flag.Parse()
	if (c.dataDir == "") == (c.dbURL == "") {
		fmt.Fprintln(os.Stderr, "seed: give exactly one of --data-dir and --database-url")
		os.Exit(2)
	}
	if c.n < 0 || c.batch < 1 || c.teams < 0 || c.users < 0 {
		fmt.Fprintln(os.Stderr, "seed: bad -n, -batch, -teams or -users")
		os.Exit(2)
	}
	if err := run(context.Background(), c); err != nil {
		fmt.Fprintln(os.Stderr, "seed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config) error {
	start := time.Now()
	var st store.Store
	var err error
	if c.dbURL != "" {
		st, err = postgres.Open(ctx, c.dbURL)
		if c.workers == 0 {
			c.workers = 4
		}
	} else {
		var opts []embedded.Option
		if c.trim {
			opts = append(opts, embedded.WithRetention(1))
		}
		st, err = embedded.Open(filepath.Join(c.dataDir, "tollgate.db"), opts...)
		c.workers = 1 // one writer at a time anyway
	}
	if err != nil {
		return err
	}
	defer st.Close()
	base := time.Now().UTC().Truncate(time.Second)

	if c.start == 0 {
		if err := st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
			return seedEntities(ctx, tx, c, base)
		}); err != nil {
			return fmt.Errorf("teams and users: %w", err)
		}
	}

	// Batches are handed out in order; with several workers they commit in
	// about that order.
	var next atomic.Int64
	next.Store(int64(c.start))
	end := int64(c.start + c.n)
	var done atomic.Int64
	errs := make(chan error, c.workers)
	var wg sync.WaitGroup
	stopProgress := progress(&done, c.n, start)
	for range c.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ks := make([]store.Key, 0, c.batch)
			for {
				lo := next.Add(int64(c.batch)) - int64(c.batch)
				if lo >= end {
					return
				}
				hi := min(lo+int64(c.batch), end)
				ks = ks[:0]
				for i := lo; i < hi; i++ {
					ks = append(ks, seedKey(c, int(i), base))
				}
				err := st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
					for i := range ks {
						if err := tx.CreateKey(ctx, ks[i]); err != nil {
							return fmt.Errorf("key %d: %w", lo+int64(i), err)
						}
					}
					return nil
				})
				if err != nil {
					errs <- err
					next.Store(end) // stop the others
					return
				}
				done.Add(hi - lo)
			}
		}()
	}
	wg.Wait()
	stopProgress()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	// The model comes last: its change set, a small one, is the head, so
	// the log trimmed to its last change set holds no key batch.
	if c.model != "" && c.start == 0 {
		if err := st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
			return tx.CreateModel(ctx, store.Model{
				ID: "seed-model-1", ModelName: c.model, UpstreamModel: "openai/" + c.model, APIBase: c.apiBase,
				APIKey: "os.environ/OPENAI_API_KEY", InputCostPerToken: 150_000, OutputCostPerToken: 600_000,
				CreatedAt: base, UpdatedAt: base,
			})
		}); err != nil {
			return fmt.Errorf("model: %w", err)
		}
	}
	wrote := time.Since(start)
	head, err := st.Head(ctx)
	if err != nil {
		return err
	}
	if pg, ok := st.(*postgres.Store); ok {
		if head, err = waitSequenced(ctx, pg, c.dbURL); err != nil {
			return err
		}
		if c.trim {
			if err := trimPostgresLog(ctx, c.dbURL, head); err != nil {
				return err
			}
		}
		// As after any bulk load: statistics, the visibility map and hint
		// bits, so that the first reads do not pay for them.
		if err := vacuum(ctx, c.dbURL); err != nil {
			return err
		}
	}
	oldest, err := st.Oldest(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("seed: %d keys (%s%d..%s%d), %d teams, %d users in %s (%.0f keys/s); head revision %d, change log from %d\n",
		c.n, c.prefix, c.start, c.prefix, c.start+c.n-1, c.teams, c.users, wrote.Round(time.Millisecond),
		float64(c.n)/wrote.Seconds(), head, oldest)
	return nil
}

// progress prints a line every 10 s while seeding runs.
func progress(done *atomic.Int64, n int, start time.Time) (stop func()) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				d := done.Load()
				fmt.Fprintf(os.Stderr, "seed: %d/%d keys, %.0f keys/s\n", d, n, float64(d)/time.Since(start).Seconds())
			}
		}
	}()
	return func() { close(quit); wg.Wait() }
}

func teamID(i int) string { return "seed-team-" + strconv.Itoa(i) }
func userID(i int) string { return "seed-user-" + strconv.Itoa(i) }

func seedEntities(ctx context.Context, tx store.Tx, c config, now time.Time) error {
	members := make([][]store.TeamMember, c.teams)
	for u := range c.users {
		if c.teams > 0 {
			t := u % c.teams
			role := store.TeamRoleUser
			if len(members[t]) == 0 {
				role = store.TeamRoleAdmin
			}
			members[t] = append(members[t], store.TeamMember{UserID: userID(u), Role: role})
		}
		if err := tx.CreateUser(ctx, store.User{
			UserID: userID(u), UserRole: store.RoleInternalUser, CreatedAt: now, UpdatedAt: now,
		}); err != nil {
			return err
		}
	}
	for t := range c.teams {
		if err := tx.CreateTeam(ctx, store.Team{
			TeamID: teamID(t), TeamAlias: "Seed team " + strconv.Itoa(t), Members: members[t],
			CreatedAt: now, UpdatedAt: now,
		}); err != nil {
			return err
		}
	}
	return nil
}

var metadata = json.RawMessage(`{"env":"bench","owner":"seed"}`)

// seedKey is key i as POST /key/generate by the master key would store it.
func seedKey(c config, i int, base time.Time) store.Key {
	secret := c.prefix + strconv.Itoa(i)
	id := sha256.Sum256([]byte("seed-token-" + secret))
	at := base.Add(time.Duration(i) * time.Microsecond)
	k := store.Key{
		TokenID:   hex.EncodeToString(id[:16]),
		KeyHash:   keys.Hash(secret),
		KeyName:   keys.DisplayName(secret),
		CreatedAt: at,
		UpdatedAt: at,
		CreatedBy: "master_key",
		UpdatedBy: "master_key",
	}
	if c.users > 0 {
		u := i % c.users
		k.UserID = userID(u)
		if c.teams > 0 {
			k.TeamID = teamID(u % c.teams)
		}
	}
	if i%4 == 0 {
		budget, rpm := int64(10_000_000_000), int64(60) // $10 in nano-USD
		reset := base.Add(30 * 24 * time.Hour)
		k.MaxBudget, k.RPMLimit = &budget, &rpm
		k.BudgetDuration, k.BudgetResetAt = "30d", &reset
	}
	if i%10 == 0 && c.model != "" {
		k.Models = []string{c.model}
		k.Metadata = metadata
	}
	return k
}

// waitSequenced waits until the sequencer has numbered every committed
// change (nothing pending) and returns the head.
func waitSequenced(ctx context.Context, st *postgres.Store, url string) (int64, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var pending bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM changes WHERE revision IS NULL)").Scan(&pending); err != nil {
			return 0, err
		}
		if !pending {
			return st.Head(ctx)
		}
		if time.Now().After(deadline) {
			return 0, errors.New("changes still unsequenced after 2 minutes")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// trimPostgresLog deletes the change rows of every revision below head:
// Oldest becomes head, as after compaction. Entity rows are untouched.
func trimPostgresLog(ctx context.Context, url string, head int64) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DELETE FROM changes WHERE revision < $1", head); err != nil {
		return fmt.Errorf("trim change log: %w", err)
	}
	return nil
}

func vacuum(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "VACUUM (ANALYZE)"); err != nil {
		return fmt.Errorf("vacuum: %w", err)
	}
	return nil
}

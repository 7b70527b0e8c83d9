package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/config"
	"github.com/tollgate-gw/tollgate/controlplane/internal/litellmimport"
)

// importLiteLLMMain runs `controlplane import-litellm`: it reads a LiteLLM
// proxy database (and optionally its config file) and writes the equivalent
// Tollgate objects in one transaction. Keys keep their SHA-256 hashes, so
// every LiteLLM key authenticates unchanged. The embedded store is locked by
// a running control plane: stop it before importing into --data-dir.
func importLiteLLMMain(args []string) int {
	var o options
	fs := newFlagSet("controlplane import-litellm", &o)
	from := fs.String("from", "", "LiteLLM's Postgres URL (its DATABASE_URL); read in one read-only transaction")
	dryRun := fs.Bool("dry-run", false, "print what would be created, updated and not supported; write nothing")
	saltKey := fs.String("salt-key", "", "LiteLLM's LITELLM_SALT_KEY (or its master key if it had none), to decrypt models stored in its database")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: controlplane import-litellm --from postgres://... [--config litellm.yaml] [--dry-run] (--database-url URL | --data-dir DIR)")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "controlplane import-litellm:", err)
		return 2
	}
	if *saltKey == "" {
		*saltKey = os.Getenv("LITELLM_SALT_KEY")
	}
	if *from == "" {
		fmt.Fprintln(os.Stderr, "controlplane import-litellm: --from <LiteLLM Postgres URL> is required")
		return 2
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := importLiteLLM(ctx, os.Stdout, o, *from, *saltKey, *dryRun); err != nil {
		fmt.Fprintln(os.Stderr, "controlplane import-litellm:", err)
		return 1
	}
	return 0
}

func importLiteLLM(ctx context.Context, out io.Writer, o options, from, saltKey string, dryRun bool) error {
	var cfg *config.Config
	if o.Config != "" {
		var err error
		if cfg, err = config.Load(o.Config); err != nil {
			return err
		}
		if o.DatabaseURL == "" {
			o.DatabaseURL = cfg.DatabaseURL
		}
	}
	if o.DatabaseURL != "" && o.DatabaseURL == from {
		return errors.New("--database-url is the LiteLLM database: give Tollgate its own database")
	}
	src, err := litellmimport.Read(ctx, from)
	if err != nil {
		return err
	}
	now := time.Now()
	plan := litellmimport.Map(src, litellmimport.Options{Now: now, Config: cfg, SaltKey: saltKey})

	st, err := openStore(ctx, o)
	if err != nil {
		return fmt.Errorf("open the Tollgate store (an embedded store must not be in use by a running control plane): %w", err)
	}
	defer st.Close()
	res, err := litellmimport.Apply(ctx, st, plan, dryRun, now)
	if err != nil {
		return err
	}
	litellmimport.Report(out, src, plan, res, dryRun)
	return nil
}

// Command controlplane runs Tollgate's control plane: the management API over
// gRPC and REST, the store, and the sync service that feeds the data planes.
//
//	controlplane [flags]            run the control plane
//	controlplane migrate [flags]    apply Postgres migrations and exit
//	controlplane import-litellm --from URL [--config FILE] [--dry-run] [flags]
//	                                import a LiteLLM proxy database (see import.go)
//
// Every flag can also be set with an environment variable TOLLGATE_<FLAG>
// (upper case, dashes as underscores); a flag given on the command line wins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/flagenv"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/telemetry"
)

// redactURL hides a password in a URL for logging.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return s
}

// options are the control plane's flags.
type options struct {
	HTTPAddr    string
	GRPCAddr    string
	DatabaseURL string
	DataDir     string
	MasterKey   string
	SyncToken   string
	Config      string
	LogLevel    string
	LogFormat   string
	OTLP        string
	PprofAddr   string
	// CreditUSD is the LiteLLM-side budget one SaaS credit buys.
	CreditUSD float64
	TLSCert   string
	TLSKey    string
	ClientCA  string
}

func (o options) String() string {
	red := func(s string) string {
		if s == "" {
			return ""
		}
		return "(sensitive)"
	}
	return fmt.Sprintf("http-addr=%s grpc-addr=%s database-url=%s data-dir=%s master-key=%s sync-token=%s config=%s tls-cert=%s client-ca=%s log-format=%s otlp-endpoint=%s",
		o.HTTPAddr, o.GRPCAddr, red(o.DatabaseURL), o.DataDir, red(o.MasterKey), red(o.SyncToken), o.Config, o.TLSCert, o.ClientCA, o.LogFormat, redactURL(o.OTLP))
}

func newFlagSet(name string, o *options) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&o.HTTPAddr, "http-addr", "127.0.0.1:8080", "REST API, admin UI and GET /health")
	fs.StringVar(&o.GRPCAddr, "grpc-addr", "127.0.0.1:50051", "gRPC management and sync services")
	fs.StringVar(&o.DatabaseURL, "database-url", "", "Postgres URL; empty means an embedded store under --data-dir (single replica)")
	fs.StringVar(&o.DataDir, "data-dir", "./tollgate-data", "directory of the embedded store")
	fs.StringVar(&o.MasterKey, "master-key", "", "admin credential (sk-...); required")
	fs.StringVar(&o.SyncToken, "sync-token", "", "shared secret data planes present on the sync stream")
	fs.StringVar(&o.Config, "config", "", "LiteLLM-style YAML config applied at start")
	fs.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.OTLP, "otlp-endpoint", "", "OpenTelemetry OTLP/HTTP endpoint for traces (e.g. http://collector:4318); off when empty and OTEL_EXPORTER_OTLP_ENDPOINT is unset")
	fs.StringVar(&o.TLSCert, "tls-cert", "", "PEM certificate for REST and gRPC (TLS when set; reloaded when the file changes)")
	fs.StringVar(&o.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&o.ClientCA, "client-ca", "", "PEM CA bundle: proxies must present a client certificate it signed on the sync stream (mutual TLS)")
	fs.StringVar(&o.PprofAddr, "pprof-addr", "", "serve net/http/pprof on this address (off when empty; bind it to loopback)")
	fs.Float64Var(&o.CreditUSD, "credit-usd", 0.10, "SaaS team API: the team budget (USD) one credit buys; a team's max_budget is credits_allocated × this")
	return fs
}

// parseFlags applies TOLLGATE_* environment variables, then the command line.
func parseFlags(fs *flag.FlagSet, args []string) error { return flagenv.Parse(fs, args) }

func main() {
	args := os.Args[1:]
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	if cmd == "import-litellm" {
		os.Exit(importLiteLLMMain(args))
	}
	var o options
	fs := newFlagSet("controlplane "+cmd, &o)
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(2)
	}
	logger, err := telemetry.NewLogger(os.Stderr, o.LogFormat, o.LogLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(2)
	}
	slog.SetDefault(logger)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch cmd {
	case "run":
		err = run(ctx, o)
	case "migrate":
		err = migrate(ctx, o)
	default:
		err = fmt.Errorf("unknown command %q (want run, migrate or import-litellm)", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(1)
	}
}

// Command dataplane runs a Tollgate proxy: the OpenAI-compatible API in front
// of the configured upstreams, deciding every request from a local replica of
// the control plane's state (kept current over the sync stream and persisted
// in a bbolt cache, so it keeps serving while the control plane is down).
//
// Every flag can also be set with an environment variable TOLLGATE_<FLAG>
// (upper case, dashes as underscores); a flag given on the command line wins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/flagenv"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/certs"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/telemetry"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/limits"
	"github.com/tollgate-gw/tollgate/dataplane/internal/procs"
	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
	"github.com/tollgate-gw/tollgate/dataplane/internal/replica"
	"github.com/tollgate-gw/tollgate/dataplane/internal/saas"
	"github.com/tollgate-gw/tollgate/dataplane/internal/spend"
	"github.com/tollgate-gw/tollgate/dataplane/internal/syncclient"
	saasv1 "github.com/tollgate-gw/tollgate/gen/tollgate/saas/v1"
)

// spendShipTimeout bounds the wait for the control plane to ack the spend
// outbox on SIGTERM.
const spendShipTimeout = 10 * time.Second

// version is stamped by the build (-ldflags "-X main.version=...").
var version = "dev"

type options struct {
	Listen       string
	ControlPlane string
	SyncToken    string
	Cache        string
	ID           string
	LogLevel     string
	LogFormat    string
	OTLPEndpoint string
	PprofAddr    string
	SpendWindow  time.Duration
	SpendSync    time.Duration
	// BudgetWait, RateWait, MaxWaiting: the gate's bounded waits (package
	// limits).
	BudgetWait, RateWait time.Duration
	MaxWaiting           int
	TLSCA                string
	TLSCert              string
	TLSKey               string
	// AdaptiveProcs: run on one P while the load fits on one core (package
	// procs).
	AdaptiveProcs bool
}

func (o options) String() string {
	tok := ""
	if o.SyncToken != "" {
		tok = "(sensitive)"
	}
	return fmt.Sprintf("listen=%s control-plane=%s sync-token=%s cache=%s id=%s log-format=%s otlp-endpoint=%s",
		o.Listen, o.ControlPlane, tok, o.Cache, o.ID, o.LogFormat, redactURL(o.OTLPEndpoint))
}

func main() {
	var o options
	host, _ := os.Hostname()
	fs := flag.NewFlagSet("dataplane", flag.ContinueOnError)
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:4000", "address of the OpenAI-compatible API, health and /metrics")
	fs.StringVar(&o.ControlPlane, "control-plane", "127.0.0.1:50051", "control plane gRPC address")
	fs.StringVar(&o.SyncToken, "sync-token", "", "shared secret presented on the sync stream")
	fs.StringVar(&o.Cache, "cache", "./tollgate-proxy.db", "bbolt cache of the synced state")
	fs.StringVar(&o.ID, "id", host, "stable proxy id (default: hostname)")
	fs.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.OTLPEndpoint, "otlp-endpoint", "", "OpenTelemetry OTLP/HTTP endpoint for traces (e.g. http://collector:4318); off when empty and OTEL_EXPORTER_OTLP_ENDPOINT is unset")
	fs.StringVar(&o.TLSCA, "tls-ca", "", "PEM CA bundle that signed the control plane's certificate: sync over TLS when set")
	fs.StringVar(&o.TLSCert, "tls-cert", "", "PEM client certificate presented to the control plane (mutual TLS); reloaded when the file changes")
	fs.StringVar(&o.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.DurationVar(&o.SpendWindow, "spend-commit-window", spend.DefaultWindow, "where the spend outbox's segment cannot be mapped: how long records gather before one write to its log, which a SIGKILL loses at most (0: write every record at once); through the mapping every record is copied at once")
	fs.DurationVar(&o.SpendSync, "spend-sync-interval", spend.DefaultSyncInterval, "how often the spend log's writes are made durable with fdatasync while records come; a crash of the machine (not of the proxy) loses at most this much spend (0: fdatasync after every write)")
	fs.DurationVar(&o.BudgetWait, "budget-wait", limits.DefaultBudgetWait, "how long a request waits when budget remains but is held by requests in flight or not yet synced, before a retryable 429 budget_held (negative: no wait)")
	fs.DurationVar(&o.RateWait, "rate-limit-wait", limits.DefaultRateWait, "how long a request waits for a rate-limit grant when this proxy's share is on loan to other proxies, before a 429 (negative: no wait)")
	fs.IntVar(&o.MaxWaiting, "max-waiting", limits.DefaultMaxWaiting, "requests that may wait at once for held budget or a grant (beyond it a held request is refused at once)")
	fs.BoolVar(&o.AdaptiveProcs, "adaptive-procs", true, "run the Go scheduler on one P while the proxy's CPU use stays under 0.35 of a core, and on every core once it passes 0.6 or goroutines queue for the P (saves about a third of the CPU per request at modest rates; off when GOMAXPROCS is set)")
	fs.StringVar(&o.PprofAddr, "pprof-addr", "", "serve net/http/pprof on this address (off when empty; bind it to loopback)")
	if err := parseFlags(fs, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "dataplane:", err)
		os.Exit(2)
	}
	logger, err := telemetry.NewLogger(os.Stderr, o.LogFormat, o.LogLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dataplane:", err)
		os.Exit(2)
	}
	slog.SetDefault(logger)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		slog.Error("dataplane failed", "err", err)
		os.Exit(1)
	}
}

// parseFlags applies TOLLGATE_* environment variables, then the command line.
func parseFlags(fs *flag.FlagSet, args []string) error { return flagenv.Parse(fs, args) }

func run(ctx context.Context, o options) error {
	if o.SyncToken == "" && o.TLSCert == "" {
		slog.Warn("no --sync-token and no client certificate: the control plane will refuse this proxy; serving from the cache only")
	}
	slog.Info("starting data plane", "options", o.String(), "version", version)
	if o.PprofAddr != "" {
		servePprof(o.PprofAddr)
	}
	shutdownTracing, err := telemetry.SetupTracing(ctx, telemetry.TracingEndpoint(o.OTLPEndpoint), "tollgate-dataplane", version, slog.Default())
	if err != nil {
		return err
	}
	defer shutdownTracing()
	start := time.Now()
	rep, err := replica.Open(o.Cache, slog.Default())
	if err != nil {
		return fmt.Errorf("open cache: %w", err)
	}
	defer rep.Close()
	if rep.State().Ready() {
		slog.Info("serving from cache", "revision", rep.Revision(), "load", time.Since(start))
	} else {
		slog.Info("no cached state; not ready until the first snapshot arrives")
	}

	// The spend outbox is a file of its own next to the cache (see package
	// spend): spend commits never queue behind a snapshot install.
	window := o.SpendWindow
	if window <= 0 {
		window = -1 // spend.Options: negative commits at once, 0 is the default
	}
	syncEvery := o.SpendSync
	if syncEvery <= 0 {
		syncEvery = -1 // spend.Options: negative syncs every write
	}
	outbox, err := spend.Open(o.Cache+".spendlog", spend.Options{Window: window, SyncInterval: syncEvery,
		Legacy: o.Cache + ".spend", Logger: slog.Default()})
	if err != nil {
		return fmt.Errorf("open spend outbox: %w", err)
	}
	defer outbox.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerOutboxMetrics(reg, outbox)

	var dialOpts []grpc.DialOption
	if o.TLSCA != "" || o.TLSCert != "" {
		host, _, _ := net.SplitHostPort(o.ControlPlane)
		tc, err := certs.ClientConfig(o.TLSCA, o.TLSCert, o.TLSKey, host, slog.Default())
		if err != nil {
			return fmt.Errorf("sync TLS: %w", err)
		}
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	}
	// Rate limits and budget reservations, with shares leased over the
	// sync stream (package limits).
	lim := limits.New(limits.Options{Registry: reg, MembersFile: o.Cache + ".proxies",
		BudgetWait: o.BudgetWait, RateWait: o.RateWait, MaxWaiting: o.MaxWaiting})
	master := &enforce.MasterHash{}
	sc := syncclient.New(rep, syncclient.Options{
		MasterKey:   master,
		DialOptions: dialOpts,
		Addr:        o.ControlPlane,
		Token:       o.SyncToken,
		ProxyID:     o.ID,
		Version:     version,
		Registry:    reg,
		Spend:       outbox,
		Leases:      lim,
	})
	rec := &spend.Recorder{Outbox: outbox, State: rep.State()}
	h := proxy.New(proxy.Options{
		State:    rep.State(),
		Registry: reg,
		Logger:   slog.Default(),
		OnUsage:  rec.Record,
		Gate:     lim,
		// The master key works on the LLM routes (LiteLLM's docs make the
		// first call with it); its calls go to litellm-proxy-budget.
		MasterKey: master,
	})

	// SaaS team API (/api/*): decided from the replica, jobs on the
	// control plane's JobService (package saas).
	jobConn, err := grpc.NewClient(o.ControlPlane, append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer{token: o.SyncToken, secure: len(dialOpts) > 0}),
	}, dialOpts...)...)
	if err != nil {
		return fmt.Errorf("job service client: %w", err)
	}
	defer jobConn.Close()
	saasOpts := saas.Options{
		State:   rep.State(),
		Proxy:   h,
		Jobs:    saasv1.NewJobServiceClient(jobConn),
		ProxyID: o.ID,
		Logger:  slog.Default(),
	}
	api := saas.New(saasOpts)
	groups := saas.NewGroupRouter(saasOpts)

	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", o.Listen, err)
	}
	var gov *procs.Governor
	if o.AdaptiveProcs {
		gov = procs.New(procs.Options{Registry: reg, Logger: slog.Default(), Ready: rep.State().Ready})
	}
	srv := &http.Server{
		Handler:           routes(h, api, groups, gov),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	syncCtx, stopSync := context.WithCancel(context.Background())
	syncDone := make(chan struct{})
	go func() { defer close(syncDone); _ = sc.Run(syncCtx) }()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	govCtx, stopGov := context.WithCancel(context.Background())
	defer stopGov()
	go gov.Run(govCtx)
	slog.Info("data plane listening", "addr", ln.Addr().String())

	select {
	case <-ctx.Done():
	case err := <-errc:
		stopSync()
		<-syncDone
		return err
	}
	slog.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	// Every finished request has handed its spend to the outbox by now.
	// Ship it before leaving: a proxy behind an autoscaler never comes back
	// to ship it later. Bounded, so a control plane that is down does not
	// hold the exit; what is left stays in the outbox file.
	shipCtx, cancelShip := context.WithTimeout(context.Background(), spendShipTimeout)
	sc.FlushSpend()
	if err := outbox.WaitShipped(shipCtx); err != nil {
		st := outbox.Stats()
		slog.Warn("spend not fully shipped before exit; it stays in the outbox for the next start",
			"unacked", st.Unacked, "queued", st.Queued, "err", err)
	} else {
		slog.Info("spend outbox shipped", "last_seq", outbox.Stats().LastSeq)
	}
	cancelShip()
	stopSync()
	<-syncDone
	return nil
}

// routes puts the SaaS team API (/api/*) and GET /health beside the
// OpenAI-compatible handler, and lets a SaaS team's key name a model group
// as the model of a chat completion.
func routes(proxyH, api http.Handler, groups *saas.GroupRouter, gov *procs.Governor) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if gov.Narrow() {
			gov.Observe(time.Now())
		}
		switch {
		case strings.HasPrefix(r.URL.Path, "/api/"):
			api.ServeHTTP(w, r)
		case (r.URL.Path == "/chat/completions" || r.URL.Path == "/v1/chat/completions") && groups.Serve(w, r):
		case r.URL.Path == "/health" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"status":"healthy"}`))
		default:
			proxyH.ServeHTTP(w, r)
		}
	})
}

// bearer sends the sync token on JobService calls.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }

// servePprof serves net/http/pprof on its own listener (never on the proxy's
// address: profiles are for operators, not API clients). It starts before
// the cache is loaded, so that loading can be profiled too.
func servePprof(addr string) {
	pm := http.NewServeMux()
	pm.HandleFunc("/debug/pprof/", pprof.Index)
	pm.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	pm.HandleFunc("/debug/pprof/profile", pprof.Profile)
	pm.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	pm.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() {
		psrv := &http.Server{Addr: addr, Handler: pm, ReadHeaderTimeout: 10 * time.Second}
		if err := psrv.ListenAndServe(); err != nil {
			slog.Error("pprof server", "err", err)
		}
	}()
}

// redactURL hides a password in a URL for logging.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return s
}

// registerOutboxMetrics exposes the spend outbox's depth and age.
func registerOutboxMetrics(reg prometheus.Registerer, outbox *spend.Outbox) {
	gauge := func(name, help string, f func(spend.Stats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(outbox.Stats()) })
	}
	reg.MustRegister(
		gauge("tollgate_spend_outbox_queued", "Spend records waiting for their group commit (lost on a crash).",
			func(st spend.Stats) float64 { return float64(st.Queued) }),
		gauge("tollgate_spend_outbox_unacked", "Spend records committed to the outbox, not yet acked by the control plane.",
			func(st spend.Stats) float64 { return float64(st.Unacked) }),
		gauge("tollgate_spend_outbox_last_seq", "Sequence number of the last committed spend record.",
			func(st spend.Stats) float64 { return float64(st.LastSeq) }),
		gauge("tollgate_spend_outbox_oldest_unacked_age_seconds", "Seconds since the oldest spend record not yet acked by the control plane was committed (0 when none).",
			func(st spend.Stats) float64 {
				if st.OldestUnacked.IsZero() {
					return 0
				}
				return time.Since(st.OldestUnacked).Seconds()
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tollgate_spend_outbox_committed_total", Help: "Spend records committed to the outbox since start."},
			func() float64 { return float64(outbox.Stats().Committed) }),
	)
}

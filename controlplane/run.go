package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"path/filepath"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/tollgate-gw/tollgate/controlplane/internal/api"
	"github.com/tollgate-gw/tollgate/controlplane/internal/config"
	"github.com/tollgate-gw/tollgate/controlplane/internal/coord"
	"github.com/tollgate-gw/tollgate/controlplane/internal/coord/pgcoord"
	"github.com/tollgate-gw/tollgate/controlplane/internal/events"
	"github.com/tollgate-gw/tollgate/controlplane/internal/jobs"
	"github.com/tollgate-gw/tollgate/controlplane/internal/monitor"
	"github.com/tollgate-gw/tollgate/controlplane/internal/openapi"
	"github.com/tollgate-gw/tollgate/controlplane/internal/saasapi"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/metered"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/postgres"
	"github.com/tollgate-gw/tollgate/controlplane/internal/syncserver"
	"github.com/tollgate-gw/tollgate/controlplane/internal/ui"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/certs"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/duration"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/telemetry"
	saasv1 "github.com/tollgate-gw/tollgate/gen/tollgate/saas/v1"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

func migrate(ctx context.Context, o options) error {
	if o.DatabaseURL == "" {
		return errors.New("migrate needs --database-url (the embedded store migrates itself at start)")
	}
	if err := postgres.Migrate(ctx, o.DatabaseURL); err != nil {
		return err
	}
	slog.Info("migrations applied")
	return nil
}

func openStore(ctx context.Context, o options) (store.Store, error) {
	if o.DatabaseURL != "" {
		return postgres.Open(ctx, o.DatabaseURL)
	}
	return embedded.Open(filepath.Join(o.DataDir, "tollgate.db"))
}

func run(ctx context.Context, o options) error {
	var cfg *config.Config
	if o.Config != "" {
		var err error
		if cfg, err = config.Load(o.Config); err != nil {
			return err
		}
		for _, w := range cfg.Warnings {
			slog.Warn("config", "warning", w)
		}
		if o.MasterKey == "" {
			o.MasterKey = cfg.MasterKey
		}
		if o.DatabaseURL == "" {
			o.DatabaseURL = cfg.DatabaseURL
		}
	}
	if o.MasterKey == "" {
		return errors.New("a master key is required: pass --master-key sk-... or set TOLLGATE_MASTER_KEY")
	}
	if keys.Validate(o.MasterKey) != nil {
		return errors.New("the master key must start with sk- and be 4 to 256 printable characters")
	}
	slog.Info("starting control plane", "options", o.String())
	shutdownTracing, err := telemetry.SetupTracing(ctx, telemetry.TracingEndpoint(o.OTLP), "tollgate-controlplane", "", slog.Default())
	if err != nil {
		return err
	}
	defer shutdownTracing()

	// One registry for every control-plane metric, served on GET /metrics
	// of --http-addr (see README "Observability").
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(events.Collectors()...)
	mon := monitor.New(reg, slog.Default())

	raw, err := openStore(ctx, o)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer raw.Close()
	st := metered.Wrap(raw, reg)
	if cfg != nil {
		if err := applyConfig(ctx, st, cfg); err != nil {
			return fmt.Errorf("apply config %s: %w", o.Config, err)
		}
	}
	events.Run(ctx, st, o.MasterKey)                // lifecycle event webhook and auto_rotate (controlplane/internal/events)
	jobs.StartBudgetResets(ctx, st, slog.Default()) // spend reset exactly at budget_reset_at (controlplane/internal/jobs)

	tlsCfg, err := serverTLS(o)
	if err != nil {
		return err
	}
	srv := api.New(st, o.MasterKey)
	gopts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(api.MaxBodyBytes),
		// Sync streams are endless: keepalive finds dead proxies, and
		// proxies may ping every 20s.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Fixed receive windows: gRPC's bandwidth-delay estimator would
		// answer every proxy message on a quiet stream (a ping a second)
		// with an HTTP/2 PING, a round trip of wake-ups on both ends. What
		// proxies send is small (a spend batch is at most 512 records).
		grpc.StaticStreamWindowSize(1 << 20),
		grpc.StaticConnWindowSize(4 << 20),
		grpc.ChainStreamInterceptor(requireClientCert(o.ClientCA != "")),
		grpc.ChainUnaryInterceptor(mon.UnaryInterceptor()),
	}
	if tlsCfg != nil {
		gopts = append(gopts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	g := grpc.NewServer(gopts...)
	srv.Register(g)
	syncOpts := []syncserver.Option{syncserver.WithLogger(slog.Default()), syncserver.WithRegistry(reg),
		syncserver.WithMasterKeyHash(sha256.Sum256([]byte(o.MasterKey)))}
	switch {
	case o.ClientCA != "":
		syncOpts = append(syncOpts, syncserver.WithPeerAuthenticated())
	case o.SyncToken == "":
		slog.Warn("no --sync-token and no --client-ca: data planes cannot sync from this control plane")
	}
	var coordErr error
	if o.DatabaseURL != "" {
		// Several replicas may serve proxies: membership and lease pools
		// are rows every replica shares (controlplane/internal/coord/pgcoord).
		// The embedded store serves one replica: coord.Memory (the default).
		syncOpts = append(syncOpts, syncserver.WithCoordinator(func(d coord.Deliver) coord.Coordinator {
			c, err := pgcoord.Open(ctx, o.DatabaseURL, d, pgcoord.Options{Logger: slog.Default()})
			if err != nil {
				coordErr = err
				return coord.NewMemory(d)
			}
			return c
		}))
	}
	ss := syncserver.New(st, o.SyncToken, syncOpts...)
	if coordErr != nil {
		_ = ss.Close()
		return fmt.Errorf("open coordination: %w", coordErr)
	}
	srv.SetProxyStats(ss.Stats) // GET /proxies
	syncCtx, stopSync := context.WithCancel(ctx)
	defer stopSync()
	go func() {
		if err := ss.Run(syncCtx); err != nil && syncCtx.Err() == nil {
			slog.Error("sync server stopped", "err", err)
		}
	}()
	syncv1.RegisterSyncServiceServer(g, ss)
	// SaaS team API: admin endpoints on REST, JobService for the proxies
	// (controlplane/internal/saasapi).
	rate, err := money.FromUSD(o.CreditUSD)
	if err != nil || rate <= 0 {
		return errors.New("--credit-usd must be a positive amount of USD")
	}
	saas := saasapi.New(st, saasapi.Options{MasterKey: o.MasterKey, SyncToken: o.SyncToken, CreditRate: rate,
		PeerAuthenticated: o.ClientCA != "", Logger: slog.Default()})
	saasv1.RegisterJobServiceServer(g, saas.JobServer())
	hs := health.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)

	gw, err := srv.Gateway(ctx, runtime.WithMiddlewares(mon.GatewayMiddleware()))
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		pctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "application/json")
		if err := st.Ping(pctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"status":"unhealthy","db":"unreachable"}`))
			return
		}
		_, _ = w.Write([]byte(`{"status":"healthy"}`))
	})
	mux.Handle("GET /openapi.json", openapi.Handler())
	mux.Handle("/api/", saas.Handler())
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/", gw)
	// The admin UI (controlplane/internal/ui) calls gw with the session's
	// credential, so the API's authorization applies unchanged.
	uiHandler, err := ui.New(ui.Config{API: gw, Identify: srv.Identify, MasterKey: o.MasterKey, Secure: tlsCfg != nil,
		Revocations: st})
	if err != nil {
		return err
	}
	go uiHandler.Run(ctx) // sign-outs from every replica, within 250ms
	mux.Handle(ui.Prefix, uiHandler)
	mux.Handle(ui.Prefix+"/", uiHandler)

	if o.PprofAddr != "" {
		pm := http.NewServeMux()
		pm.HandleFunc("/debug/pprof/", pprof.Index)
		pm.HandleFunc("/debug/pprof/profile", pprof.Profile)
		pm.HandleFunc("/debug/pprof/trace", pprof.Trace)
		go func() {
			psrv := &http.Server{Addr: o.PprofAddr, Handler: pm, ReadHeaderTimeout: 10 * time.Second}
			if err := psrv.ListenAndServe(); err != nil {
				slog.Error("pprof server", "err", err)
			}
		}()
	}

	gl, err := net.Listen("tcp", o.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", o.GRPCAddr, err)
	}
	hl, err := net.Listen("tcp", o.HTTPAddr)
	if err != nil {
		gl.Close()
		return fmt.Errorf("listen %s: %w", o.HTTPAddr, err)
	}
	hsrv := &http.Server{
		Handler:           mon.HTTP(mux),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	errc := make(chan error, 2)
	go func() { errc <- g.Serve(gl) }()
	if tlsCfg != nil {
		hsrv.TLSConfig = tlsCfg
		go func() { errc <- hsrv.ServeTLS(hl, "", "") }()
	} else {
		go func() { errc <- hsrv.Serve(hl) }()
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	slog.Info("control plane ready", "http", hl.Addr().String(), "grpc", gl.Addr().String())

	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("server stopped", "err", err)
		}
	}
	slog.Info("shutting down")
	hs.Shutdown()
	_ = ss.Close()
	stopSync()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = hsrv.Shutdown(sctx)
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-sctx.Done():
		g.Stop()
	}
	return nil
}

// serverTLS returns the listeners' TLS config (nil without --tls-cert).
// Client certificates are verified when given and required only on the
// sync stream (requireClientCert), so management clients need none.
func serverTLS(o options) (*tls.Config, error) {
	if o.TLSCert == "" && o.TLSKey == "" {
		if o.ClientCA != "" {
			return nil, errors.New("--client-ca needs --tls-cert and --tls-key")
		}
		return nil, nil
	}
	return certs.ServerConfig(o.TLSCert, o.TLSKey, o.ClientCA, tls.VerifyClientCertIfGiven, slog.Default())
}

// requireClientCert refuses sync streams whose peer did not present a
// certificate verified against --client-ca (when on=true).
func requireClientCert(on bool) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if on && info.FullMethod == syncv1.SyncService_Sync_FullMethodName {
			p, _ := peer.FromContext(ss.Context())
			ti, ok := p.AuthInfo.(credentials.TLSInfo)
			// certs verified any certificate presented during the
			// handshake; here one must have been presented.
			if !ok || len(ti.State.PeerCertificates) == 0 {
				addr := ""
				if p != nil && p.Addr != nil {
					addr = p.Addr.String()
				}
				slog.Warn("sync stream refused: no client certificate verified by --client-ca", "peer", addr)
				return status.Error(codes.Unauthenticated, "a client certificate signed by the control plane's --client-ca is required")
			}
		}
		return handler(srv, ss)
	}
}

// applyConfig writes the config's models and general_settings to the store:
// config models are upserted (and config models no longer in the file are
// removed); general_settings keys from the file override stored ones.
func applyConfig(ctx context.Context, st store.Store, cfg *config.Config) error {
	return st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		existing, err := tx.ListModels(ctx)
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		inFile := map[string]bool{}
		for _, m := range cfg.Models {
			inFile[m.ID] = true
			old, err := tx.GetModel(ctx, m.ID)
			switch {
			case errors.Is(err, store.ErrNotFound):
				m.CreatedAt, m.UpdatedAt = now, now
				if err := tx.CreateModel(ctx, m); err != nil {
					return err
				}
			case err != nil:
				return err
			default:
				m.CreatedAt, m.UpdatedAt = old.CreatedAt, old.UpdatedAt
				if !sameModel(old, m) {
					m.UpdatedAt = now
					if err := tx.UpdateModel(ctx, m); err != nil {
						return err
					}
				}
			}
		}
		for _, m := range existing {
			if m.FromConfig && !inFile[m.ID] {
				if err := tx.DeleteModel(ctx, m.ID); err != nil {
					return err
				}
			}
		}
		if err := applyProxyBudget(ctx, tx, cfg.LiteLLMSettings, now); err != nil {
			return err
		}
		if len(cfg.GeneralSettings) > 0 {
			cur, err := tx.GetSettings(ctx)
			if err != nil {
				return err
			}
			merged, err := api.MergeSettings(cur.GeneralSettings, cfg.GeneralSettings)
			if err != nil {
				return err
			}
			if !jsonEqual(merged, cur.GeneralSettings) {
				if err := tx.PutSettings(ctx, store.Settings{GeneralSettings: merged, UpdatedAt: now}); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// proxyBudgetUser is LiteLLM's litellm_proxy_budget_name: the user that
// carries litellm_settings.max_budget, the proxy-wide budget. Master-key
// calls on the proxies are booked on it (dataplane enforce.ProxyBudgetUser).
const proxyBudgetUser = "litellm-proxy-budget"

// applyProxyBudget applies litellm_settings.max_budget (USD) and
// budget_duration as LiteLLM does at startup: user litellm-proxy-budget is
// created with that budget, or its budget updated (its spend is kept).
func applyProxyBudget(ctx context.Context, tx store.Tx, raw json.RawMessage, now time.Time) error {
	var ls struct {
		MaxBudget      *float64 `json:"max_budget"`
		BudgetDuration string   `json:"budget_duration"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &ls) != nil || ls.MaxBudget == nil {
		return nil
	}
	budget, err := money.FromUSD(*ls.MaxBudget)
	if err != nil || budget < 0 {
		return fmt.Errorf("litellm_settings.max_budget: must be a non-negative amount of USD")
	}
	var dur *duration.D
	if ls.BudgetDuration != "" {
		d, err := duration.Parse(ls.BudgetDuration)
		if err != nil {
			return fmt.Errorf("litellm_settings.budget_duration: %v", err)
		}
		dur = &d
	}
	u, err := tx.GetUser(ctx, proxyBudgetUser)
	create := errors.Is(err, store.ErrNotFound)
	if err != nil && !create {
		return err
	}
	if create {
		u = store.User{UserID: proxyBudgetUser, UserRole: store.RoleInternalUser, CreatedAt: now}
	}
	before := u
	u.MaxBudget = &budget
	if dur == nil {
		u.BudgetDuration, u.BudgetResetAt = "", nil
	} else if u.BudgetDuration != dur.String() || u.BudgetResetAt == nil {
		at := dur.AddTo(now)
		u.BudgetDuration, u.BudgetResetAt = dur.String(), &at
	}
	if create {
		u.UpdatedAt = now
		return tx.CreateUser(ctx, u)
	}
	if before.MaxBudget != nil && *before.MaxBudget == budget && before.BudgetDuration == u.BudgetDuration {
		return nil
	}
	u.UpdatedAt = now
	return tx.UpdateUser(ctx, u)
}

func sameModel(a, b store.Model) bool {
	a.CreatedAt, a.UpdatedAt, b.CreatedAt, b.UpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return jsonEqual(ja, jb)
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

package saasapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// DefaultCreditRate is the LiteLLM-side budget one credit buys, in
// nano-USD ($0.10, SaaS LiteLLM's rate).
const DefaultCreditRate int64 = 100_000_000

// Options configures New.
type Options struct {
	// MasterKey authenticates the admin endpoints (X-Admin-Key).
	MasterKey string
	// SyncToken authenticates JobService callers (the proxies).
	SyncToken string
	// PeerAuthenticated accepts JobService callers that presented a client
	// certificate verified against the control plane's --client-ca (as the
	// sync stream does), when they send no valid token.
	PeerAuthenticated bool
	// CreditRate is the budget per credit in nano-USD; 0: DefaultCreditRate.
	CreditRate int64
	Logger     *slog.Logger
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Service serves the admin endpoints and JobService.
type Service struct {
	st     store.Store
	master [32]byte
	token  [32]byte
	hasTok bool
	peer   bool
	rate   int64
	log    *slog.Logger
	now    func() time.Time
}

// New returns the service.
func New(st store.Store, o Options) *Service {
	s := &Service{st: st, master: sha256.Sum256([]byte(o.MasterKey)), rate: o.CreditRate, log: o.Logger, now: o.Now, peer: o.PeerAuthenticated}
	if o.SyncToken != "" {
		s.token, s.hasTok = sha256.Sum256([]byte(o.SyncToken)), true
	}
	if s.rate <= 0 {
		s.rate = DefaultCreditRate
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s
}

func digestEq(d [32]byte, presented string) bool {
	p := sha256.Sum256([]byte(presented))
	return subtle.ConstantTimeCompare(d[:], p[:]) == 1
}

// apiError is a refusal with SaaS LiteLLM's {"detail": ...} body.
type apiError struct {
	status int
	detail string
}

func (e *apiError) Error() string { return e.detail }

func fail(status int, format string, args ...any) *apiError {
	return &apiError{status: status, detail: fmt.Sprintf(format, args...)}
}

// Exact strings of SaaS LiteLLM.
const (
	detailMissingAdmin  = "Missing X-Admin-Key header. Admin authentication required."
	detailInvalidAdmin  = "Invalid admin API key"
	detailJobNotFound   = "Job not found"
	detailJobOtherTeam  = "Job does not belong to your team"
	detailUnavailable   = "Service temporarily unavailable"
	detailTeamForbidden = "Team suspended or insufficient credits"
)

// storeError maps a store failure the caller did not cause to a 503 and
// logs the cause.
func (s *Service) storeError(op string, err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	if errors.Is(err, context.Canceled) {
		return fail(499, "request cancelled")
	}
	s.log.Error("saas api: store failure", "op", op, "err", err)
	return &apiError{status: http.StatusServiceUnavailable, detail: detailUnavailable}
}

// teamModels is what a SaaS team's key may call on /chat/completions: the
// models of its groups. No group allows no model (an empty list would
// allow every model).
func teamModels(groups []store.TeamModelGroup) []string {
	var out []string
	for _, g := range groups {
		for _, m := range g.Models {
			if !slices.Contains(out, m) {
				out = append(out, m)
			}
		}
	}
	if len(out) == 0 {
		return []string{noModels}
	}
	return out
}

// noModels names no model.
const noModels = "no-default-models"

// resolveGroups reads the named groups and orders each one's models by
// priority (ties in the group's order).
func resolveGroups(ctx context.Context, r store.Reader, names []string) ([]store.TeamModelGroup, error) {
	out := make([]store.TeamModelGroup, 0, len(names))
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		g, err := r.GetModelGroup(ctx, n)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fail(http.StatusNotFound, "Model group '%s' not found", n)
		}
		if err != nil {
			return nil, err
		}
		ms := slices.Clone(g.Models)
		slices.SortStableFunc(ms, func(a, b store.ModelGroupModel) int { return a.Priority - b.Priority })
		tg := store.TeamModelGroup{Name: g.Name}
		for _, m := range ms {
			tg.Models = append(tg.Models, m.ModelName)
		}
		out = append(out, tg)
	}
	return out, nil
}

// budget is the team's max_budget for its credits.
func (s *Service) budget(sa *store.TeamSaaS) *int64 {
	b := sa.CreditsAllocated * s.rate
	return &b
}

// getSaaSTeam reads a SaaS team (404 with SaaS LiteLLM's message otherwise).
func getSaaSTeam(ctx context.Context, r store.Reader, teamID string) (store.Team, error) {
	t, err := r.GetTeam(ctx, teamID)
	if errors.Is(err, store.ErrNotFound) || (err == nil && t.SaaS == nil) {
		return store.Team{}, fail(http.StatusNotFound, "Team '%s' not found", teamID)
	}
	return t, err
}

// jsonObject validates an optional JSON object (nil for absent or null).
func jsonObject(raw json.RawMessage, field string) (json.RawMessage, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fail(http.StatusUnprocessableEntity, "%s must be a JSON object", field)
	}
	return raw, nil
}

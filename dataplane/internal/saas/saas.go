package saas

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	saasv1 "github.com/tollgate-gw/tollgate/gen/tollgate/saas/v1"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/reqtext"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// SaaS LiteLLM's strings.
const (
	detailInvalidKey    = "Invalid or missing API key"
	detailRefused       = "Team suspended or insufficient credits"
	detailNoModelAccess = "Team does not have access to the requested model"
	detailOtherTeam     = "Not authorized to access this team"
	detailUnavailable   = "Job service temporarily unavailable"
)

// Options configures New.
type Options struct {
	State state.Reader
	// Proxy is the OpenAI-compatible handler LLM calls run through.
	Proxy http.Handler
	// Jobs reaches the control plane's JobService.
	Jobs    saasv1.JobServiceClient
	ProxyID string
	Logger  *slog.Logger
	Now     func() time.Time
	// AttemptTimeout bounds one model attempt of an LLM call until its
	// answer starts (then the next model is tried); a stream that has
	// started is not cut by it. 0: 120s.
	AttemptTimeout time.Duration
	// RPCTimeout bounds a JobService call. 0: 10s.
	RPCTimeout time.Duration
}

type handler struct {
	o   Options
	mux *http.ServeMux
}

// New returns the handler of the team endpoints (mount it at "/api/").
func New(o Options) http.Handler {
	mux := newHandler(o).mux
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Ids from the path and query go to the control plane: text it can
		// store, or 404 here.
		if !reqtext.Sane(r) {
			writeDetail(w, http.StatusNotFound, "Not Found")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func newHandler(o Options) *handler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = 120 * time.Second
	}
	if o.RPCTimeout <= 0 {
		o.RPCTimeout = 10 * time.Second
	}
	h := &handler{o: o, mux: http.NewServeMux()}
	// open: read-only, answered for a suspended or credit-less team too;
	// active: refused unless the team is active with credits left.
	h.route("GET /api/teams/verify", false, h.verify)
	h.mux.HandleFunc("GET /api/teams/{id}", h.teamOrAdmin)
	h.route("GET /api/credits/teams/{id}/balance", false, h.balance)
	h.route("GET /api/credits/balance", false, h.balance)
	h.route("POST /api/credits/teams/{id}/check", false, h.check)
	h.route("GET /api/credits/teams/{id}/transactions", false, h.transactions)
	h.route("POST /api/jobs/create", true, h.createJob)
	h.route("GET /api/jobs/{id}", false, h.getJob)
	h.route("POST /api/jobs/{id}/llm-call", true, h.llmCall(false))
	h.route("POST /api/jobs/{id}/llm-call-stream", true, h.llmCall(true))
	h.route("POST /api/jobs/{id}/complete", false, h.complete)
	h.route("GET /api/teams/{id}/jobs", false, h.listJobs)
	h.mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeDetail(w, http.StatusNotFound, "Not Found")
	})
	return h
}

// caller is the authenticated team.
type caller struct {
	key  state.KeyInfo
	team *state.Team
	raw  string // the presented key, only to run LLM calls through the proxy
}

func (h *handler) route(pattern string, active bool, fn func(w http.ResponseWriter, r *http.Request, c *caller)) {
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) { h.serve(pattern, active, fn, w, r) })
}

// serve authenticates the team key, refuses a team that may not call
// (active) and another team's id, then runs fn.
func (h *handler) serve(pattern string, active bool, fn func(w http.ResponseWriter, r *http.Request, c *caller), w http.ResponseWriter, r *http.Request) {
	c, status, detail := h.authenticate(r)
	if c == nil {
		writeDetail(w, status, detail)
		return
	}
	if active && c.team.SaaS.Refused() {
		writeDetail(w, http.StatusForbidden, detailRefused)
		return
	}
	if id := r.PathValue("id"); id != "" && !strings.HasPrefix(pattern, "POST /api/jobs/") && !strings.HasPrefix(pattern, "GET /api/jobs/") {
		if id != c.team.TeamID {
			writeDetail(w, http.StatusForbidden, detailOtherTeam)
			return
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4<<20)
	fn(w, r, c)
}

// authenticate resolves the team key from memory. Every failure of the key
// itself is the same 401, so nothing tells a guessed key from a revoked one.
func (h *handler) authenticate(r *http.Request) (*caller, int, string) {
	if !h.o.State.Ready() {
		return nil, http.StatusServiceUnavailable, "Proxy not ready"
	}
	a := r.Header.Get("Authorization")
	if len(a) <= 7 || !strings.EqualFold(a[:7], "bearer ") {
		return nil, http.StatusUnauthorized, detailInvalidKey
	}
	key := strings.TrimSpace(a[7:])
	if keys.Validate(key) != nil {
		return nil, http.StatusUnauthorized, detailInvalidKey
	}
	sum := sha256.Sum256([]byte(key))
	nowT := h.o.Now()
	now := nowT.Unix()
	k, ok := h.o.State.LookupKey(&sum, nowT.UnixMilli())
	if !ok || k.Blocked || (k.ExpiresUnix != 0 && now >= k.ExpiresUnix) || k.TeamID == "" {
		return nil, http.StatusUnauthorized, detailInvalidKey
	}
	t, ok := h.o.State.Team(k.TeamID)
	if !ok || t.SaaS == nil {
		return nil, http.StatusUnauthorized, detailInvalidKey
	}
	if t.Blocked {
		return nil, http.StatusForbidden, detailRefused
	}
	return &caller{key: k, team: t, raw: key}, 0, ""
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"detail":"Internal Server Error"}`)
	}
	writeRaw(w, code, b)
}

func writeRaw(w http.ResponseWriter, code int, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func writeDetail(w http.ResponseWriter, code int, detail string) {
	writeJSON(w, code, map[string]string{"detail": detail})
}

// rpcError writes a JobService error: its code as the HTTP status, its
// message as the detail (the control plane wrote it for the client).
func (h *handler) rpcError(w http.ResponseWriter, err error) {
	st, _ := status.FromError(err)
	code := http.StatusServiceUnavailable
	detail := detailUnavailable
	switch st.Code() {
	case codes.InvalidArgument:
		code, detail = http.StatusBadRequest, st.Message()
	case codes.OutOfRange:
		code, detail = http.StatusUnprocessableEntity, st.Message()
	case codes.PermissionDenied:
		code, detail = http.StatusForbidden, st.Message()
	case codes.NotFound:
		code, detail = http.StatusNotFound, st.Message()
	case codes.Unauthenticated:
		if st.Message() == "Invalid admin API key" {
			code, detail = http.StatusUnauthorized, st.Message()
		} else {
			h.o.Logger.Warn("saas: the control plane refused this proxy's job service credentials")
		}
	default:
		h.o.Logger.Warn("saas: job service call failed", "code", st.Code().String())
	}
	writeDetail(w, code, detail)
}

func (h *handler) rpcCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), h.o.RPCTimeout)
}

// relay forwards a JobService reply body.
func (h *handler) relay(w http.ResponseWriter, rep *saasv1.JobReply, err error) {
	if err != nil {
		h.rpcError(w, err)
		return
	}
	writeRaw(w, http.StatusOK, rep.GetBody())
}

// readJSON decodes an optional JSON body (422 like FastAPI when malformed).
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		writeDetail(w, http.StatusRequestEntityTooLarge, "request body too large or unreadable")
		return false
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return true
	}
	if err := json.Unmarshal(b, v); err != nil {
		writeDetail(w, http.StatusUnprocessableEntity, "request body is not valid JSON for this endpoint")
		return false
	}
	return true
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	s := hex.EncodeToString(b[:])
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:]
}

// ---- team and credits, from memory

func teamView(t *state.Team) map[string]any {
	sa := t.SaaS
	groups := make([]string, 0, len(sa.ModelGroups))
	for _, g := range sa.ModelGroups {
		groups = append(groups, g.Name)
	}
	var alias any
	if sa.TeamAlias != "" {
		alias = sa.TeamAlias
	}
	return map[string]any{
		"team_id": t.TeamID, "team_alias": alias, "organization_id": t.OrganizationID,
		"status": sa.Status, "model_groups": groups, "access_groups": groups,
		"credits_allocated": sa.CreditsAllocated, "credits_used": sa.CreditsUsed, "credits_remaining": sa.CreditsRemaining,
		"virtual_key": sa.KeyName,
		"credits": map[string]any{
			"team_id": t.TeamID, "organization_id": t.OrganizationID,
			"credits_allocated": sa.CreditsAllocated, "credits_used": sa.CreditsUsed, "credits_remaining": sa.CreditsRemaining,
			"virtual_key": sa.KeyName,
		},
	}
}

func (h *handler) verify(w http.ResponseWriter, _ *http.Request, c *caller) {
	v := teamView(c.team)
	v["valid"] = true
	delete(v, "credits")
	writeJSON(w, http.StatusOK, v)
}

func (h *handler) team(w http.ResponseWriter, _ *http.Request, c *caller) {
	writeJSON(w, http.StatusOK, teamView(c.team))
}

// teamOrAdmin serves GET /api/teams/{id} to the team's key from memory,
// or to X-Admin-Key through the control plane (which alone can check it).
func (h *handler) teamOrAdmin(w http.ResponseWriter, r *http.Request) {
	adm := r.Header.Get("X-Admin-Key")
	if adm == "" {
		h.serve("GET /api/teams/{id}", false, h.team, w, r)
		return
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(adm)))
	ctx, cancel := h.rpcCtx(r)
	defer cancel()
	rep, err := h.o.Jobs.AdminGetTeam(ctx, &saasv1.AdminGetTeamRequest{TeamId: r.PathValue("id"), AdminKeySha256: sum[:]})
	h.relay(w, rep, err)
}

func (h *handler) balance(w http.ResponseWriter, r *http.Request, c *caller) {
	if id := r.URL.Query().Get("team_id"); id != "" && id != c.team.TeamID {
		writeDetail(w, http.StatusForbidden, detailOtherTeam)
		return
	}
	sa := c.team.SaaS
	writeJSON(w, http.StatusOK, map[string]any{
		"team_id": c.team.TeamID, "organization_id": c.team.OrganizationID, "status": sa.Status,
		"credits_allocated": sa.CreditsAllocated, "credits_used": sa.CreditsUsed, "credits_remaining": sa.CreditsRemaining,
	})
}

func (h *handler) check(w http.ResponseWriter, r *http.Request, c *caller) {
	need := int64(1)
	if q := r.URL.Query().Get("credits_needed"); q != "" {
		n, err := strconv.ParseInt(q, 10, 64)
		if err != nil || n < 0 {
			writeDetail(w, http.StatusUnprocessableEntity, "credits_needed must be a non-negative integer")
			return
		}
		need = n
	}
	var body struct {
		CreditsNeeded *int64 `json:"credits_needed"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	if body.CreditsNeeded != nil {
		if *body.CreditsNeeded < 0 {
			writeDetail(w, http.StatusUnprocessableEntity, "credits_needed must be a non-negative integer")
			return
		}
		need = *body.CreditsNeeded
	}
	sa := c.team.SaaS
	out := map[string]any{"team_id": c.team.TeamID, "credits_needed": need, "credits_remaining": sa.CreditsRemaining,
		"status": sa.Status}
	switch {
	case sa.Status != "active":
		out["has_credits"], out["error"] = false, detailRefused
	case sa.CreditsRemaining < need:
		out["has_credits"], out["error"] = false, "Insufficient credits"
	default:
		out["has_credits"] = true
	}
	writeJSON(w, http.StatusOK, out)
}

// ---- jobs, on the control plane

func intQuery(r *http.Request, name string) int32 {
	n, err := strconv.Atoi(r.URL.Query().Get(name))
	if err != nil || n < 0 || n > 1<<20 {
		return 0
	}
	return int32(n)
}

func (h *handler) transactions(w http.ResponseWriter, r *http.Request, c *caller) {
	ctx, cancel := h.rpcCtx(r)
	defer cancel()
	rep, err := h.o.Jobs.ListCreditTransactions(ctx, &saasv1.ListCreditTransactionsRequest{TeamId: c.team.TeamID, Limit: intQuery(r, "limit")})
	h.relay(w, rep, err)
}

func (h *handler) createJob(w http.ResponseWriter, r *http.Request, c *caller) {
	var req struct {
		TeamID   string          `json:"team_id"`
		UserID   *string         `json:"user_id"`
		JobType  string          `json:"job_type"`
		Metadata json.RawMessage `json:"metadata"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	if req.TeamID != "" && req.TeamID != c.team.TeamID {
		writeDetail(w, http.StatusForbidden, detailOtherTeam)
		return
	}
	user := ""
	if req.UserID != nil {
		user = *req.UserID
	}
	ctx, cancel := h.rpcCtx(r)
	defer cancel()
	rep, err := h.o.Jobs.CreateJob(ctx, &saasv1.CreateJobRequest{TeamId: c.team.TeamID, UserId: user, JobType: req.JobType, Metadata: req.Metadata})
	h.relay(w, rep, err)
}

func (h *handler) getJob(w http.ResponseWriter, r *http.Request, c *caller) {
	ctx, cancel := h.rpcCtx(r)
	defer cancel()
	rep, err := h.o.Jobs.GetJob(ctx, &saasv1.GetJobRequest{TeamId: c.team.TeamID, JobId: r.PathValue("id")})
	h.relay(w, rep, err)
}

func (h *handler) complete(w http.ResponseWriter, r *http.Request, c *caller) {
	var req struct {
		Status       string          `json:"status"`
		Metadata     json.RawMessage `json:"metadata"`
		ErrorMessage *string         `json:"error_message"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	msg := ""
	if req.ErrorMessage != nil {
		msg = *req.ErrorMessage
	}
	ctx, cancel := h.rpcCtx(r)
	defer cancel()
	rep, err := h.o.Jobs.CompleteJob(ctx, &saasv1.CompleteJobRequest{TeamId: c.team.TeamID, JobId: r.PathValue("id"),
		Status: req.Status, Metadata: req.Metadata, ErrorMessage: msg})
	h.relay(w, rep, err)
}

func (h *handler) listJobs(w http.ResponseWriter, r *http.Request, c *caller) {
	ctx, cancel := h.rpcCtx(r)
	defer cancel()
	rep, err := h.o.Jobs.ListTeamJobs(ctx, &saasv1.ListTeamJobsRequest{TeamId: c.team.TeamID,
		Limit: intQuery(r, "limit"), Offset: intQuery(r, "offset")})
	h.relay(w, rep, err)
}

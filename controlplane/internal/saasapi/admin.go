package saasapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/events"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/reqtext"
)

// maxCredits bounds a team's credits_allocated.
const maxCredits = int64(1e12)

// maxBody bounds a request body.
const maxBody = 1 << 20

// Handler returns the admin endpoints under /api/ (mount it at "/api/")
// and GET /api/teams/{id} for the admin.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, fn func(r *http.Request) (any, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if err := s.admin(r); err != nil {
				writeError(w, err)
				return
			}
			changedBy := r.Header.Get("litellm-changed-by")
			if len(changedBy) > 256 {
				changedBy = changedBy[:256]
			}
			r = r.WithContext(context.WithValue(r.Context(), changedByKey{}, changedBy))
			v, err := fn(r)
			if err != nil {
				writeError(w, s.storeError(pattern, err))
				return
			}
			writeJSON(w, http.StatusOK, v)
		})
	}
	h("POST /api/organizations/create", s.createOrg)
	h("GET /api/organizations/{id}", s.getOrg)
	h("GET /api/organizations/{id}/teams", s.orgTeams)
	h("GET /api/organizations/{id}/usage", s.orgUsage)
	h("POST /api/model-groups/create", s.createGroup)
	h("GET /api/model-groups", s.listGroups)
	h("GET /api/model-groups/{name}", s.getGroup)
	h("POST /api/teams/create", s.createTeam)
	h("GET /api/teams", s.listTeams)
	h("GET /api/teams/{id}", s.getTeam)
	h("PUT /api/teams/{id}/model-groups", s.assignGroups)
	h("PUT /api/teams/{id}", s.updateTeamReq)
	h("GET /api/teams/{id}/usage", s.teamUsage)
	h("POST /api/credits/add", s.addCreditsBody)
	h("GET /api/credits/balance", s.balance)
	h("GET /api/credits/teams/{id}/balance", s.balance)
	h("GET /api/credits/teams/{id}/transactions", s.transactions)
	for _, verb := range []string{"PUT", "POST"} {
		h(verb+" /api/teams/{id}/suspend", s.setStatus(store.TeamStatusSuspended, "suspended"))
		h(verb+" /api/teams/{id}/pause", s.setStatus(store.TeamStatusPaused, "paused"))
		h(verb+" /api/teams/{id}/resume", s.setStatus(store.TeamStatusActive, "resumed"))
	}
	h("POST /api/credits/teams/{id}/add", s.addCredits)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, fail(http.StatusNotFound, "Not Found"))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Ids come from the path and the query: text the stores can hold
		// or 404, never a driver error (Postgres refuses NUL and invalid
		// UTF-8).
		if !reqtext.Sane(r) {
			writeError(w, fail(http.StatusNotFound, "Not Found"))
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"detail":"Internal Server Error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// WriteDetail writes SaaS LiteLLM's error body.
func WriteDetail(w http.ResponseWriter, code int, detail string) {
	writeJSON(w, code, map[string]string{"detail": detail})
}

func writeError(w http.ResponseWriter, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{status: http.StatusServiceUnavailable, detail: detailUnavailable}
	}
	WriteDetail(w, ae.status, ae.detail)
}

// admin checks X-Admin-Key (Authorization: Bearer <master key> is accepted
// too, as on every management path).
func (s *Service) admin(r *http.Request) error {
	if v := r.Header.Get("X-Admin-Key"); v != "" {
		if digestEq(s.master, strings.TrimSpace(v)) {
			return nil
		}
		return fail(http.StatusUnauthorized, detailInvalidAdmin)
	}
	if a := r.Header.Get("Authorization"); a != "" {
		if len(a) > 7 && strings.EqualFold(a[:7], "bearer ") && digestEq(s.master, strings.TrimSpace(a[7:])) {
			return nil
		}
		return fail(http.StatusUnauthorized, detailInvalidAdmin)
	}
	return fail(http.StatusUnauthorized, detailMissingAdmin)
}

// decode reads a JSON body into v (422 like FastAPI for bad JSON).
func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return fail(http.StatusBadRequest, "could not read the request body")
	}
	if len(b) > maxBody {
		return fail(http.StatusRequestEntityTooLarge, "request body too large")
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fail(http.StatusUnprocessableEntity, "request body is not valid JSON for this endpoint")
	}
	return nil
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$`)

func checkID(field, v string) error {
	if !idPattern.MatchString(v) {
		return fail(http.StatusUnprocessableEntity, "%s must be 1 to 128 letters, digits, '.', '_', ':', '@' or '-'", field)
	}
	return nil
}

// ---- organizations

func orgView(o *store.Organization) map[string]any {
	md := o.Metadata
	if len(md) == 0 {
		md = json.RawMessage(`{}`)
	}
	return map[string]any{
		"organization_id": o.OrganizationID, "name": o.OrganizationAlias, "status": "active", "metadata": md,
		"created_at": o.CreatedAt.Format(time.RFC3339Nano), "updated_at": o.UpdatedAt.Format(time.RFC3339Nano),
	}
}

func (s *Service) createOrg(r *http.Request) (any, error) {
	var req struct {
		OrganizationID string          `json:"organization_id"`
		Name           string          `json:"name"`
		Metadata       json.RawMessage `json:"metadata"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := checkID("organization_id", req.OrganizationID); err != nil {
		return nil, err
	}
	if req.Name == "" || tooLong(req.Name) {
		return nil, fail(http.StatusUnprocessableEntity, "name is required (at most %d bytes)", maxShortField)
	}
	md, err := jsonObject(req.Metadata, "metadata")
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	o := store.Organization{OrganizationID: req.OrganizationID, OrganizationAlias: req.Name, Metadata: md, CreatedAt: now, UpdatedAt: now}
	err = s.st.ReadWriteTx(r.Context(), func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateOrganization(ctx, o); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return fail(http.StatusBadRequest, "Organization '%s' already exists", o.OrganizationID)
			}
			return err
		}
		return s.audit(ctx, tx, "created", "organization", o.OrganizationID)
	})
	if err != nil {
		return nil, err
	}
	return orgView(&o), nil
}

// changedByKey carries the litellm-changed-by header to the audit rows.
type changedByKey struct{}

func (s *Service) audit(ctx context.Context, tx store.Tx, action, kind, id string) error {
	by, _ := ctx.Value(changedByKey{}).(string)
	return tx.AppendAudit(ctx, store.AuditEntry{ID: events.NewID(), Action: action, ObjectType: kind, ObjectID: id,
		Caller: "master_key", ChangedBy: by, CreatedAt: s.now().UTC()})
}

func (s *Service) org(ctx context.Context, id string) (store.Organization, error) {
	o, err := s.st.Read().GetOrganization(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return o, fail(http.StatusNotFound, "Organization '%s' not found", id)
	}
	return o, err
}

func (s *Service) getOrg(r *http.Request) (any, error) {
	o, err := s.org(r.Context(), r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	return orgView(&o), nil
}

// orgTeamList returns every SaaS team of an organization.
func (s *Service) orgTeamList(ctx context.Context, orgID string) ([]store.Team, error) {
	var out []store.Team
	for page := 1; ; page++ {
		ts, total, err := s.st.Read().ListTeams(ctx, store.TeamFilter{OrganizationID: orgID, Page: store.Page{Page: page, Size: store.MaxPageSize}})
		if err != nil {
			return nil, err
		}
		for _, t := range ts {
			if t.SaaS != nil {
				out = append(out, t)
			}
		}
		if page*store.MaxPageSize >= total {
			return out, nil
		}
	}
}

func (s *Service) orgTeams(r *http.Request) (any, error) {
	o, err := s.org(r.Context(), r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	ts, err := s.orgTeamList(r.Context(), o.OrganizationID)
	if err != nil {
		return nil, err
	}
	views := make([]map[string]any, 0, len(ts))
	for i := range ts {
		views = append(views, teamView(&ts[i]))
	}
	return map[string]any{"organization_id": o.OrganizationID, "team_count": len(ts), "teams": views}, nil
}

var periodPattern = regexp.MustCompile(`^\d{4}-(0[1-9]|1[0-2])(-\d{2})?$`)

func (s *Service) orgUsage(r *http.Request) (any, error) {
	period := r.URL.Query().Get("period")
	if !periodPattern.MatchString(period) {
		return nil, fail(http.StatusUnprocessableEntity, "period is required, as YYYY-MM")
	}
	ctx := r.Context()
	o, err := s.org(ctx, r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	ts, err := s.orgTeamList(ctx, o.OrganizationID)
	if err != nil {
		return nil, err
	}
	var all usage
	teams := map[string]*usage{}
	for _, t := range ts {
		u, _, err := s.usage(ctx, t.TeamID, period)
		if err != nil {
			return nil, err
		}
		teams[t.TeamID] = u
		all.add(u)
	}
	return map[string]any{"organization_id": o.OrganizationID, "period": period, "summary": all, "teams": teams}, nil
}

// usage is a team's or an organization's job usage over a period.
type usage struct {
	TotalJobs      int     `json:"total_jobs"`
	SuccessfulJobs int     `json:"successful_jobs"`
	FailedJobs     int     `json:"failed_jobs"`
	CreditsUsed    int     `json:"credits_used"`
	TotalTokens    int64   `json:"total_tokens"`
	TotalCostUSD   float64 `json:"total_cost_usd"`
}

func (u *usage) add(o *usage) {
	u.TotalJobs += o.TotalJobs
	u.SuccessfulJobs += o.SuccessfulJobs
	u.FailedJobs += o.FailedJobs
	u.CreditsUsed += o.CreditsUsed
	u.TotalTokens += o.TotalTokens
	u.TotalCostUSD += o.TotalCostUSD
}

// usage sums a team's jobs created in period (a YYYY-MM or YYYY-MM-DD
// prefix of the UTC creation date), with a count and cost per job type.
func (s *Service) usage(ctx context.Context, teamID, period string) (*usage, map[string]map[string]any, error) {
	u := &usage{}
	byType := map[string]map[string]any{}
	rd := s.st.Read()
	for page := 1; ; page++ {
		jobs, total, err := rd.ListJobs(ctx, store.JobFilter{TeamID: teamID, Page: store.Page{Page: page, Size: store.MaxPageSize}})
		if err != nil {
			return nil, nil, err
		}
		for _, j := range jobs {
			if !strings.HasPrefix(j.CreatedAt.UTC().Format("2006-01-02"), period) {
				continue
			}
			u.TotalJobs++
			switch j.Status {
			case store.JobCompleted:
				u.SuccessfulJobs++
			case store.JobFailed:
				u.FailedJobs++
			}
			if j.CreditApplied {
				u.CreditsUsed++
			}
			calls, err := rd.ListJobCalls(ctx, j.JobID)
			if err != nil {
				return nil, nil, err
			}
			sum := summarize(calls)
			u.TotalTokens += sum.TotalTokens
			u.TotalCostUSD += sum.TotalCostUSD
			bt := byType[j.JobType]
			if bt == nil {
				bt = map[string]any{"count": 0, "cost_usd": 0.0}
				byType[j.JobType] = bt
			}
			bt["count"] = bt["count"].(int) + 1
			bt["cost_usd"] = bt["cost_usd"].(float64) + sum.TotalCostUSD
		}
		if page*store.MaxPageSize >= total {
			return u, byType, nil
		}
	}
}

// ---- model groups

func groupView(g *store.ModelGroup) map[string]any {
	ms := slices.Clone(g.Models)
	slices.SortStableFunc(ms, func(a, b store.ModelGroupModel) int { return a.Priority - b.Priority })
	return map[string]any{
		"group_name": g.Name, "display_name": g.DisplayName, "description": nilIfEmpty(g.Description),
		"status": "active", "models": ms, "created_at": g.CreatedAt.Format(time.RFC3339Nano),
	}
}

func (s *Service) createGroup(r *http.Request) (any, error) {
	var req struct {
		GroupName   string                  `json:"group_name"`
		DisplayName string                  `json:"display_name"`
		Description string                  `json:"description"`
		Models      []store.ModelGroupModel `json:"models"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := checkID("group_name", req.GroupName); err != nil {
		return nil, err
	}
	if tooLong(req.DisplayName) || len(req.Description) > 4096 {
		return nil, fail(http.StatusUnprocessableEntity, "display_name or description too long")
	}
	if len(req.Models) == 0 || len(req.Models) > 32 {
		return nil, fail(http.StatusUnprocessableEntity, "models must list 1 to 32 models")
	}
	for _, m := range req.Models {
		if m.ModelName == "" || tooLong(m.ModelName) || m.Priority < 0 {
			return nil, fail(http.StatusUnprocessableEntity, "every model needs a model_name and a priority ≥ 0")
		}
	}
	if req.DisplayName == "" {
		req.DisplayName = req.GroupName
	}
	now := s.now().UTC()
	g := store.ModelGroup{Name: req.GroupName, DisplayName: req.DisplayName, Description: req.Description, Models: req.Models, CreatedAt: now, UpdatedAt: now}
	err := s.st.ReadWriteTx(r.Context(), func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateModelGroup(ctx, g); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return fail(http.StatusBadRequest, "Model group '%s' already exists", g.Name)
			}
			return err
		}
		return s.audit(ctx, tx, "created", "model_group", g.Name)
	})
	if err != nil {
		return nil, err
	}
	return groupView(&g), nil
}

func (s *Service) listGroups(r *http.Request) (any, error) {
	gs, err := s.st.Read().ListModelGroups(r.Context())
	if err != nil {
		return nil, err
	}
	out := make([]map[string]any, 0, len(gs))
	for i := range gs {
		out = append(out, groupView(&gs[i]))
	}
	return out, nil
}

func (s *Service) getGroup(r *http.Request) (any, error) {
	name := r.PathValue("name")
	g, err := s.st.Read().GetModelGroup(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fail(http.StatusNotFound, "Model group '%s' not found", name)
	}
	if err != nil {
		return nil, err
	}
	return groupView(&g), nil
}

// ---- teams

// teamView is a SaaS team as GET /api/teams/{id} shows it: the key only in
// its masked display form.
func teamView(t *store.Team) map[string]any {
	sa := t.SaaS
	return map[string]any{
		"team_id": t.TeamID, "team_alias": nilIfEmpty(t.TeamAlias), "organization_id": t.OrganizationID,
		"status": sa.Status, "model_groups": sa.GroupNames(), "access_groups": sa.GroupNames(),
		"credits_allocated": sa.CreditsAllocated, "credits_used": sa.CreditsUsed, "credits_remaining": sa.CreditsRemaining,
		"virtual_key": sa.KeyName, "created_at": t.CreatedAt.Format(time.RFC3339Nano),
		"credits": map[string]any{
			"team_id": t.TeamID, "organization_id": t.OrganizationID,
			"credits_allocated": sa.CreditsAllocated, "credits_used": sa.CreditsUsed, "credits_remaining": sa.CreditsRemaining,
			"virtual_key": sa.KeyName,
		},
	}
}

func (s *Service) createTeam(r *http.Request) (any, error) {
	var req struct {
		OrganizationID   string          `json:"organization_id"`
		TeamID           string          `json:"team_id"`
		TeamAlias        string          `json:"team_alias"`
		ModelGroups      []string        `json:"model_groups"`
		AccessGroups     []string        `json:"access_groups"`
		CreditsAllocated *int64          `json:"credits_allocated"`
		Metadata         json.RawMessage `json:"metadata"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if err := checkID("organization_id", req.OrganizationID); err != nil {
		return nil, err
	}
	if err := checkID("team_id", req.TeamID); err != nil {
		return nil, err
	}
	if tooLong(req.TeamAlias) {
		return nil, fail(http.StatusUnprocessableEntity, "team_alias too long")
	}
	groups := req.ModelGroups
	if groups == nil {
		groups = req.AccessGroups // the seed's name for the same list
	}
	if len(groups) > 64 {
		return nil, fail(http.StatusUnprocessableEntity, "at most 64 model groups")
	}
	credits := int64(0)
	if req.CreditsAllocated != nil {
		credits = *req.CreditsAllocated
	}
	if credits < 0 || credits > 1e12 {
		return nil, fail(http.StatusUnprocessableEntity, "credits_allocated must be between 0 and 10^12")
	}
	if s.rate > 0 && credits > math.MaxInt64/s.rate {
		return nil, fail(http.StatusUnprocessableEntity, "credits_allocated times the credit rate exceeds the largest budget")
	}
	md, err := jsonObject(req.Metadata, "metadata")
	if err != nil {
		return nil, err
	}
	secret := keys.Generate()
	now := s.now().UTC()
	var team store.Team
	err = s.st.ReadWriteTx(r.Context(), func(ctx context.Context, tx store.Tx) error {
		if _, err := tx.GetOrganization(ctx, req.OrganizationID); errors.Is(err, store.ErrNotFound) {
			return fail(http.StatusNotFound, "Organization '%s' not found", req.OrganizationID)
		} else if err != nil {
			return err
		}
		if _, err := tx.GetTeam(ctx, req.TeamID); err == nil {
			return fail(http.StatusBadRequest, "Team '%s' already exists", req.TeamID)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		resolved, err := resolveGroups(ctx, tx, groups)
		if err != nil {
			return err
		}
		sa := &store.TeamSaaS{
			Status: store.TeamStatusActive, CreditsAllocated: credits, CreditsRemaining: credits,
			ModelGroups: resolved, KeyTokenID: keys.NewID(), KeyName: keys.DisplayName(secret),
		}
		team = store.Team{
			TeamID: req.TeamID, TeamAlias: req.TeamAlias, OrganizationID: req.OrganizationID,
			Models: teamModels(resolved), Limits: store.Limits{MaxBudget: s.budget(sa)},
			Metadata: md, SaaS: sa, CreatedAt: now, UpdatedAt: now,
		}
		// A team id with history (jobs or credit transactions of a deleted
		// team) is not reused: the new team would read the old one's. (An
		// existing team is CreateTeam's conflict, below.)
		if _, err := tx.GetTeam(ctx, req.TeamID); errors.Is(err, store.ErrNotFound) {
			if err := refuseReusedTeamID(ctx, tx, req.TeamID); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		if err := tx.CreateTeam(ctx, team); err != nil {
			return err
		}
		k := store.Key{
			TokenID: sa.KeyTokenID, KeyHash: keys.Hash(secret), KeyName: sa.KeyName, KeyAlias: req.TeamID + "_key",
			TeamID: req.TeamID, OrganizationID: req.OrganizationID,
			Metadata:  json.RawMessage(`{"created_by":"saas_api"}`),
			CreatedAt: now, UpdatedAt: now, CreatedBy: "master_key",
		}
		if err := tx.CreateKey(ctx, k); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return fail(http.StatusBadRequest, "Team '%s' already exists", req.TeamID)
			}
			return err
		}
		// Lifecycle events, as /team/new and /key/generate emit them: ids
		// and display names, never the key.
		teamDoc, _ := json.Marshal(map[string]any{"team_id": team.TeamID, "team_alias": team.TeamAlias, "organization_id": team.OrganizationID})
		keyDoc, _ := json.Marshal(map[string]any{"token_id": k.TokenID, "key_name": k.KeyName, "key_alias": k.KeyAlias,
			"team_id": k.TeamID, "organization_id": k.OrganizationID})
		changedBy, _ := ctx.Value(changedByKey{}).(string)
		if err := events.Enqueue(ctx, tx, store.EventTeamCreated, events.AuditPayload(store.KindTeam, team.TeamID, "master_key", changedBy, nil, teamDoc, now), now); err != nil {
			return err
		}
		if err := events.Enqueue(ctx, tx, store.EventKeyCreated, events.AuditPayload(store.KindKey, k.TokenID, "master_key", changedBy, nil, keyDoc, now), now); err != nil {
			return err
		}
		if credits > 0 {
			if err := tx.AddCreditTransaction(ctx, store.CreditTransaction{
				TransactionID: events.NewID(), TeamID: req.TeamID, OrganizationID: req.OrganizationID,
				Type: store.CreditAllocation, Amount: credits, BalanceBefore: 0, BalanceAfter: credits,
				Reason: "Initial allocation", CreatedAt: now,
			}); err != nil {
				return err
			}
		}
		return s.audit(ctx, tx, "created", "team", req.TeamID)
	})
	if err != nil {
		return nil, err
	}
	sa := team.SaaS
	return map[string]any{
		"team_id": team.TeamID, "organization_id": team.OrganizationID, "team_alias": nilIfEmpty(team.TeamAlias),
		"model_groups": sa.GroupNames(), "access_groups": sa.GroupNames(), "allowed_models": modelsOf(sa.ModelGroups),
		"credits_allocated": sa.CreditsAllocated, "credits_remaining": sa.CreditsRemaining,
		"status": sa.Status, "virtual_key": secret,
		"message": "Team created successfully",
	}, nil
}

func modelsOf(gs []store.TeamModelGroup) []string {
	m := teamModels(gs)
	if len(m) == 1 && m[0] == noModels {
		return []string{}
	}
	return m
}

// listTeams lists every SaaS team (with its status and credits).
func (s *Service) listTeams(r *http.Request) (any, error) {
	out := []map[string]any{}
	for page := 1; ; page++ {
		ts, total, err := s.st.Read().ListTeams(r.Context(), store.TeamFilter{Page: store.Page{Page: page, Size: store.MaxPageSize}})
		if err != nil {
			return nil, err
		}
		for i := range ts {
			if ts[i].SaaS != nil {
				out = append(out, teamView(&ts[i]))
			}
		}
		if page*store.MaxPageSize >= total {
			return out, nil
		}
	}
}

func (s *Service) getTeam(r *http.Request) (any, error) {
	t, err := getSaaSTeam(r.Context(), s.st.Read(), r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	return teamView(&t), nil
}

// updateTeam changes a SaaS team in one transaction.
func (s *Service) updateTeam(ctx context.Context, teamID string, fn func(ctx context.Context, tx store.Tx, t *store.Team) error) (store.Team, error) {
	var t store.Team
	err := s.st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		var err error
		if t, err = getSaaSTeam(ctx, tx, teamID); err != nil {
			return err
		}
		sa := *t.SaaS
		t.SaaS = &sa
		if err := fn(ctx, tx, &t); err != nil {
			return err
		}
		t.UpdatedAt = s.now().UTC()
		if err := tx.UpdateTeam(ctx, t); err != nil {
			return err
		}
		return s.audit(ctx, tx, "updated", "team", teamID)
	})
	return t, err
}

func (s *Service) assignGroups(r *http.Request) (any, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		return nil, fail(http.StatusBadRequest, "could not read the request body")
	}
	var names []string
	// {"model_groups": [...]} or, as SaaS LiteLLM's first version took it,
	// a bare array.
	var obj struct {
		ModelGroups *[]string `json:"model_groups"`
	}
	if json.Unmarshal(b, &names) != nil {
		if json.Unmarshal(b, &obj) != nil || obj.ModelGroups == nil {
			return nil, fail(http.StatusUnprocessableEntity, "model_groups (a list of group names) is required")
		}
		names = *obj.ModelGroups
	}
	if len(names) > 64 {
		return nil, fail(http.StatusUnprocessableEntity, "at most 64 model groups")
	}
	t, err := s.updateTeam(r.Context(), r.PathValue("id"), func(ctx context.Context, tx store.Tx, t *store.Team) error {
		resolved, err := resolveGroups(ctx, tx, names)
		if err != nil {
			return err
		}
		t.SaaS.ModelGroups = resolved
		t.Models = teamModels(resolved)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"team_id": t.TeamID, "model_groups": t.SaaS.GroupNames(), "message": "Model groups assigned successfully"}, nil
}

// updateTeamReq is PUT /api/teams/{id}: team_alias, model_groups (or
// access_groups) and metadata, each when given.
func (s *Service) updateTeamReq(r *http.Request) (any, error) {
	var req struct {
		TeamAlias    *string         `json:"team_alias"`
		ModelGroups  *[]string       `json:"model_groups"`
		AccessGroups *[]string       `json:"access_groups"`
		Metadata     json.RawMessage `json:"metadata"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.TeamAlias != nil && tooLong(*req.TeamAlias) {
		return nil, fail(http.StatusUnprocessableEntity, "team_alias too long")
	}
	groups := req.ModelGroups
	if groups == nil {
		groups = req.AccessGroups
	}
	if groups != nil && len(*groups) > 64 {
		return nil, fail(http.StatusUnprocessableEntity, "at most 64 model groups")
	}
	md, err := jsonObject(req.Metadata, "metadata")
	if err != nil {
		return nil, err
	}
	t, err := s.updateTeam(r.Context(), r.PathValue("id"), func(ctx context.Context, tx store.Tx, t *store.Team) error {
		if req.TeamAlias != nil {
			t.TeamAlias = *req.TeamAlias
		}
		if md != nil {
			t.Metadata = md
		}
		if groups != nil {
			resolved, err := resolveGroups(ctx, tx, *groups)
			if err != nil {
				return err
			}
			t.SaaS.ModelGroups = resolved
			t.Models = teamModels(resolved)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return teamView(&t), nil
}

// teamUsage is GET /api/teams/{id}/usage?period=YYYY-MM.
func (s *Service) teamUsage(r *http.Request) (any, error) {
	period := r.URL.Query().Get("period")
	if !periodPattern.MatchString(period) {
		return nil, fail(http.StatusUnprocessableEntity, "period is required, as YYYY-MM")
	}
	t, err := getSaaSTeam(r.Context(), s.st.Read(), r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	u, byType, err := s.usage(r.Context(), t.TeamID, period)
	if err != nil {
		return nil, err
	}
	avg := 0.0
	if u.TotalJobs > 0 {
		avg = u.TotalCostUSD / float64(u.TotalJobs)
	}
	return map[string]any{"team_id": t.TeamID, "period": period, "summary": map[string]any{
		"total_jobs": u.TotalJobs, "successful_jobs": u.SuccessfulJobs, "failed_jobs": u.FailedJobs,
		"credits_used": u.CreditsUsed, "total_tokens": u.TotalTokens, "total_cost_usd": u.TotalCostUSD,
		"avg_cost_per_job": avg,
	}, "job_types": byType}, nil
}

// addCreditsBody is POST /api/credits/add {team_id, amount, description}
// (the admin dashboard's form of /api/credits/teams/{id}/add).
func (s *Service) addCreditsBody(r *http.Request) (any, error) {
	var req struct {
		TeamID        string          `json:"team_id"`
		Amount        *int64          `json:"amount"`
		CreditsAmount *int64          `json:"credits_amount"`
		Description   string          `json:"description"`
		Reason        string          `json:"reason"`
		Metadata      json.RawMessage `json:"metadata"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	amount := req.CreditsAmount
	if amount == nil {
		amount = req.Amount
	}
	reason := req.Reason
	if reason == "" {
		reason = req.Description
	}
	if req.TeamID == "" {
		return nil, fail(http.StatusUnprocessableEntity, "team_id is required")
	}
	return s.grant(r.Context(), req.TeamID, amount, reason, req.Metadata)
}

// balance is a team's balance for the admin (proxies answer the team's key).
func (s *Service) balance(r *http.Request) (any, error) {
	id := r.PathValue("id")
	if id == "" {
		id = r.URL.Query().Get("team_id")
	}
	t, err := getSaaSTeam(r.Context(), s.st.Read(), id)
	if err != nil {
		return nil, err
	}
	sa := t.SaaS
	return map[string]any{"team_id": t.TeamID, "organization_id": t.OrganizationID, "status": sa.Status,
		"credits_allocated": sa.CreditsAllocated, "credits_used": sa.CreditsUsed, "credits_remaining": sa.CreditsRemaining}, nil
}

func (s *Service) transactions(r *http.Request) (any, error) {
	t, err := getSaaSTeam(r.Context(), s.st.Read(), r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	b, err := s.ListTransactions(r.Context(), t.TeamID, limit)
	if err != nil {
		return nil, err
	}
	return json.RawMessage(b), nil
}

func (s *Service) setStatus(status, verb string) func(r *http.Request) (any, error) {
	return func(r *http.Request) (any, error) {
		t, err := s.updateTeam(r.Context(), r.PathValue("id"), func(_ context.Context, _ store.Tx, t *store.Team) error {
			t.SaaS.Status = status
			return nil
		})
		if err != nil {
			return nil, err
		}
		return map[string]any{"team_id": t.TeamID, "status": status, "message": "Team '" + t.TeamID + "' has been " + verb}, nil
	}
}

func (s *Service) addCredits(r *http.Request) (any, error) {
	var req struct {
		CreditsAmount *int64          `json:"credits_amount"`
		Credits       *int64          `json:"credits"` // SaaS LiteLLM's first name for it
		Reason        string          `json:"reason"`
		Metadata      json.RawMessage `json:"metadata"`
	}
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	amount := req.CreditsAmount
	if amount == nil {
		amount = req.Credits
	}
	return s.grant(r.Context(), r.PathValue("id"), amount, req.Reason, req.Metadata)
}

// grant adds credits to a team with a transaction row; the team's budget
// follows.
func (s *Service) grant(ctx context.Context, teamID string, amount *int64, reason string, metadata json.RawMessage) (any, error) {
	if amount == nil || *amount <= 0 || *amount > 1e12 {
		return nil, fail(http.StatusUnprocessableEntity, "credits_amount must be a positive integer")
	}
	if len(reason) > 1024 {
		return nil, fail(http.StatusUnprocessableEntity, "reason too long")
	}
	if reason == "" {
		reason = "Manual credit allocation"
	}
	md, err := jsonObject(metadata, "metadata")
	if err != nil {
		return nil, err
	}
	var txn store.CreditTransaction
	t, err := s.updateTeam(ctx, teamID, func(ctx context.Context, tx store.Tx, t *store.Team) error {
		sa := t.SaaS
		before := sa.CreditsRemaining
		if sa.CreditsAllocated > maxCredits-*amount || (s.rate > 0 && sa.CreditsAllocated+*amount > math.MaxInt64/s.rate) {
			return fail(http.StatusUnprocessableEntity, "credits_allocated would exceed 10^12 credits or the largest budget")
		}
		sa.CreditsAllocated += *amount
		sa.CreditsRemaining += *amount
		t.Limits.MaxBudget = s.budget(sa)
		txn = store.CreditTransaction{
			TransactionID: events.NewID(), TeamID: t.TeamID, OrganizationID: t.OrganizationID,
			Type: store.CreditAllocation, Amount: *amount, BalanceBefore: before, BalanceAfter: sa.CreditsRemaining,
			Reason: reason, Metadata: md, CreatedAt: s.now().UTC(),
		}
		return tx.AddCreditTransaction(ctx, txn)
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"team_id": t.TeamID, "credits_added": *amount,
		"credits_allocated": t.SaaS.CreditsAllocated, "credits_remaining": t.SaaS.CreditsRemaining,
		"transaction": txView(&txn),
	}, nil
}

// refuseReusedTeamID is a 409 when teamID has jobs or credit transactions
// left by a deleted team.
func refuseReusedTeamID(ctx context.Context, r store.Reader, teamID string) error {
	if _, n, err := r.ListJobs(ctx, store.JobFilter{TeamID: teamID, Page: store.Page{Page: 1, Size: 1}}); err != nil {
		return err
	} else if n > 0 {
		return fail(http.StatusConflict, "Team '%s' was used before and has job history; choose another team_id", teamID)
	}
	if _, n, err := r.ListCreditTransactions(ctx, teamID, store.Page{Page: 1, Size: 1}); err != nil {
		return err
	} else if n > 0 {
		return fail(http.StatusConflict, "Team '%s' was used before and has credit history; choose another team_id", teamID)
	}
	return nil
}

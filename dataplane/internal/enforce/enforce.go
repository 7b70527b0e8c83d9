package enforce

import (
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// Route is an LLM API route, independent of the /v1 prefix.
type Route uint8

// Routes the proxy serves with a virtual key.
const (
	RouteChat Route = iota + 1
	RouteCompletions
	RouteEmbeddings
	RouteModels
	// RouteResponses is the OpenAI Responses API (POST /responses).
	RouteResponses
	// RouteResponseItem is /responses/{id} and what lies under it (GET,
	// DELETE, POST .../cancel): no model in the request, the upstream is
	// the one that created the response.
	RouteResponseItem
	// RouteMessages is Anthropic's Messages API (POST /messages).
	RouteMessages
	RouteCountTokens
	RouteImages
	RouteSpeech
	RouteTranscriptions
	RouteModerations
	RouteRerank
	numRoutes
)

// NumRoutes bounds Route values (for label tables indexed by Route).
const NumRoutes = int(numRoutes)

var routePaths = [...]string{
	RouteChat:           "/chat/completions",
	RouteCompletions:    "/completions",
	RouteEmbeddings:     "/embeddings",
	RouteModels:         "/models",
	RouteResponses:      "/responses",
	RouteResponseItem:   "/responses/{id}",
	RouteMessages:       "/messages",
	RouteCountTokens:    "/messages/count_tokens",
	RouteImages:         "/images/generations",
	RouteSpeech:         "/audio/speech",
	RouteTranscriptions: "/audio/transcriptions",
	RouteModerations:    "/moderations",
	RouteRerank:         "/rerank",
}

// Path is the route's OpenAI path without /v1: what is appended to an
// upstream api_base.
func (r Route) Path() string {
	if r > 0 && r < numRoutes {
		return routePaths[r]
	}
	return ""
}

// RouteOf maps a request path to its route (0 when it is not an LLM route).
func RouteOf(path string) Route {
	switch path {
	case "/chat/completions", "/v1/chat/completions":
		return RouteChat
	case "/completions", "/v1/completions":
		return RouteCompletions
	case "/embeddings", "/v1/embeddings":
		return RouteEmbeddings
	case "/models", "/v1/models":
		return RouteModels
	case "/responses", "/v1/responses":
		return RouteResponses
	case "/messages", "/v1/messages":
		return RouteMessages
	case "/messages/count_tokens", "/v1/messages/count_tokens":
		return RouteCountTokens
	case "/images/generations", "/v1/images/generations":
		return RouteImages
	case "/audio/speech", "/v1/audio/speech":
		return RouteSpeech
	case "/audio/transcriptions", "/v1/audio/transcriptions":
		return RouteTranscriptions
	case "/moderations", "/v1/moderations":
		return RouteModerations
	case "/rerank", "/v1/rerank", "/v2/rerank":
		return RouteRerank
	}
	if id := ResponseID(path); id != "" {
		return RouteResponseItem
	}
	return 0
}

// ResponseID returns the response id of a /responses/{id}[/...] path
// ("" for any other path).
func ResponseID(path string) string {
	rest, ok := strings.CutPrefix(path, "/v1")
	if !ok {
		rest = path
	}
	rest, ok = strings.CutPrefix(rest, "/responses/")
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, "/")
	return id
}

// Enforcer makes the per-request decision from the synced state. It holds no
// per-request state and is safe for concurrent use.
//
// The order of checks is DESIGN.md's: key format, key known, blocked or
// expired, team / user / org blocked, route (Authenticate, headers only, so an
// unauthenticated caller never makes the proxy read a body); then model,
// enforced params and budgets (Authorize). Rate limits and leased budgets are
// a separate gate the proxy calls after Authorize. Nothing here counts or
// reserves anything, so a rejected request consumes nothing.
type Enforcer struct {
	State state.Reader
	// Master, when set, holds the master key's hash: the master key is
	// then accepted as MasterKey (master.go).
	Master *MasterHash

	general atomic.Pointer[generalParams]
}

// Principal is who is calling: the key and the objects it belongs to. Team,
// User and Org are nil when the key has none (or the user has no record).
type Principal struct {
	Key  state.KeyInfo
	Team *state.Team
	User *state.User
	Org  *state.Org
	// NowUnix is the clock Authenticate checked expiry with; budgets use it
	// to honour a budget_reset_at that has passed before the control plane
	// has reset the spend.
	NowUnix int64
	// EndUserID is the body's "user" when a budget applies to it (its own
	// max_budget, else max_end_user_budget; Authorize sets it), with its
	// synced spend and that budget (nano-USD), for the gate's reservation.
	// "" when none applies.
	EndUserID     string
	EndUserSpend  int64
	EndUserBudget int64
	// RateEndUser is the body's end user when it has rate limits (from its
	// budget), for the gate; nil otherwise.
	RateEndUser *state.EndUser
	// ModelBudget is the key's model_max_budget for the requested model
	// (nano-USD) when HasModelBudget, and ModelSpend the key's synced
	// spend on it, set by Authorize for the gate's reservation. (A flag, so
	// that a zero Principal has no budget.)
	ModelBudget    int64
	ModelSpend     int64
	HasModelBudget bool
	// MemberBudget is the key's user's budget in the key's team
	// (max_budget_in_team, else the team's team_member_budget) when
	// HasMemberBudget, and MemberSpend its synced spend there, set by the
	// budget check for the gate's reservation.
	MemberBudget    int64
	MemberSpend     int64
	HasMemberBudget bool

	// hash is the key's SHA-256. It lives here, in memory the caller
	// already owns, because a pointer handed to an interface method
	// escapes: a local would cost an allocation per request.
	hash [32]byte
}

var emptyPolicy state.Policy

func (p *Principal) policy() *state.Policy {
	if p.Key.Policy == nil {
		return &emptyPolicy
	}
	return p.Key.Policy
}

// Authenticate runs the header-only checks for key (the presented secret, ""
// when none) calling path. On success it fills p and returns nil.
func (e *Enforcer) Authenticate(key, path string, nowMilli int64, p *Principal) *Rejection {
	nowUnix := nowMilli / 1000 // expiry and budgets count whole seconds; grace periods milliseconds
	if key == "" {
		return RejMissingKey
	}
	if keys.Validate(key) != nil {
		return RejMalformedKey
	}
	// Hash from a stack copy: converting the string to []byte directly
	// would allocate (keys are longer than the compiler's 32-byte
	// stack-conversion buffer). Validate bounded the length.
	var buf [keys.MaxLen]byte
	p.hash = sha256.Sum256(buf[:copy(buf[:], key)])
	k, ok := e.State.LookupKey(&p.hash, nowMilli)
	if !ok {
		if !e.Master.matches(&p.hash) {
			return RejInvalidKey
		}
		k = masterKey
	}
	p.Key, p.Team, p.User, p.Org, p.NowUnix = k, nil, nil, nil, nowUnix
	p.EndUserID, p.EndUserSpend, p.EndUserBudget, p.RateEndUser = "", 0, -1, nil
	p.ModelBudget, p.ModelSpend, p.HasModelBudget = 0, 0, false
	p.MemberBudget, p.MemberSpend, p.HasMemberBudget = 0, 0, false
	if k.Blocked {
		return RejKeyBlocked
	}
	if k.ExpiresUnix != 0 && nowUnix >= k.ExpiresUnix {
		return RejKeyExpired
	}
	orgID := k.OrganizationID
	if k.TeamID != "" {
		// A key whose team is gone is dead: fail closed.
		t, ok := e.State.Team(k.TeamID)
		if !ok || t.Blocked {
			return RejTeamBlocked
		}
		// A SaaS team that is suspended, paused or out of credits makes
		// no call, on any route.
		if t.SaaS != nil && t.SaaS.Refused() {
			return RejTeamSuspended
		}
		p.Team = t
		if orgID == "" {
			orgID = t.OrganizationID
		}
	}
	if k.UserID != "" {
		// user_id is free-form in LiteLLM; a key may name a user without
		// a record, which restricts nothing.
		if u, ok := e.State.User(k.UserID); ok {
			if u.Blocked {
				return RejUserBlocked
			}
			p.User = u
		}
	}
	if orgID != "" {
		o, ok := e.State.Org(orgID)
		if !ok || o.Blocked {
			return RejOrgBlocked
		}
		p.Org = o
	}
	if !routeAllowed(p.policy().AllowedRoutes, path) {
		return RejRouteForbidden
	}
	return nil
}

// routeAllowed: empty allows the LLM routes; "llm_api_routes" and
// "openai_routes" name them all; otherwise an exact path (with or without
// /v1) or a prefix ending in "*".
func routeAllowed(allowed []string, path string) bool {
	if len(allowed) == 0 {
		return true
	}
	alt := path
	if strings.HasPrefix(path, "/v1/") {
		alt = path[3:]
	}
	for _, a := range allowed {
		switch {
		case a == "llm_api_routes" || a == "openai_routes":
			return true
		case a == path || a == alt || (strings.HasPrefix(a, "/v1/") && a[3:] == alt):
			return true
		case strings.HasSuffix(a, "*") && (strings.HasPrefix(path, a[:len(a)-1]) || strings.HasPrefix(alt, a[:len(a)-1])):
			return true
		}
	}
	return false
}

// ModelAllowed reports whether the principal may call the public model name
// (key ∩ team ∩ org, plus the user's models for a key without a team, as
// LiteLLM checks them). It does not check that the model exists.
func (e *Enforcer) ModelAllowed(p *Principal, model string) bool {
	return e.modelDenied(p, model) == ""
}

// modelDenied returns the error type of the first list that refuses model.
func (e *Enforcer) modelDenied(p *Principal, model string) string {
	if !e.allows(p.policy().Models, model) {
		return TypeKeyModel
	}
	if p.Team != nil && !e.allows(p.Team.Models, model) {
		return TypeTeamModel
	}
	if p.Team == nil && p.User != nil && !e.allows(p.User.Models, model) {
		return TypeUserModel
	}
	if p.Org != nil && !e.allows(p.Org.Models, model) {
		return TypeOrgModel
	}
	return ""
}

// allows: an empty list allows every model; "all-proxy-models" (and a key's
// "all-team-models", which defers to the team) too; entries match exactly,
// as a prefix when they end in "*" ("openai/*"), or as an access group.
func (e *Enforcer) allows(list []string, model string) bool {
	if len(list) == 0 {
		return true
	}
	for _, m := range list {
		if m == model || m == "all-proxy-models" || m == "all-team-models" || m == "*" {
			return true
		}
		if n := len(m); n > 1 && m[n-1] == '*' && strings.HasPrefix(model, m[:n-1]) {
			return true
		}
	}
	for _, m := range list {
		for _, g := range e.State.AccessGroup(m) {
			if g == model {
				return true
			}
		}
	}
	return false
}

// Authorize runs the body checks for an authenticated principal: model
// allowed and deployed, enforced params, budgets. It returns the model's
// deployments (at least one).
func (e *Enforcer) Authorize(p *Principal, b *Body) ([]*state.Model, *Rejection) {
	// A team model alias stands for its model in every check that follows
	// (LiteLLM resolves it before access checks).
	if t := p.Team; t != nil && b.Alias == "" {
		if m, ok := t.ModelAliases[b.Model]; ok {
			b.Alias, b.Model = b.Model, m
		}
	}
	if typ := e.modelDenied(p, b.Model); typ != "" {
		return nil, modelRejection(typ, b.Model)
	}
	deps := e.State.Deployments(b.Model)
	if len(deps) == 0 {
		return nil, New(ModelUnknown, http.StatusBadRequest, TypeInvalid,
			"Invalid model name passed in model="+clip(b.Model)+". Call `/v1/models` to view available models for your key.", "model")
	}
	if r := e.checkParams(p, b); r != nil {
		return nil, r
	}
	if r := checkBudgets(p); r != nil {
		return nil, r
	}
	if r := e.checkEndUser(p, b); r != nil {
		return nil, r
	}
	if r := e.checkModelBudget(p, b.Model); r != nil {
		return nil, r
	}
	return deps, nil
}

func modelRejection(typ, model string) *Rejection {
	who := "key"
	switch typ {
	case TypeTeamModel:
		who = "team"
	case TypeUserModel:
		who = "user"
	case TypeOrgModel:
		who = "organization"
	}
	// The lists themselves are not echoed: they can name access groups
	// and models of objects the caller does not administer.
	return New(ModelForbidden, http.StatusUnauthorized, typ,
		who+" not allowed to access model. Tried to access "+clip(model), "model")
}

// clip bounds request data echoed in an error message.
func clip(s string) string {
	if len(s) > 128 {
		return s[:128] + "..."
	}
	return s
}

type generalParams struct {
	src         *state.Settings
	enforceUser bool
	params      []string
}

// generalFor caches the parse of general_settings per published Settings
// object (immutable), so requests never decode it.
func (e *Enforcer) generalFor(s *state.Settings) *generalParams {
	if g := e.general.Load(); g != nil && g.src == s {
		return g
	}
	g := &generalParams{src: s}
	var raw struct {
		EnforcedParams   []string `json:"enforced_params"`
		EnforceUserParam bool     `json:"enforce_user_param"`
	}
	if len(s.Raw) > 0 {
		// Field by field, so one malformed field does not disable the other.
		var fields map[string]json.RawMessage
		if json.Unmarshal(s.Raw, &fields) == nil {
			_ = json.Unmarshal(fields["enforced_params"], &raw.EnforcedParams)
			_ = json.Unmarshal(fields["enforce_user_param"], &raw.EnforceUserParam)
		}
	}
	g.enforceUser, g.params = raw.EnforceUserParam, raw.EnforcedParams
	e.general.Store(g)
	return g
}

func (e *Enforcer) checkParams(p *Principal, b *Body) *Rejection {
	s := e.State.Settings()
	if s != nil && p.Key.ServiceAccount {
		for _, name := range s.ServiceAccountEnforcedParams {
			if !b.HasPath(name) {
				return missingParam(name,
					"BadRequest please pass param="+name+" in request body. This is a required param for service account")
			}
		}
	}
	if s != nil {
		g := e.generalFor(s)
		if g.enforceUser {
			if v, ok := b.Lookup("user"); !ok || string(b.Raw(v)) == "null" {
				return missingParam("user", "'user' param not passed in. 'enforce_user_param'=True")
			}
		}
		if r := requireAll(b, g.params); r != nil {
			return r
		}
	}
	return requireAll(b, p.policy().EnforcedParams)
}

func requireAll(b *Body, params []string) *Rejection {
	for _, name := range params {
		if b.HasPath(name) {
			continue
		}
		shown := name
		if strings.Contains(name, ".") {
			// LiteLLM names nested params as [metadata][generation_name].
			shown = "[" + strings.ReplaceAll(name, ".", "][") + "]"
		}
		return missingParam(name, "BadRequest please pass param="+shown+" in request body. This is a required param")
	}
	return nil
}

func missingParam(param, msg string) *Rejection {
	return New(MissingParam, http.StatusBadRequest, TypeBadRequest, msg, param)
}

// KeyBudgetMessage is a key's budget_exceeded message: the wording of
// LiteLLM's BudgetExceededError, then the one its key check raises
// (ExceededTokenBudget), so scripts matching either recognise it.
func KeyBudgetMessage(spend, max string) string {
	return "Budget has been exceeded! Current cost: " + spend + ", Max budget: " + max +
		" (ExceededTokenBudget: Current spend for token: " + spend + "; Max Budget for Token: " + max + ")"
}

// checkBudgets is the local budget check: spend as last synced against
// max_budget (a scope whose budget_reset_at has passed counts as zero spend
// until the control plane resets it). The rate-limit gate then reserves an
// estimate per in-flight request against what remains.
func checkBudgets(p *Principal) *Rejection {
	now := p.NowUnix
	k := &p.Key
	if s := EffectiveSpend(k.Limits, k.Spend, now); over(k.Limits, s) {
		return budgetRejection(KeyBudgetMessage(usd(s), usd(k.Limits.MaxBudget)), "")
	}
	if t := p.Team; t != nil {
		// A SaaS team's limit is its credits (Authenticate refused one
		// without credits): its max_budget, credits_allocated × the credit
		// rate, is the LiteLLM-side figure and never refuses a team that
		// has credits left (a job costs one credit, whatever its calls cost).
		if s := EffectiveSpend(t.Limits, t.Spend, now); t.SaaS == nil && over(t.Limits, s) {
			return budgetRejection("Budget has been exceeded! Team="+t.TeamID+" Current cost: "+usd(s)+", Max budget: "+usd(t.Limits.MaxBudget), "")
		}
		// The key's user as a member of the team: max_budget_in_team, else
		// the team's team_member_budget.
		p.MemberBudget, p.MemberSpend, p.HasMemberBudget = 0, 0, false
		if k.UserID != "" {
			if m, ok := t.Member(k.UserID); ok {
				limit := m.MaxBudgetInTeam
				if limit < 0 {
					limit = t.TeamMemberBudget
				}
				p.MemberBudget, p.MemberSpend, p.HasMemberBudget = limit, m.Spend, limit >= 0
				if limit >= 0 && m.Spend >= limit {
					return budgetRejection("Budget has been exceeded! User="+k.UserID+" in Team="+t.TeamID+" Current cost: "+usd(m.Spend)+", Max budget: "+usd(limit), "")
				}
			}
		}
	}
	// A team key spends the team's budget, not its user's personal one.
	if u := p.User; u != nil && p.Team == nil {
		if s := EffectiveSpend(u.Limits, u.Spend, now); over(u.Limits, s) {
			return budgetRejection("ExceededBudget: User="+u.UserID+" over budget. Spend="+usd(s)+", Budget="+usd(u.Limits.MaxBudget), "")
		}
	}
	if o := p.Org; o != nil {
		if s := EffectiveSpend(o.Limits, o.Spend, now); over(o.Limits, s) {
			return budgetRejection("Budget has been exceeded! Organization="+o.OrganizationID+" Current cost: "+usd(s)+", Max budget: "+usd(o.Limits.MaxBudget), "")
		}
	}
	return nil
}

// checkEndUser refuses a request whose body "user" names a blocked end user
// or one whose synced spend is at or above its max_budget, else
// general_settings.max_end_user_budget (an end user never seen has spent
// nothing). One map lookup; nothing when the body has no "user".
func (e *Enforcer) checkEndUser(p *Principal, b *Body) *Rejection {
	p.EndUserID, p.EndUserSpend, p.EndUserBudget, p.RateEndUser = "", 0, -1, nil
	if !b.User.Present() {
		return nil
	}
	id := b.EndUser()
	if id == "" {
		return nil
	}
	var spend int64
	limit := int64(-1)
	if u, ok := e.State.EndUser(id); ok {
		if u.Blocked {
			// LiteLLM's wording; 403 (LiteLLM answers 400): a block is a
			// refusal by policy, and a client must not retry it as it would
			// a 429.
			return New(EndUserBlocked, http.StatusForbidden, TypeAuth,
				"User blocked from making LLM API Calls. User="+clip(id), "user")
		}
		spend, limit = u.Spend, u.MaxBudget
		if u.HasRPM || u.HasTPM {
			p.RateEndUser = u
		}
	}
	if limit < 0 {
		if s := e.State.Settings(); s != nil && s.HasMaxEndUserBudget {
			limit = s.MaxEndUserBudget
		}
	}
	if limit < 0 {
		return nil
	}
	if spend >= limit {
		return budgetRejection("ExceededBudget: End User="+clip(id)+" over budget. Spend="+usd(spend)+", Budget="+usd(limit), "user")
	}
	p.EndUserID, p.EndUserSpend, p.EndUserBudget = id, spend, limit
	return nil
}

// checkModelBudget refuses model when the key's synced spend on it is at or
// above its model_max_budget. The per-model spend is reset with the key's
// spend (budget_duration), so a key budget_reset_at that has passed counts
// it as zero too.
func (e *Enforcer) checkModelBudget(p *Principal, model string) *Rejection {
	p.ModelBudget, p.ModelSpend, p.HasModelBudget = 0, 0, false
	mb, ok := p.policy().ModelMaxBudget[model]
	if !ok || mb.BudgetLimit < 0 {
		return nil
	}
	k := &p.Key
	synced := e.State.KeyModelSpend(k.TokenID, model)
	p.ModelBudget, p.ModelSpend, p.HasModelBudget = mb.BudgetLimit, synced, true
	spend := EffectiveSpend(k.Limits, synced, p.NowUnix)
	if spend >= mb.BudgetLimit {
		return budgetRejection("LiteLLM Virtual Key: "+k.TokenID+", exceeded budget for model="+clip(model)+
			". Current cost: "+usd(spend)+", Max budget: "+usd(mb.BudgetLimit), "model")
	}
	return nil
}

// EffectiveSpend is the spend a budget check counts: zero once
// budget_reset_at has passed (the control plane resets the stored spend;
// the proxy does not wait for it).
func EffectiveSpend(l state.Limits, spend, nowUnix int64) int64 {
	if l.BudgetResetAtUnix > 0 && nowUnix >= l.BudgetResetAtUnix {
		return 0
	}
	return spend
}

func over(l state.Limits, spend int64) bool { return l.MaxBudget >= 0 && spend >= l.MaxBudget }

// USD formats nano-USD as dollars, as budget messages show them.
func USD(nanos int64) string { return usd(nanos) }

// BudgetRejection is a 429 budget_exceeded with msg.
func BudgetRejection(msg string) *Rejection { return budgetRejection(msg, "") }

func usd(nanos int64) string { return strconv.FormatFloat(money.ToUSD(nanos), 'f', -1, 64) }

// budgetRejection is a 429 (issue 5: a budget is a limit on use, like a
// rate limit; LiteLLM answers 400, which clients treat as a bad request and
// do not back off from).
func budgetRejection(msg, param string) *Rejection {
	return New(BudgetExceeded, http.StatusTooManyRequests, TypeBudget, msg, param)
}

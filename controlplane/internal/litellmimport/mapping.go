package litellmimport

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/nacl/secretbox"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/config"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/duration"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
)

// Options tune Map.
type Options struct {
	// Now stamps objects LiteLLM gave no creation time; zero means time.Now.
	Now time.Time
	// Config is the LiteLLM config file, when given: its model_list and
	// general_settings are imported too.
	Config *config.Config
	// SaltKey decrypts litellm_params of models stored in the database
	// (LITELLM_SALT_KEY, or LiteLLM's master key when no salt key was set).
	SaltKey string
}

// Plan is the Tollgate state a LiteLLM database maps to, and what could not
// be carried over.
type Plan struct {
	Organizations   []store.Organization
	Teams           []store.Team
	Users           []store.User
	Keys            []store.Key
	Models          []store.Model
	EndUsers        []store.EndUser
	GeneralSettings json.RawMessage

	// Unsupported counts objects (or fields of objects) Tollgate does not
	// carry over, by a description of the feature.
	Unsupported map[string]int
	// Notes are warnings about individual objects (dropped values).
	Notes []string
}

// BehaviourDifferences are the ways Tollgate acts differently from LiteLLM
// on imported objects; printed with every import.
var BehaviourDifferences = []string{
	"budget resets happen exactly at budget_reset_at on every proxy (LiteLLM resets in a periodic job, up to its interval late)",
	"budgets and rate limits hold across all proxies together (leases); LiteLLM enforces them per replica from a cached spend",
	"a blocked or deleted key stops working on every proxy within milliseconds (LiteLLM caches keys for up to user_api_key_cache_ttl)",
	"spend totals are imported, per-request history (LiteLLM_SpendLogs) is not; re-imports keep the higher of Tollgate's and LiteLLM's spend, or Tollgate's after a Tollgate budget reset",
	"end users' max_budget and blocked are enforced by every proxy; a blocked end user gets 403 and one over budget 429 (LiteLLM answers 400 to both); end users have no budget period",
	"a team without team_member_permissions lets its members with role user manage their own keys in the team as the role table allows (LiteLLM's default is read-only, [/key/info, /key/health]); lists that are set are imported and enforced",
	"models listed on keys, teams and users are checked by exact name (plus all-proxy-models, all-team-models and *); wildcard routes like openai/* are not expanded",
}

// TokenID is the deterministic token id of an imported key: re-imports find
// the same key.
func TokenID(hash string) string {
	sum := sha256.Sum256([]byte("litellm:" + hash))
	return hex.EncodeToString(sum[:])[:32]
}

type mapper struct {
	opt     Options
	now     time.Time
	budgets map[string]Budget
	plan    *Plan
}

func (m *mapper) unsupported(feature string, n int) {
	if n > 0 {
		m.plan.Unsupported[feature] += n
	}
}

func (m *mapper) note(format string, args ...any) {
	m.plan.Notes = append(m.plan.Notes, fmt.Sprintf(format, args...))
}

// Map converts what Read returned (and the config, if any) into Tollgate
// objects. It is pure: no I/O.
func Map(src *Source, opt Options) *Plan {
	m := &mapper{opt: opt, now: opt.Now, budgets: map[string]Budget{}, plan: &Plan{Unsupported: map[string]int{}}}
	if m.now.IsZero() {
		m.now = time.Now()
	}
	m.now = m.now.UTC().Truncate(time.Microsecond)
	for _, b := range src.Budgets {
		m.budgets[b.BudgetID] = b
	}
	m.orgs(src)
	m.teams(src)
	m.users(src)
	m.keys(src)
	m.models(src)
	m.endUsers(src)
	for tbl, n := range src.Unread {
		m.unsupported(unreadDescription(tbl), n)
	}
	return m.plan
}

func unreadDescription(tbl string) string {
	switch tbl {
	case "LiteLLM_TagTable":
		return "tag budgets (LiteLLM_TagTable)"
	case "LiteLLM_ProjectTable":
		return "projects (LiteLLM_ProjectTable)"
	case "LiteLLM_CredentialsTable":
		return "stored credentials (LiteLLM_CredentialsTable): reference them as os.environ/NAME"
	case "LiteLLM_JWTKeyMapping":
		return "JWT to key mappings (LiteLLM_JWTKeyMapping)"
	case "LiteLLM_Config":
		return "settings stored in the database (LiteLLM_Config): pass --config"
	case "LiteLLM_SpendLogs":
		return "per-request spend logs (LiteLLM_SpendLogs): totals are imported"
	case "LiteLLM_AuditLog":
		return "audit log rows (LiteLLM_AuditLog)"
	}
	return tbl
}

// usd converts a LiteLLM float to nano-USD; bad values become 0 with a note.
func (m *mapper) usd(what string, v float64) int64 {
	if v < 0 && v > -1e-9 {
		v = 0
	}
	if v > money.MaxUSD && !math.IsInf(v, 1) {
		m.note("%s: %v USD is beyond the largest amount; %v used", what, v, money.MaxUSD)
		v = money.MaxUSD
	}
	n, err := money.FromUSD(v)
	if err != nil {
		m.note("%s: %v is not a valid amount; 0 used", what, v)
		return 0
	}
	return n
}

func (m *mapper) usdPtr(what string, v *float64) *int64 {
	if v == nil {
		return nil
	}
	n := m.usd(what, *v)
	return &n
}

func (m *mapper) durationOf(what, s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	d, err := duration.Parse(s)
	if err != nil {
		m.note("%s: budget_duration %q is not <n>s|m|h|d|w|mo; dropped (the budget no longer resets)", what, s)
		m.unsupported("budget durations Tollgate cannot parse", 1)
		return ""
	}
	return d.String()
}

func limit(v *int64) *int64 {
	if v == nil || *v < 0 {
		return nil
	}
	x := *v
	return &x
}

// limits builds store.Limits from an object's own columns, filling what is
// unset from its budget row (LiteLLM's litellm_budget_table).
func (m *mapper) limits(what string, maxBudget, softBudget *float64, rpm, tpm, parallel *int64, dur string, reset Timestamp, budgetID string) store.Limits {
	if b, ok := m.budgets[budgetID]; ok && budgetID != "" {
		maxBudget = cmpOr(maxBudget, b.MaxBudget)
		softBudget = cmpOr(softBudget, b.SoftBudget)
		rpm, tpm, parallel = cmpOr(rpm, b.RPMLimit), cmpOr(tpm, b.TPMLimit), cmpOr(parallel, b.MaxParallelRequests)
		if dur == "" {
			dur, reset = b.BudgetDuration, b.BudgetResetAt
		}
	}
	l := store.Limits{
		MaxBudget:           m.usdPtr(what+" max_budget", maxBudget),
		SoftBudget:          m.usdPtr(what+" soft_budget", softBudget),
		BudgetDuration:      m.durationOf(what, dur),
		RPMLimit:            limit(rpm),
		TPMLimit:            limit(tpm),
		MaxParallelRequests: limit(parallel),
	}
	if l.BudgetDuration != "" {
		l.BudgetResetAt = reset.Ptr()
		if l.BudgetResetAt == nil {
			d, _ := duration.Parse(l.BudgetDuration)
			t := d.AddTo(m.now)
			l.BudgetResetAt = &t
		}
	}
	return l
}

func cmpOr[T any](a, b *T) *T {
	if a != nil {
		return a
	}
	return b
}

// object returns a JSON object column, or nil when empty or not an object.
func object(r Raw) json.RawMessage {
	if isEmptyJSON(r) {
		return nil
	}
	var v map[string]json.RawMessage
	if json.Unmarshal(r, &v) != nil {
		return nil
	}
	return json.RawMessage(strings.TrimSpace(string(r)))
}

func models(in []string) []string {
	out := make([]string, 0, len(in))
	for _, s := range in {
		if s = strings.TrimSpace(s); s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func created(c, u Timestamp, now time.Time) (time.Time, time.Time) {
	ca, ua := c.Time, u.Time
	if ca.IsZero() {
		ca = now
	}
	if ua.IsZero() || ua.Before(ca) {
		ua = ca
	}
	return ca, ua
}

func (m *mapper) orgs(src *Source) {
	members := map[string][]store.OrgMember{}
	for _, om := range src.OrgMemberships {
		role := om.UserRole
		switch role {
		case "org_admin", store.RoleInternalUser, store.RoleInternalUserViewer:
		default:
			role = store.RoleInternalUser
		}
		members[om.OrganizationID] = append(members[om.OrganizationID], store.OrgMember{UserID: om.UserID, Role: role})
	}
	for _, o := range src.Organizations {
		what := "organization " + o.OrganizationID
		ca, ua := created(o.CreatedAt, o.UpdatedAt, m.now)
		org := store.Organization{
			OrganizationID:    o.OrganizationID,
			OrganizationAlias: o.OrganizationAlias,
			Members:           members[o.OrganizationID],
			Models:            models(o.Models),
			Limits:            m.limits(what, nil, nil, nil, nil, nil, "", Timestamp{}, o.BudgetID),
			Metadata:          object(o.Metadata),
			Spend:             m.usd(what+" spend", o.Spend),
			CreatedAt:         ca,
			UpdatedAt:         ua,
		}
		if org.OrganizationAlias == "" {
			org.OrganizationAlias = o.OrganizationID
		}
		if o.ObjectPermissionID != "" {
			m.unsupported("object permissions (MCP servers, vector stores, agents) on organizations", 1)
		}
		m.plan.Organizations = append(m.plan.Organizations, org)
	}
}

type lmember struct {
	UserID string `json:"user_id"`
	Role   string `json:"role"`
}

func (m *mapper) teams(src *Source) {
	memberships := map[string][]TeamMembership{}
	for _, tm := range src.TeamMemberships {
		memberships[tm.TeamID] = append(memberships[tm.TeamID], tm)
	}
	for _, t := range src.Teams {
		what := "team " + t.TeamID
		ca, ua := created(t.CreatedAt, t.UpdatedAt, m.now)
		team := store.Team{
			TeamID:         t.TeamID,
			TeamAlias:      t.TeamAlias,
			OrganizationID: t.OrganizationID,
			Models:         models(t.Models),
			Limits:         m.limits(what, t.MaxBudget, t.SoftBudget, t.RPMLimit, t.TPMLimit, t.MaxParallelRequests, t.BudgetDuration, t.BudgetResetAt, ""),
			Metadata:       object(t.Metadata),
			Blocked:        t.Blocked,
			Spend:          m.usd(what+" spend", t.Spend),
			CreatedAt:      ca,
			UpdatedAt:      ua,
		}
		// members_with_roles is the source of truth; the legacy admins and
		// members arrays fill in older rows.
		var mwr []lmember
		if !isEmptyJSON(t.MembersWithRoles) {
			if err := json.Unmarshal(t.MembersWithRoles, &mwr); err != nil {
				m.note("%s: members_with_roles is not a list of members; ignored", what)
			}
		}
		add := func(userID, role string) {
			if userID == "" {
				return
			}
			if _, ok := team.Member(userID); ok {
				return
			}
			if role != store.TeamRoleAdmin {
				role = store.TeamRoleUser
			}
			team.Members = append(team.Members, store.TeamMember{UserID: userID, Role: role})
		}
		for _, mm := range mwr {
			add(mm.UserID, mm.Role)
		}
		for _, u := range t.Admins {
			add(u, store.TeamRoleAdmin)
		}
		for _, u := range t.Members {
			add(u, store.TeamRoleUser)
		}
		for _, tm := range memberships[t.TeamID] {
			add(tm.UserID, store.TeamRoleUser)
			for i := range team.Members {
				if team.Members[i].UserID != tm.UserID {
					continue
				}
				team.Members[i].Spend = m.usd(what+" member "+tm.UserID+" spend", tm.Spend)
				if b, ok := m.budgets[tm.BudgetID]; ok && tm.BudgetID != "" {
					team.Members[i].MaxBudgetInTeam = m.usdPtr(what+" member budget", b.MaxBudget)
					if b.RPMLimit != nil || b.TPMLimit != nil || b.BudgetDuration != "" {
						m.unsupported("team member rate limits and budget durations (only max_budget_in_team is kept)", 1)
					}
				}
			}
		}
		if meta := object(t.Metadata); meta != nil {
			var mm map[string]any
			_ = json.Unmarshal(meta, &mm)
			if id, _ := mm["team_member_budget_id"].(string); id != "" {
				if b, ok := m.budgets[id]; ok {
					team.TeamMemberBudget = m.usdPtr(what+" team_member_budget", b.MaxBudget)
				}
			}
		}
		if !isEmptyJSON(t.ModelMaxBudget) || !isEmptyJSON(t.BudgetLimits) {
			m.unsupported("per-model budgets on teams (model_max_budget)", 1)
		}
		if !isEmptyJSON(t.RouterSettings) {
			m.unsupported("team router_settings", 1)
		}
		if len(t.Policies) > 0 || len(t.AccessGroupIDs) > 0 {
			m.unsupported("team policies and access_group_ids", 1)
		}
		if t.ObjectPermissionID != "" {
			m.unsupported("object permissions (MCP servers, vector stores, agents) on teams", 1)
		}
		if t.ModelID != nil {
			m.unsupported("team model aliases (LiteLLM_ModelTable)", 1)
		}
		for _, r := range t.TeamMemberPermissions {
			switch {
			case !slices.Contains(authz.TeamMemberRoutes, r):
				m.note("%s: team_member_permissions entry %q is not a key-management route Tollgate knows; dropped", what, r)
			case !slices.Contains(team.TeamMemberPermissions, r):
				team.TeamMemberPermissions = append(team.TeamMemberPermissions, r)
			}
		}
		m.plan.Teams = append(m.plan.Teams, team)
	}
}

func (m *mapper) users(src *Source) {
	for _, u := range src.Users {
		what := "user " + u.UserID
		ca, ua := created(u.CreatedAt, u.UpdatedAt, m.now)
		role := u.UserRole
		switch role {
		case store.RoleProxyAdmin, store.RoleProxyAdminViewer, store.RoleInternalUser, store.RoleInternalUserViewer:
		case "":
			role = store.RoleInternalUser
		default:
			m.unsupported(fmt.Sprintf("user role %q (imported as internal_user)", role), 1)
			role = store.RoleInternalUser
		}
		user := store.User{
			UserID:    u.UserID,
			UserAlias: u.UserAlias,
			UserEmail: u.UserEmail,
			UserRole:  role,
			Models:    models(u.Models),
			Limits:    m.limits(what, u.MaxBudget, nil, u.RPMLimit, u.TPMLimit, u.MaxParallelRequests, u.BudgetDuration, u.BudgetResetAt, ""),
			Metadata:  object(u.Metadata),
			Spend:     m.usd(what+" spend", u.Spend),
			CreatedAt: ca,
			UpdatedAt: ua,
		}
		if !isEmptyJSON(u.ModelMaxBudget) {
			m.unsupported("per-model budgets on users (model_max_budget)", 1)
		}
		if u.ObjectPermissionID != "" {
			m.unsupported("object permissions (MCP servers, vector stores, agents) on users", 1)
		}
		m.plan.Users = append(m.plan.Users, user)
	}
}

func (m *mapper) keys(src *Source) {
	deprecated := map[string][]store.PreviousHash{}
	for _, d := range src.DeprecatedTokens {
		if d.RevokeAt.After(m.now) && keys.LooksLikeHash(d.Token) {
			deprecated[d.ActiveTokenID] = append(deprecated[d.ActiveTokenID], store.PreviousHash{KeyHash: d.Token, ValidUntil: d.RevokeAt.Time})
		}
	}
	aliases := map[string]string{}
	seen := map[string]bool{}
	for _, k := range src.Keys {
		hash := strings.ToLower(strings.TrimSpace(k.Token))
		if !keys.LooksLikeHash(hash) {
			if strings.HasPrefix(k.Token, keys.Prefix) {
				// Very old LiteLLM versions stored the plaintext.
				hash = keys.Hash(k.Token)
			} else {
				m.unsupported("keys whose token is neither a SHA-256 hex hash nor an sk- key (skipped)", 1)
				continue
			}
		}
		if seen[hash] {
			continue
		}
		seen[hash] = true
		what := "key " + displayOf(k)
		ca, ua := created(k.CreatedAt, k.UpdatedAt, m.now)
		key := store.Key{
			TokenID:          TokenID(hash),
			KeyHash:          hash,
			KeyName:          k.KeyName,
			KeyAlias:         strings.TrimSpace(k.KeyAlias),
			UserID:           k.UserID,
			TeamID:           k.TeamID,
			OrganizationID:   k.OrganizationID,
			Models:           models(k.Models),
			Limits:           m.limits(what, k.MaxBudget, nil, k.RPMLimit, k.TPMLimit, k.MaxParallelRequests, k.BudgetDuration, k.BudgetResetAt, k.BudgetID),
			Metadata:         object(k.Metadata),
			Permissions:      object(k.Permissions),
			AllowedRoutes:    models(k.AllowedRoutes),
			Blocked:          k.Blocked != nil && *k.Blocked,
			Expires:          k.Expires.Ptr(),
			RotationInterval: k.RotationInterval,
			KeyRotationAt:    k.KeyRotationAt.Ptr(),
			LastRotationAt:   k.LastRotationAt.Ptr(),
			PreviousHashes:   deprecated[hash],
			Spend:            m.usd(what+" spend", k.Spend),
			CreatedAt:        ca,
			UpdatedAt:        ua,
			CreatedBy:        k.CreatedBy,
			UpdatedBy:        k.UpdatedBy,
		}
		if key.KeyName == "" {
			key.KeyName = keys.Prefix + "..."
		}
		if k.AutoRotate != nil && *k.AutoRotate {
			key.AutoRotate = true
		}
		if k.RotationCount != nil {
			key.RotationCount = *k.RotationCount
		}
		if key.RotationInterval != "" {
			if d, err := duration.Parse(key.RotationInterval); err == nil {
				key.RotationInterval = d.String()
			} else {
				m.note("%s: rotation_interval %q dropped (not <n>s|m|h|d|w|mo)", what, key.RotationInterval)
				key.RotationInterval, key.AutoRotate = "", false
			}
		}
		if b, ok := m.budgets[k.BudgetID]; ok && k.BudgetID != "" && isEmptyJSON(k.ModelMaxBudget) {
			k.ModelMaxBudget = b.ModelMaxBudget
		}
		key.ModelMaxBudget = m.modelBudgets(what, k.ModelMaxBudget)
		key.ModelSpend = m.modelSpend(what, k.ModelSpend)
		m.fromMetadata(what, &key)
		// The service-account marker LiteLLM sets on /key/service-account/generate.
		if key.UserID == "" && key.TeamID != "" && metaHas(key.Metadata, "service_account_id") {
			key.ServiceAccount = true
		}
		if key.KeyAlias != "" {
			if other, dup := aliases[key.KeyAlias]; dup {
				m.note("%s: key_alias %q is also used by %s; imported without an alias (Tollgate aliases are unique)", what, key.KeyAlias, other)
				m.unsupported("duplicate key aliases (imported without alias)", 1)
				key.KeyAlias = ""
			} else {
				aliases[key.KeyAlias] = what
			}
		}
		if !isEmptyJSON(k.Aliases) {
			m.unsupported("key model aliases (aliases)", 1)
		}
		if !isEmptyJSON(k.Config) {
			m.unsupported("key config overrides (config)", 1)
		}
		if !isEmptyJSON(k.RouterSettings) {
			m.unsupported("key router_settings", 1)
		}
		if len(k.AllowedCacheControls) > 0 {
			m.unsupported("key allowed_cache_controls", 1)
		}
		if len(k.Policies) > 0 || len(k.AccessGroupIDs) > 0 {
			m.unsupported("key policies and access_group_ids", 1)
		}
		if k.ObjectPermissionID != "" {
			m.unsupported("object permissions (MCP servers, vector stores, agents) on keys", 1)
		}
		if k.ProjectID != "" {
			m.unsupported("key project_id (projects)", 1)
		}
		if k.AgentID != "" {
			m.unsupported("key agent_id (agents)", 1)
		}
		if !isEmptyJSON(k.BudgetLimits) {
			m.unsupported("key budget_limits", 1)
		}
		m.plan.Keys = append(m.plan.Keys, key)
	}
}

func displayOf(k Key) string {
	switch {
	case k.KeyAlias != "":
		return strconv.Quote(k.KeyAlias)
	case k.KeyName != "":
		return k.KeyName
	}
	h := k.Token
	if len(h) > 12 {
		h = h[:12]
	}
	return h + "..."
}

func metaHas(meta json.RawMessage, field string) bool {
	var mm map[string]json.RawMessage
	if json.Unmarshal(meta, &mm) != nil {
		return false
	}
	v, ok := mm[field]
	return ok && string(v) != "null" && string(v) != `""`
}

// fromMetadata lifts the fields LiteLLM keeps in a key's metadata into
// Tollgate's key fields (metadata itself is kept as is).
func (m *mapper) fromMetadata(what string, k *store.Key) {
	var mm map[string]json.RawMessage
	if json.Unmarshal(k.Metadata, &mm) != nil {
		return
	}
	strs := func(name string) []string {
		var v []string
		if raw, ok := mm[name]; ok && json.Unmarshal(raw, &v) != nil {
			m.note("%s: metadata.%s is not a list of strings; ignored", what, name)
		}
		return models(v)
	}
	k.Tags = strs("tags")
	k.Guardrails = strs("guardrails")
	k.EnforcedParams = strs("enforced_params")
	perModel := func(name string) map[string]int64 {
		raw, ok := mm[name]
		if !ok || isEmptyJSON(raw) {
			return nil
		}
		var v map[string]float64
		if json.Unmarshal(raw, &v) != nil {
			m.note("%s: metadata.%s is not a map of numbers; ignored", what, name)
			return nil
		}
		out := map[string]int64{}
		for model, n := range v {
			if n >= 0 && n < math.MaxInt32 {
				out[model] = int64(n)
			}
		}
		return out
	}
	k.ModelRPMLimit = perModel("model_rpm_limit")
	k.ModelTPMLimit = perModel("model_tpm_limit")
}

// modelBudgets converts model_max_budget: {"model": {"budget_limit": 1.5,
// "time_period": "1d"}} (or the older {"model": 1.5}).
func (m *mapper) modelBudgets(what string, r Raw) map[string]store.ModelBudget {
	if isEmptyJSON(r) {
		return nil
	}
	var raw map[string]json.RawMessage
	if json.Unmarshal(r, &raw) != nil {
		m.note("%s: model_max_budget is not an object; ignored", what)
		return nil
	}
	out := map[string]store.ModelBudget{}
	for model, v := range raw {
		var f float64
		var cfg struct {
			BudgetLimit json.Number `json:"budget_limit"`
			TimePeriod  string      `json:"time_period"`
		}
		if json.Unmarshal(v, &f) == nil {
			out[model] = store.ModelBudget{BudgetLimit: m.usd(what+" model_max_budget", f)}
			continue
		}
		if json.Unmarshal(v, &cfg) != nil {
			m.note("%s: model_max_budget[%q] unreadable; ignored", what, model)
			continue
		}
		f, err := strconv.ParseFloat(cfg.BudgetLimit.String(), 64)
		if err != nil {
			m.note("%s: model_max_budget[%q].budget_limit unreadable; ignored", what, model)
			continue
		}
		mb := store.ModelBudget{BudgetLimit: m.usd(what+" model_max_budget", f)}
		if cfg.TimePeriod != "" {
			if d, err := duration.Parse(cfg.TimePeriod); err == nil {
				mb.TimePeriod = d.String()
			} else {
				m.note("%s: model_max_budget[%q].time_period %q dropped", what, model, cfg.TimePeriod)
			}
		}
		out[model] = mb
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func (m *mapper) modelSpend(what string, r Raw) map[string]int64 {
	if isEmptyJSON(r) {
		return nil
	}
	var v map[string]float64
	if json.Unmarshal(r, &v) != nil {
		m.note("%s: model_spend is not a map of numbers; ignored", what)
		return nil
	}
	out := map[string]int64{}
	for model, f := range v {
		if n := m.usd(what+" model_spend", f); n > 0 {
			out[model] = n
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// maxIDLen is the longest end-user id (and alias) imported: the API's limit
// on ids, so that /customer/info can name every imported end user.
const maxIDLen = 256

// endUsers converts LiteLLM_EndUserTable rows: spend, alias, blocked, and
// max_budget from the row's LiteLLM_BudgetTable budget.
func (m *mapper) endUsers(src *Source) {
	for _, e := range src.EndUsers {
		what := "end user " + e.UserID
		if e.UserID == "" || len(e.UserID) > maxIDLen {
			m.note("%s: user_id is empty or longer than %d bytes; skipped", what, maxIDLen)
			m.unsupported("end users with an empty or over-long user_id (skipped)", 1)
			continue
		}
		eu := store.EndUser{
			EndUserID: e.UserID,
			Alias:     e.Alias,
			Spend:     m.usd(what+" spend", e.Spend),
			Blocked:   e.Blocked,
			CreatedAt: m.now,
			UpdatedAt: m.now,
		}
		if len(eu.Alias) > maxIDLen {
			m.note("%s: alias longer than %d bytes; dropped", what, maxIDLen)
			eu.Alias = ""
		}
		if e.BudgetID != "" {
			b, ok := m.budgets[e.BudgetID]
			if !ok {
				m.note("%s: budget_id %s is not in LiteLLM_BudgetTable; imported without a budget", what, e.BudgetID)
			} else {
				eu.MaxBudget = m.usdPtr(what+" max_budget", b.MaxBudget)
				if b.RPMLimit != nil || b.TPMLimit != nil || b.MaxParallelRequests != nil || b.BudgetDuration != "" || b.SoftBudget != nil {
					m.unsupported("end-user rate limits, soft budgets and budget durations (only max_budget is kept)", 1)
				}
			}
		}
		m.plan.EndUsers = append(m.plan.EndUsers, eu)
	}
}

// models converts LiteLLM_ProxyModelTable rows by running them through the
// config parser (the same validation as model_list), then adds the config
// file's models (which win on equal ids).
func (m *mapper) models(src *Source) {
	byID := map[string]int{}
	for _, pm := range src.ProxyModels {
		what := "model " + pm.ModelName + " (" + pm.ModelID + ")"
		if pm.Blocked {
			m.unsupported("blocked database models (skipped)", 1)
			continue
		}
		params, encrypted := m.decrypt(pm.LiteLLMParams)
		if encrypted {
			m.note("%s: litellm_params are encrypted and --salt-key did not decrypt them; skipped", what)
			m.unsupported("encrypted database models without the right --salt-key (skipped)", 1)
			continue
		}
		info := map[string]json.RawMessage{}
		if object(pm.ModelInfo) != nil {
			_ = json.Unmarshal(pm.ModelInfo, &info)
		}
		idj, _ := json.Marshal(pm.ModelID)
		info["id"] = idj
		entry := map[string]any{"model_name": pm.ModelName, "litellm_params": params, "model_info": info}
		doc, _ := json.Marshal(map[string]any{"model_list": []any{entry}})
		cfg, err := config.Parse(doc, "LiteLLM_ProxyModelTable")
		if err != nil || len(cfg.Models) != 1 {
			m.note("%s: %v; skipped", what, err)
			m.unsupported("database models Tollgate cannot parse (skipped)", 1)
			continue
		}
		md := cfg.Models[0]
		md.FromConfig = false
		md.CreatedAt, md.UpdatedAt = created(pm.CreatedAt, pm.UpdatedAt, m.now)
		byID[md.ID] = len(m.plan.Models)
		m.plan.Models = append(m.plan.Models, md)
	}
	if m.opt.Config != nil {
		for _, md := range m.opt.Config.Models {
			md.CreatedAt, md.UpdatedAt = m.now, m.now
			if i, ok := byID[md.ID]; ok {
				m.plan.Models[i] = md
				continue
			}
			byID[md.ID] = len(m.plan.Models)
			m.plan.Models = append(m.plan.Models, md)
		}
		m.plan.GeneralSettings = m.opt.Config.GeneralSettings
		for _, w := range m.opt.Config.Warnings {
			m.plan.Notes = append(m.plan.Notes, "config: "+w)
		}
	}
	sort.SliceStable(m.plan.Models, func(i, j int) bool { return m.plan.Models[i].ID < m.plan.Models[j].ID })
}

// decrypt returns litellm_params with string values LiteLLM encrypted
// (nacl secretbox under sha256(salt key), URL-safe base64) decrypted. It
// reports encrypted = true when a value looks encrypted and cannot be
// decrypted.
func (m *mapper) decrypt(r Raw) (map[string]any, bool) {
	params := map[string]any{}
	if err := json.Unmarshal(r, &params); err != nil {
		return params, false
	}
	var key [32]byte
	if m.opt.SaltKey != "" {
		key = sha256.Sum256([]byte(m.opt.SaltKey))
	}
	encrypted := false
	for name, v := range params {
		s, ok := v.(string)
		if !ok {
			continue
		}
		b, err := base64.URLEncoding.DecodeString(s)
		if err != nil || len(b) < 24+secretbox.Overhead {
			continue
		}
		var nonce [24]byte
		copy(nonce[:], b[:24])
		if m.opt.SaltKey != "" {
			if out, ok := secretbox.Open(nil, b[24:], &nonce, &key); ok {
				params[name] = string(out)
				continue
			}
		}
		if name == "model" && !strings.Contains(s, "/") {
			encrypted = true
		}
	}
	return params, encrypted
}

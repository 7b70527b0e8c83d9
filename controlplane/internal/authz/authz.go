// Package authz decides who may do what: one pure function, Decide, per
// (caller, action, target), used by every management call over REST and
// gRPC alike.
//
// # Architecture
//
// Handlers resolve the caller (user, role, team roles, own limits) and the
// target (the stored object before the call and the object the call would
// produce after it) and ask Decide before writing anything. Decide compares
// before and after, so every escalation path (moving a key to another team,
// raising a limit, changing a role, dropping an enforced param) is a
// difference the function sees, whichever endpoint or transport produced it.
// Decide does no I/O and allocates nothing on the allow path.
//
// # Failure modes
//
// A refusal by role is 403. An object the caller may not see is 404, so a
// refusal never tells whether another's object exists. A key that is no
// management credential (service account, no user) gets 401 for anything
// but reading itself. A request wider than
// the caller's own (or its team's) limits is 403; a missing required param
// under key_generation_settings is 400. Nothing is trimmed silently.
package authz

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/settings"
)

// OrgAdmin is the organization role that administers an organization's teams.
const OrgAdmin = "org_admin"

// Caller is an authenticated principal.
type Caller struct {
	// Master is true for the master key.
	Master bool
	// ID is the user id, or "master_key".
	ID string
	// Role is the user's role (proxy_admin for the master key).
	Role string
	// KeyTokenID is the token id of the key the caller authenticated with.
	KeyTokenID string
	// KeyTeamID is the team of that key ("" for a personal key or the
	// master key). A key may always read its own team (selfRead).
	KeyTeamID string
	// KeyOnly marks a caller authenticated by an active key that is no
	// management credential (a service-account key, a key without a user):
	// it may read itself (selfRead) and nothing else. ID and Role are "".
	KeyOnly bool
	// Teams maps the id of every team the caller belongs to to its team role
	// (store.TeamRoleAdmin or store.TeamRoleUser).
	Teams map[string]string
	// TeamPermissions maps the id of a team in which the caller has team
	// role "user" to the team's team_member_permissions, when the team set
	// a non-empty list: the key-management routes (KeyRoutes) the caller may
	// call on its keys in that team. A team absent from the map has no
	// list, and its members may do what the role table allows.
	TeamPermissions map[string][]string
	// Orgs maps organization ids to the caller's organization role
	// (OrgAdmin, internal_user, ...). Handlers fill it for the organizations
	// a call involves.
	Orgs map[string]string
	// Self is the caller's own user record: the ceiling of what it may give
	// its own keys.
	Self Object
}

// Admin reports whether c may do everything (master key or proxy_admin).
func (c *Caller) Admin() bool { return c.Master || c.Role == store.RoleProxyAdmin }

// ReadsAll reports whether c may read every object (admins and
// proxy_admin_viewer).
func (c *Caller) ReadsAll() bool { return c.Admin() || c.Role == store.RoleProxyAdminViewer }

// TeamRole is c's effective role in team (in organization org, "" if
// none): an organization admin is a team admin of the organization's teams.
// It returns "" when c does not belong to the team.
func (c *Caller) TeamRole(team, org string) string {
	if team == "" {
		return ""
	}
	if org != "" && c.Orgs[org] == OrgAdmin {
		return store.TeamRoleAdmin
	}
	return c.Teams[team]
}

// KeyRoutes maps each key action to the route that names it in a team's
// team_member_permissions.
var KeyRoutes = map[Action]string{
	KeyGenerate: "/key/generate", KeyUpdate: "/key/update", KeyDelete: "/key/delete", KeyInfo: "/key/info",
	KeyList: "/key/list", KeyRegenerate: "/key/regenerate", KeyBlock: "/key/block", KeyUnblock: "/key/unblock",
}

// TeamMemberRoutes are the routes team_member_permissions may list
// (LiteLLM's KeyManagementRoutes; /key/health is accepted and unused).
var TeamMemberRoutes = []string{
	"/key/generate", "/key/update", "/key/delete", "/key/info", "/key/list",
	"/key/regenerate", "/key/block", "/key/unblock", "/key/health",
}

// teamPermission refuses a key action a of a team member with role "user"
// in team when the team's team_member_permissions do not list its route.
// Team admins, org admins and teams without a list are not restricted here.
func teamPermission(c *Caller, a Action, team, org string) Decision {
	if team == "" || c.TeamRole(team, org) != store.TeamRoleUser {
		return allow
	}
	perms, ok := c.TeamPermissions[team]
	if !ok || len(perms) == 0 {
		return allow
	}
	route := KeyRoutes[a]
	if route == "" || slices.Contains(perms, route) {
		return allow
	}
	return forbid("team_id", fmt.Sprintf("Team member does not have permission for %s in team %s. Allowed routes (team_member_permissions)=%s", route, team, pyList(perms)))
}

// Action is a management operation: one per endpoint.
type Action string

// Actions. Every management endpoint maps to exactly one.
const (
	KeyGenerate               Action = "key.generate"
	KeyServiceAccountGenerate Action = "key.service_account_generate"
	KeyUpdate                 Action = "key.update"
	KeyDelete                 Action = "key.delete"
	KeyInfo                   Action = "key.info"
	KeyList                   Action = "key.list"
	KeyRegenerate             Action = "key.regenerate"
	KeyBlock                  Action = "key.block"
	KeyUnblock                Action = "key.unblock"

	TeamNew          Action = "team.new"
	TeamUpdate       Action = "team.update"
	TeamDelete       Action = "team.delete"
	TeamMemberAdd    Action = "team.member_add"
	TeamMemberDelete Action = "team.member_delete"
	TeamMemberUpdate Action = "team.member_update"
	TeamBlock        Action = "team.block"
	TeamUnblock      Action = "team.unblock"
	TeamInfo         Action = "team.info"
	TeamList         Action = "team.list"

	UserNew    Action = "user.new"
	UserUpdate Action = "user.update"
	UserDelete Action = "user.delete"
	UserInfo   Action = "user.info"
	UserList   Action = "user.list"

	OrgNew       Action = "organization.new"
	OrgUpdate    Action = "organization.update"
	OrgDelete    Action = "organization.delete"
	OrgMemberAdd Action = "organization.member_add"
	// OrgMemberUpdate and OrgMemberDelete: LiteLLM's PATCH
	// /organization/member_update and DELETE /organization/member_delete.
	OrgMemberUpdate Action = "organization.member_update"
	OrgMemberDelete Action = "organization.member_delete"
	OrgInfo         Action = "organization.info"
	OrgList         Action = "organization.list"

	ModelNew    Action = "model.new"
	ModelUpdate Action = "model.update"
	ModelDelete Action = "model.delete"
	ModelInfo   Action = "model.info"

	SettingsRead   Action = "settings.read"
	SettingsUpdate Action = "settings.update"

	AuditRead Action = "audit.read"
	SpendRead Action = "spend.read"
	// ProxyList reads the connected data-plane proxies (sync state).
	ProxyList Action = "proxy.list"

	// End users (customers): the request body's "user".
	CustomerNew     Action = "customer.new"
	CustomerUpdate  Action = "customer.update"
	CustomerDelete  Action = "customer.delete"
	CustomerBlock   Action = "customer.block"
	CustomerUnblock Action = "customer.unblock"
	CustomerList    Action = "customer.list"

	// Budgets (LiteLLM's budget table): proxy_admin writes,
	// proxy_admin_viewer reads; other roles neither (a budget is a tier an
	// admin assigns; members read the limits on their own objects).
	BudgetNew    Action = "budget.new"
	BudgetUpdate Action = "budget.update"
	BudgetDelete Action = "budget.delete"
	BudgetInfo   Action = "budget.info"
	BudgetList   Action = "budget.list"
)

// Aliases kept for callers written against the first version of this package.
const (
	KeyRead   = KeyInfo
	TeamRead  = TeamInfo
	UserRead  = UserInfo
	OrgRead   = OrgInfo
	ModelRead = ModelInfo
)

// reads are the actions that change nothing.
var reads = map[Action]bool{
	KeyInfo: true, KeyList: true, TeamInfo: true, TeamList: true, UserInfo: true, UserList: true,
	OrgInfo: true, OrgList: true, ModelInfo: true, SettingsRead: true, AuditRead: true, SpendRead: true,
	ProxyList:    true,
	CustomerList: true,
	BudgetInfo:   true, BudgetList: true,
}

// Actions lists every action (for tests that must cover them all).
func Actions() []Action {
	return []Action{
		KeyGenerate, KeyServiceAccountGenerate, KeyUpdate, KeyDelete, KeyInfo, KeyList, KeyRegenerate, KeyBlock, KeyUnblock,
		TeamNew, TeamUpdate, TeamDelete, TeamMemberAdd, TeamMemberDelete, TeamMemberUpdate, TeamBlock, TeamUnblock, TeamInfo, TeamList,
		UserNew, UserUpdate, UserDelete, UserInfo, UserList,
		OrgNew, OrgUpdate, OrgDelete, OrgMemberAdd, OrgMemberUpdate, OrgMemberDelete, OrgInfo, OrgList,
		ModelNew, ModelUpdate, ModelDelete, ModelInfo,
		SettingsRead, SettingsUpdate, AuditRead, SpendRead, ProxyList,
		CustomerNew, CustomerUpdate, CustomerDelete, CustomerBlock, CustomerUnblock, CustomerList,
		BudgetNew, BudgetUpdate, BudgetDelete, BudgetInfo, BudgetList,
	}
}

// IsRead reports whether a changes nothing.
func IsRead(a Action) bool { return reads[a] }

// Object is what a decision needs to know about a key, user, team member,
// team or organization. Fields that do not apply stay zero.
type Object struct {
	// UserID is a key's owner, a user's id, or a team member's user id.
	UserID string
	// TokenID is a key's token_id (keys only).
	TokenID string
	// TeamID is a key's team, a team's id, or the team of a membership.
	TeamID string
	// OrgID is the organization of the object (or of its team).
	OrgID string
	// ServiceAccount marks a team's service-account key.
	ServiceAccount bool
	// Role is a user's user_role, or a member's team role.
	Role string

	// BudgetID is the budget a key or team membership is linked to; its
	// limits come from that budget, so only proxy_admin may change it.
	BudgetID string

	Models         []string
	MaxBudget      *int64 // nano-USD
	RPMLimit       *int64
	TPMLimit       *int64
	MaxParallel    *int64
	BudgetDuration string
	Expires        *time.Time
	Blocked        bool

	AllowedRoutes  []string
	Permissions    bool // a non-empty permissions object
	EnforcedParams []string
	Guardrails     []string
}

// Target is the object of a call.
type Target struct {
	// MasterKey is set when a key call names the master key.
	MasterKey bool
	// Before is the stored object (nil for creations and unfiltered lists).
	// For lists it holds the filters (UserID, TeamID, OrgID).
	Before *Object
	// After is the object the call would store (nil for reads and deletes).
	After *Object
	// Team is the team a key belongs to after the call (nil for personal
	// keys): its limits cap what a non-admin may give the key.
	Team *Object
	// Params are the request fields the caller set (for required_params).
	Params []string
	// KeyGeneration is general_settings.key_generation_settings.
	KeyGeneration settings.KeyGenerationSettings
}

// Decision is the answer. Status is the HTTP status of a refusal (400, 403
// or 404); Param names the offending request field, if any; Reason is safe to
// show the caller.
type Decision struct {
	Allowed bool
	Status  int
	Param   string
	Reason  string
}

var allow = Decision{Allowed: true}

func forbid(param, reason string) Decision {
	return Decision{Status: 403, Param: param, Reason: reason}
}

// hidden is the answer for an object the caller may not see: the same
// status, param and message as for an object that does not exist.
func hidden(what string) Decision {
	param := map[string]string{"key": "key", "team": "team_id", "user": "user_id", "organization": "organization_id", "team member": "user_id"}[what]
	return Decision{Status: 404, Param: param, Reason: what + " not found"}
}

func badParam(param, reason string) Decision {
	return Decision{Status: 400, Param: param, Reason: reason}
}

// Decide is the single authorization decision for every management call.
func Decide(c Caller, a Action, t Target) Decision {
	if t.MasterKey {
		return forbid("key", "the master key cannot be managed through the key API")
	}
	if _, known := reads[a]; !known && !isWrite(a) {
		return forbid("", "unknown action "+string(a))
	}
	if c.KeyTokenID != "" && selfRead(&c, a, t) {
		return allow
	}
	if c.KeyOnly {
		switch a {
		case KeyInfo:
			return hidden("key")
		case TeamInfo:
			return hidden("team")
		}
		return Decision{Status: 401, Reason: "this key can only read itself (/key/info, its team's /team/info, /model/info); management calls need a user's key or the master key"}
	}
	if c.Admin() {
		if a == KeyGenerate || a == KeyServiceAccountGenerate {
			return requiredParams(a, t)
		}
		return allow
	}
	switch c.Role {
	case store.RoleProxyAdminViewer:
		if IsRead(a) && a != AuditRead {
			return allow
		}
		if a == AuditRead {
			return forbid("", "only proxy_admin may read the audit log")
		}
		return forbid("", "proxy_admin_viewer may only read")
	case store.RoleInternalUser, store.RoleInternalUserViewer:
	default:
		return forbid("", "role "+quote(c.Role)+" may not call the management API")
	}
	if !IsRead(a) && c.Role == store.RoleInternalUserViewer {
		return forbid("", "internal_user_viewer may not write, even on its own objects")
	}
	if t.After != nil {
		before := ""
		if t.Before != nil {
			before = t.Before.BudgetID
		}
		if t.After.BudgetID != before {
			return forbid("budget_id", "only proxy_admin may link an object to a budget or unlink it")
		}
	}
	switch a {
	case KeyGenerate, KeyServiceAccountGenerate:
		return keyCreate(&c, a, t)
	case KeyUpdate, KeyDelete, KeyInfo, KeyRegenerate, KeyBlock, KeyUnblock:
		return keyObject(&c, a, t)
	case KeyList, SpendRead:
		if f := t.Before; f != nil {
			if f.TeamID != "" && c.TeamRole(f.TeamID, f.OrgID) == store.TeamRoleAdmin {
				return allow // a team admin lists its team's keys
			}
			if a == KeyList {
				if d := teamPermission(&c, a, f.TeamID, f.OrgID); !d.Allowed {
					return d
				}
			}
			if f.UserID != "" && f.UserID != c.ID {
				return forbid("user_id", "you may only list your own keys")
			}
		}
		return allow // the handler narrows the listing to the caller's own
	case TeamInfo:
		if o := t.Before; o != nil && c.TeamRole(o.TeamID, o.OrgID) != "" {
			return allow
		}
		return hidden("team")
	case TeamList:
		if f := t.Before; f != nil && f.UserID != "" && f.UserID != c.ID {
			return forbid("user_id", "you may only list your own teams")
		}
		return allow // narrowed to the caller's teams
	case TeamNew:
		if o := t.After; o != nil && o.OrgID != "" && c.Orgs[o.OrgID] == OrgAdmin {
			return allow
		}
		return forbid("", "only proxy_admin (or an org admin, in its organization) may create teams")
	case TeamMemberAdd, TeamMemberUpdate, TeamMemberDelete:
		return member(&c, a, t)
	case TeamUpdate, TeamDelete, TeamBlock, TeamUnblock:
		return forbid("", "only proxy_admin may change, block or delete teams")
	case UserInfo:
		if o := t.Before; o != nil && o.UserID == c.ID {
			return allow
		}
		return hidden("user")
	case UserList:
		return allow // narrowed to the caller itself
	case UserUpdate:
		return userUpdate(&c, t)
	case UserNew, UserDelete:
		return forbid("", "only proxy_admin may create or delete users")
	case OrgInfo:
		if o := t.Before; o != nil && o.OrgID != "" && c.Orgs[o.OrgID] != "" {
			return allow
		}
		return hidden("organization")
	case OrgList, ModelInfo:
		return allow // organizations are narrowed to the caller's
	case OrgNew, OrgUpdate, OrgDelete, OrgMemberAdd, OrgMemberUpdate, OrgMemberDelete:
		return forbid("", "only proxy_admin may manage organizations")
	case ModelNew, ModelUpdate, ModelDelete:
		return forbid("", "only proxy_admin may manage models")
	case SettingsRead, SettingsUpdate:
		return forbid("", "only proxy_admin may read or change settings")
	case AuditRead:
		return forbid("", "only proxy_admin may read the audit log")
	case ProxyList:
		return forbid("", "only proxy_admin and proxy_admin_viewer may see the proxies")
	case CustomerNew, CustomerUpdate, CustomerDelete, CustomerBlock, CustomerUnblock:
		return forbid("", "only proxy_admin may manage end users")
	case CustomerList:
		return forbid("", "only proxy_admin and proxy_admin_viewer may list end users")
	case BudgetNew, BudgetUpdate, BudgetDelete:
		return forbid("", "only proxy_admin may manage budgets")
	case BudgetInfo, BudgetList:
		return forbid("", "only proxy_admin and proxy_admin_viewer may read budgets")
	}
	return forbid("", "not allowed")
}

// selfRead reports whether a is a key reading itself: its own /key/info,
// its team's /team/info, or (for a key-only caller, whose /model/info has
// no role to go by) /model/info. LiteLLM lets every key do this (apps show
// a key's remaining budget with it), whatever its owner's role or its
// team's team_member_permissions; writes still follow the role rules.
func selfRead(c *Caller, a Action, t Target) bool {
	switch a {
	case KeyInfo:
		return t.Before != nil && t.Before.TokenID != "" && t.Before.TokenID == c.KeyTokenID
	case TeamInfo:
		return t.Before != nil && c.KeyTeamID != "" && t.Before.TeamID == c.KeyTeamID
	case ModelInfo:
		return c.KeyOnly
	}
	return false
}

var known = func() map[Action]bool {
	m := map[Action]bool{}
	for _, a := range Actions() {
		m[a] = true
	}
	return m
}()

func isWrite(a Action) bool { return known[a] && !reads[a] }

// keyCreate decides /key/generate and /key/service-account/generate for a
// non-admin. The handler has stamped an empty user_id with the caller's.
func keyCreate(c *Caller, a Action, t Target) Decision {
	k := t.After
	if k == nil {
		return badParam("", "missing key")
	}
	kg := t.KeyGeneration
	if a == KeyServiceAccountGenerate {
		role := c.TeamRole(k.TeamID, k.OrgID)
		if role != store.TeamRoleAdmin {
			return forbid("team_id", "only a team admin may create service account keys for team "+k.TeamID)
		}
		if !kg.TeamKeyGeneration.RoleAllowed(role) {
			return forbid("team_id", teamRoleMsg(role, kg))
		}
	} else {
		if k.UserID != c.ID {
			return forbid("user_id", fmt.Sprintf("User can only create keys for themselves. Got user_id=%s, Your ID=%s", k.UserID, c.ID))
		}
		if k.TeamID != "" {
			role := c.TeamRole(k.TeamID, k.OrgID)
			if role == "" {
				return forbid("team_id", fmt.Sprintf("User can only create keys for their own team. Got team_id=%s, you are not a member", k.TeamID))
			}
			if !kg.TeamKeyGeneration.RoleAllowed(role) {
				return forbid("team_id", teamRoleMsg(role, kg))
			}
			if d := teamPermission(c, a, k.TeamID, k.OrgID); !d.Allowed {
				return d
			}
		} else if !kg.PersonalKeyGeneration.RoleAllowed(c.Role) {
			return forbid("", fmt.Sprintf("Personal key creation has been restricted by admin. Allowed roles=%s. Your role=%s",
				pyList(kg.PersonalKeyGeneration.AllowedUserRoles), c.Role))
		}
	}
	if d := keyFields(c, nil, k, t.Team, a == KeyGenerate); !d.Allowed {
		return d
	}
	return requiredParams(a, t)
}

func teamRoleMsg(role string, kg settings.KeyGenerationSettings) string {
	return fmt.Sprintf("Team member role %s not in allowed_team_member_roles=%s", role, pyList(kg.TeamKeyGeneration.AllowedTeamMemberRoles))
}

// requiredParams applies key_generation_settings.*.required_params, to every
// caller (LiteLLM applies them to admins too).
func requiredParams(a Action, t Target) Decision {
	if t.After == nil {
		return allow
	}
	req := t.KeyGeneration.PersonalKeyGeneration.RequiredParams
	if t.After.TeamID != "" || a == KeyServiceAccountGenerate {
		req = t.KeyGeneration.TeamKeyGeneration.RequiredParams
	}
	for _, p := range req {
		if !slices.Contains(t.Params, p) {
			return badParam(p, "Required param "+p+" not in data")
		}
	}
	return allow
}

// keyObject decides calls on an existing key by a non-admin.
func keyObject(c *Caller, a Action, t Target) Decision {
	b := t.Before
	if b == nil {
		return hidden("key")
	}
	own := b.UserID != "" && b.UserID == c.ID
	teamAdmin := c.TeamRole(b.TeamID, b.OrgID) == store.TeamRoleAdmin
	if !own && !teamAdmin {
		return hidden("key") // never hint that another's key exists
	}
	if d := teamPermission(c, a, b.TeamID, b.OrgID); !d.Allowed {
		return d
	}
	if k := t.After; k != nil && k.TeamID != b.TeamID {
		if d := teamPermission(c, a, k.TeamID, k.OrgID); !d.Allowed {
			return d
		}
	}
	switch a {
	case KeyInfo, KeyDelete, KeyBlock:
		return allow
	case KeyUnblock:
		if !teamAdmin {
			return forbid("key", "only an admin may unblock a key")
		}
		return allow
	case KeyRegenerate:
		if !own && !b.ServiceAccount {
			// The new secret would authenticate as the key's owner.
			return forbid("key", "only the key's owner may regenerate it")
		}
	}
	if t.After == nil {
		return allow
	}
	k := t.After
	if k.UserID != b.UserID {
		return forbid("user_id", "only proxy_admin may give a key to another user")
	}
	if k.TeamID != b.TeamID && k.TeamID != "" {
		role := c.TeamRole(k.TeamID, k.OrgID)
		switch {
		case role == "":
			return forbid("team_id", "you may only move keys into teams you belong to; you are not a member of team "+k.TeamID)
		case !own && role != store.TeamRoleAdmin:
			return forbid("team_id", "only a team admin of "+k.TeamID+" may move another user's key into it")
		case !t.KeyGeneration.TeamKeyGeneration.RoleAllowed(role):
			return forbid("team_id", teamRoleMsg(role, t.KeyGeneration))
		}
	}
	if k.TeamID == "" && b.TeamID != "" {
		if !own || b.ServiceAccount {
			return forbid("team_id", "a team key can only leave its team by an admin")
		}
		if !t.KeyGeneration.PersonalKeyGeneration.RoleAllowed(c.Role) {
			return forbid("team_id", fmt.Sprintf("Personal key creation has been restricted by admin. Allowed roles=%s. Your role=%s",
				pyList(t.KeyGeneration.PersonalKeyGeneration.AllowedUserRoles), c.Role))
		}
	}
	if b.Blocked && !k.Blocked && !teamAdmin {
		return forbid("blocked", "only an admin may unblock a key")
	}
	return keyFields(c, b, k, t.Team, own)
}

// keyFields checks a key's requested fields against what it had (before,
// nil for a new key), the caller's own limits (when the key is the
// caller's) and its team's limits. Nothing may get wider.
func keyFields(c *Caller, before, k, team *Object, own bool) Decision {
	if k.Permissions && (before == nil || !before.Permissions) {
		return forbid("permissions", "only proxy_admin may set permissions")
	}
	if before == nil || !slices.Equal(before.AllowedRoutes, k.AllowedRoutes) {
		for _, r := range k.AllowedRoutes {
			if !LLMRoute(r) {
				return forbid("allowed_routes", "allowed_routes may only name LLM API routes for non-admins; "+quote(r)+" is not one")
			}
		}
	}
	for _, ce := range [...]*Object{before, ownCeiling(c, own), team} {
		if ce == nil {
			continue
		}
		if d := within(k, ce, before); !d.Allowed {
			return d
		}
	}
	if before != nil {
		if before.BudgetDuration != k.BudgetDuration {
			return forbid("budget_duration", "only an admin may change budget_duration on an existing key")
		}
		if before.Expires != nil && (k.Expires == nil || k.Expires.After(*before.Expires)) {
			return forbid("expires", "only an admin may extend a key's expiry")
		}
		for _, p := range before.EnforcedParams {
			if !slices.Contains(k.EnforcedParams, p) {
				return forbid("enforced_params", "only an admin may remove enforced param "+quote(p))
			}
		}
		for _, g := range before.Guardrails {
			if !slices.Contains(k.Guardrails, g) {
				return forbid("guardrails", "only an admin may remove guardrail "+quote(g))
			}
		}
	}
	return allow
}

func ownCeiling(c *Caller, own bool) *Object {
	if own {
		return &c.Self
	}
	return nil
}

// within checks that o's models and limits are no wider than ceiling's.
// An empty model list means all models and a nil limit no limit of its own:
// that is allowed when it is not a change from before (nil: a new object),
// because the owner's and team's limits still apply to it at the proxy.
func within(o, ceiling, before *Object) Decision {
	if len(ceiling.Models) > 0 {
		if len(o.Models) == 0 {
			if before == nil || len(before.Models) == 0 {
				goto limits
			}
			return forbid("models", "models must be set to a subset of "+pyList(ceiling.Models)+" (an empty list means all models)")
		}
		for _, m := range o.Models {
			if !slices.Contains(ceiling.Models, m) {
				return forbid("models", "model "+quote(m)+" is not in "+pyList(ceiling.Models))
			}
		}
	}
limits:
	for _, l := range [...]struct {
		name            string
		have, ceil, was *int64
	}{
		{"max_budget", o.MaxBudget, ceiling.MaxBudget, field(before, func(b *Object) *int64 { return b.MaxBudget })},
		{"rpm_limit", o.RPMLimit, ceiling.RPMLimit, field(before, func(b *Object) *int64 { return b.RPMLimit })},
		{"tpm_limit", o.TPMLimit, ceiling.TPMLimit, field(before, func(b *Object) *int64 { return b.TPMLimit })},
		{"max_parallel_requests", o.MaxParallel, ceiling.MaxParallel, field(before, func(b *Object) *int64 { return b.MaxParallel })},
	} {
		if l.ceil == nil {
			continue
		}
		if l.have == nil {
			if before == nil || l.was == nil {
				continue // inherits the ceiling, unchanged
			}
			return forbid(l.name, l.name+" may not be removed")
		}
		if *l.have > *l.ceil {
			return forbid(l.name, l.name+" may not exceed "+limitString(l.name, *l.ceil))
		}
	}
	return allow
}

func field(b *Object, f func(*Object) *int64) *int64 {
	if b == nil {
		return nil
	}
	return f(b)
}

func limitString(name string, v int64) string {
	if name == "max_budget" {
		return fmt.Sprintf("%g USD", money.ToUSD(v))
	}
	return fmt.Sprint(v)
}

// member decides team member_add / member_update / member_delete for a
// non-admin. Before is the membership acted on (Role its current team role;
// for member_add, nil), After the requested one.
func member(c *Caller, a Action, t Target) Decision {
	ref := t.Before
	if ref == nil {
		ref = t.After
	}
	if ref == nil {
		return hidden("team")
	}
	role := c.TeamRole(ref.TeamID, ref.OrgID)
	if role == "" {
		return hidden("team")
	}
	if role != store.TeamRoleAdmin {
		return forbid("", "only a team admin may manage the team's members")
	}
	switch a {
	case TeamMemberAdd:
		if t.After != nil && t.After.Role != store.TeamRoleUser {
			return forbid("member", "team admins may add members with role \"user\" only; granting a role needs proxy_admin")
		}
	case TeamMemberUpdate:
		if t.Before == nil {
			return hidden("team member")
		}
		if t.Before.UserID == c.ID {
			return forbid("user_id", "you may not change your own team membership")
		}
		if t.Before.Role != store.TeamRoleUser {
			return forbid("user_id", "only proxy_admin may change another team admin's membership")
		}
		if t.After != nil && t.After.Role != t.Before.Role {
			return forbid("role", "only proxy_admin may change a member's role")
		}
	case TeamMemberDelete:
		if t.Before == nil {
			return hidden("team member")
		}
		if t.Before.UserID != c.ID && t.Before.Role != store.TeamRoleUser {
			return forbid("user_id", "only proxy_admin may remove another team admin")
		}
	}
	return allow
}

// userUpdate decides /user/update for an internal_user: only itself, never
// its role, never wider.
func userUpdate(c *Caller, t Target) Decision {
	b, u := t.Before, t.After
	if b == nil || b.UserID != c.ID {
		return hidden("user")
	}
	if u == nil {
		return allow
	}
	if u.Role != b.Role {
		return forbid("user_role", "you may not change any user role, your own included")
	}
	if u.Blocked != b.Blocked {
		return forbid("blocked", "only proxy_admin may block or unblock users")
	}
	if u.BudgetDuration != b.BudgetDuration {
		return forbid("budget_duration", "only proxy_admin may change your budget_duration")
	}
	return within(u, b, b)
}

// llmRoutes are the proxy routes a non-admin may put in allowed_routes
// (LiteLLM's llm_api_routes and openai_routes, as names or paths).
var llmRoutes = []string{
	"llm_api_routes", "openai_routes", "info_routes",
	"/chat/completions", "/v1/chat/completions", "/completions", "/v1/completions",
	"/embeddings", "/v1/embeddings", "/models", "/v1/models", "/responses", "/v1/responses",
	"/moderations", "/v1/moderations", "/images/generations", "/v1/images/generations",
	"/audio/transcriptions", "/v1/audio/transcriptions", "/audio/speech", "/v1/audio/speech",
}

// LLMRoute reports whether r is an LLM API route (not a management route).
func LLMRoute(r string) bool {
	return slices.Contains(llmRoutes, strings.TrimRight(r, "/")) || slices.Contains(llmRoutes, r)
}

func quote(s string) string { return `"` + s + `"` }

// pyList renders a list the way LiteLLM's messages do: ['a', 'b'].
func pyList(xs []string) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, x := range xs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("'" + x + "'")
	}
	b.WriteByte(']')
	return b.String()
}

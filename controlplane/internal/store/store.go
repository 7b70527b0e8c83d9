// Package store is the control plane's storage contract: the entities Tollgate
// manages, one Store interface, and the sentinel errors every backend returns.
//
// # Architecture
//
// Backends live in their own packages (store/postgres, store/embedded) and pass
// one conformance suite (store/storetest). Handlers never talk to a database:
// they call Read for point reads and ReadWriteTx for every write. Commit,
// rollback and retry on serialization failure belong to the backend.
//
// # Revisions
//
// Every committed write transaction that changed something becomes one change
// set with a global, gapless revision number (1, 2, 3, ...). Revisions are
// assigned in commit order: if transaction B observed the effects of A, A has
// the lower revision. The change set carries the post-image of every entity
// it wrote (or a tombstone), so a data plane can replay revisions in order and
// reach the same state as the store. The Postgres backend assigns revisions
// shortly after commit (a sequencer, so that concurrent writers do not
// serialize on a counter row through their commit fsync); the embedded backend
// assigns them inside the commit. Either way a committed change is visible in
// Changes within milliseconds and Head never goes backwards.
//
// # Thread safety
//
// A Store is safe for concurrent use. A Tx is not: it belongs to the callback
// it was passed to and must not be used after the callback returns.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Sentinel errors. Backends wrap them (errors.Is works) and never leak driver
// errors for conditions a caller can cause.
var (
	// ErrNotFound: the object does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a unique field (key hash, key alias, primary id, model name+id)
	// is already taken.
	ErrConflict = errors.New("already exists")
	// ErrUnavailable: the backend cannot be reached; the caller may retry.
	ErrUnavailable = errors.New("store unavailable")
)

// ConflictError names the field that collided; it matches ErrConflict.
type ConflictError struct{ Field string }

func (e *ConflictError) Error() string { return e.Field + " already exists" }

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Page selects a page of a listing. Page is 1-based; Size 0 means the default
// (50). Backends clamp Size to MaxPageSize.
type Page struct {
	Page int
	Size int
}

// MaxPageSize bounds every listing.
const MaxPageSize = 100

// Normalize returns the page with defaults applied (page ≥ 1, 1 ≤ size ≤ 100).
func (p Page) Normalize() Page {
	if p.Page < 1 {
		p.Page = 1
	}
	if p.Size <= 0 {
		p.Size = 50
	}
	if p.Size > MaxPageSize {
		p.Size = MaxPageSize
	}
	return p
}

// Offset is the number of rows before the page.
func (p Page) Offset() int { n := p.Normalize(); return (n.Page - 1) * n.Size }

// ModelBudget is a per-model budget on a key.
type ModelBudget struct {
	BudgetLimit int64  `json:"budget_limit"` // nano-USD
	TimePeriod  string `json:"time_period,omitempty"`
}

// Limits are the budget and rate limits shared by keys, users, teams and orgs.
// A nil pointer means "no limit". Money is integer nano-USD.
type Limits struct {
	MaxBudget           *int64     `json:"max_budget,omitempty"`
	SoftBudget          *int64     `json:"soft_budget,omitempty"`
	BudgetDuration      string     `json:"budget_duration,omitempty"`
	BudgetResetAt       *time.Time `json:"budget_reset_at,omitempty"`
	RPMLimit            *int64     `json:"rpm_limit,omitempty"`
	TPMLimit            *int64     `json:"tpm_limit,omitempty"`
	MaxParallelRequests *int64     `json:"max_parallel_requests,omitempty"`
}

// Key is a virtual key. The plaintext is never stored: KeyHash is the SHA-256
// hex of the full key string.
type Key struct {
	TokenID        string `json:"token_id"`
	KeyHash        string `json:"key_hash"`
	KeyName        string `json:"key_name"`            // display form "sk-...abcd"
	KeyAlias       string `json:"key_alias,omitempty"` // unique when non-empty
	UserID         string `json:"user_id,omitempty"`
	TeamID         string `json:"team_id,omitempty"`
	OrganizationID string `json:"organization_id,omitempty"`
	// ServiceAccount keys belong to a team and have no user.
	ServiceAccount bool `json:"service_account,omitempty"`
	// BudgetID links the key to a budget (budgets.go), whose limits are
	// copied into the key's.
	BudgetID string `json:"budget_id,omitempty"`

	Models []string `json:"models,omitempty"`
	Limits
	ModelMaxBudget map[string]ModelBudget `json:"model_max_budget,omitempty"`
	ModelRPMLimit  map[string]int64       `json:"model_rpm_limit,omitempty"`
	ModelTPMLimit  map[string]int64       `json:"model_tpm_limit,omitempty"`

	Metadata       json.RawMessage `json:"metadata,omitempty"`    // JSON object
	Permissions    json.RawMessage `json:"permissions,omitempty"` // JSON object
	Guardrails     []string        `json:"guardrails,omitempty"`
	Tags           []string        `json:"tags,omitempty"`
	EnforcedParams []string        `json:"enforced_params,omitempty"`
	AllowedRoutes  []string        `json:"allowed_routes,omitempty"`

	Blocked bool       `json:"blocked,omitempty"`
	Expires *time.Time `json:"expires,omitempty"`

	AutoRotate       bool       `json:"auto_rotate,omitempty"`
	RotationInterval string     `json:"rotation_interval,omitempty"`
	KeyRotationAt    *time.Time `json:"key_rotation_at,omitempty"`
	LastRotationAt   *time.Time `json:"last_rotation_at,omitempty"`
	RotationCount    int64      `json:"rotation_count,omitempty"`
	// PreviousHashes are old secrets still honoured until their grace period ends.
	PreviousHashes []PreviousHash `json:"previous_hashes,omitempty"`

	Spend int64 `json:"spend,omitempty"` // nano-USD
	// ModelSpend is the key's spend per public model name (nano-USD), for
	// model_max_budget.
	ModelSpend map[string]int64 `json:"model_spend,omitempty"`
	CreatedAt  time.Time        `json:"created_at"`
	UpdatedAt  time.Time        `json:"updated_at"`
	CreatedBy  string           `json:"created_by,omitempty"`
	UpdatedBy  string           `json:"updated_by,omitempty"`
}

// KeyDocOmits are the JSON names of the Key fields that EachKeyDocs may
// leave out: bookkeeping that no data plane needs, and a large part of
// every key's document.
var KeyDocOmits = []string{"key_name", "created_at", "updated_at", "created_by", "updated_by"}

// PreviousHash is a regenerated key's old secret, valid until ValidUntil.
type PreviousHash struct {
	KeyHash    string    `json:"key_hash"`
	ValidUntil time.Time `json:"valid_until"`
}

// Team roles.
const (
	TeamRoleAdmin = "admin"
	TeamRoleUser  = "user"
)

// TeamMember is a user's membership in a team.
type TeamMember struct {
	UserID          string `json:"user_id"`
	Role            string `json:"role"`                         // admin | user
	MaxBudgetInTeam *int64 `json:"max_budget_in_team,omitempty"` // nano-USD
	Spend           int64  `json:"spend,omitempty"`
	// UserEmail is the email the member was added by (LiteLLM keeps it in
	// members_with_roles), "" when added by id.
	UserEmail string `json:"user_email,omitempty"`
	// BudgetID links the membership to a budget (budgets.go), whose
	// max_budget is copied into MaxBudgetInTeam.
	BudgetID string `json:"budget_id,omitempty"`
}

// Team groups users and keys.
type Team struct {
	TeamID         string       `json:"team_id"`
	TeamAlias      string       `json:"team_alias,omitempty"`
	OrganizationID string       `json:"organization_id,omitempty"`
	Members        []TeamMember `json:"members,omitempty"`
	Models         []string     `json:"models,omitempty"`
	Limits
	// TeamMemberBudget is the default max_budget_in_team for members (nano-USD).
	TeamMemberBudget *int64 `json:"team_member_budget,omitempty"`
	// TeamMemberPermissions lists the key-management routes (e.g.
	// "/key/generate") members with team role "user" may call on their keys
	// in the team; empty means no list (the role table applies).
	TeamMemberPermissions []string `json:"team_member_permissions,omitempty"`
	// ModelAliases maps a model name the team's keys may request to the
	// public model it stands for (LiteLLM's team model_aliases).
	ModelAliases map[string]string `json:"model_aliases,omitempty"`
	Metadata     json.RawMessage   `json:"metadata,omitempty"`
	Blocked      bool              `json:"blocked,omitempty"`
	Spend        int64             `json:"spend,omitempty"`
	// SaaS is set on teams of the SaaS team API (saas.go).
	SaaS      *TeamSaaS `json:"saas,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Member returns the membership of userID, if any.
func (t *Team) Member(userID string) (TeamMember, bool) {
	for _, m := range t.Members {
		if m.UserID == userID {
			return m, true
		}
	}
	return TeamMember{}, false
}

// User roles.
const (
	RoleProxyAdmin         = "proxy_admin"
	RoleProxyAdminViewer   = "proxy_admin_viewer"
	RoleInternalUser       = "internal_user"
	RoleInternalUserViewer = "internal_user_viewer"
)

// User is a person or system that owns keys.
type User struct {
	UserID    string   `json:"user_id"`
	UserAlias string   `json:"user_alias,omitempty"`
	UserEmail string   `json:"user_email,omitempty"`
	UserRole  string   `json:"user_role"`
	Models    []string `json:"models,omitempty"`
	Limits
	Metadata  json.RawMessage `json:"metadata,omitempty"`
	Blocked   bool            `json:"blocked,omitempty"`
	Spend     int64           `json:"spend,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
}

// OrgMember is a user's membership in an organization.
type OrgMember struct {
	UserID string `json:"user_id"`
	Role   string `json:"role"` // org_admin | internal_user | internal_user_viewer
}

// Organization groups teams.
type Organization struct {
	OrganizationID    string `json:"organization_id"`
	OrganizationAlias string `json:"organization_alias"`
	// BudgetID links the organization to a budget (budgets.go), whose
	// limits are copied into the organization's.
	BudgetID string      `json:"budget_id,omitempty"`
	Members  []OrgMember `json:"members,omitempty"`
	Models   []string    `json:"models,omitempty"`
	Limits
	Metadata  json.RawMessage `json:"metadata,omitempty"`
	Blocked   bool            `json:"blocked,omitempty"`
	Spend     int64           `json:"spend,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
}

// Model is one deployment of a public model name. Several deployments may
// share a ModelName; ID is unique.
type Model struct {
	ID        string `json:"id"`
	ModelName string `json:"model_name"`
	// UpstreamModel is litellm_params.model, e.g. "openai/gpt-4o-mini".
	UpstreamModel string `json:"upstream_model"`
	APIBase       string `json:"api_base,omitempty"`
	// APIKey is a credential reference ("os.environ/NAME") or a literal. It is
	// never returned by the management API.
	APIKey     string `json:"api_key,omitempty"`
	APIVersion string `json:"api_version,omitempty"`
	// Prices are pico-USD (1e-12 USD) per token, finer than amounts so that
	// any price is kept: cost(nano-USD) = ⌈tokens × price / 1000⌉ (exact for
	// whole nano-USD prices; see money.RequestCost).
	InputCostPerToken  int64    `json:"input_cost_per_token,omitempty"`
	OutputCostPerToken int64    `json:"output_cost_per_token,omitempty"`
	AccessGroups       []string `json:"access_groups,omitempty"`
	RPM                *int64   `json:"rpm,omitempty"`
	TPM                *int64   `json:"tpm,omitempty"`
	// Params holds the remaining litellm_params and model_info fields as given.
	Params    json.RawMessage `json:"params,omitempty"`
	ModelInfo json.RawMessage `json:"model_info,omitempty"`
	// FromConfig is true for models defined by --config.
	FromConfig bool      `json:"from_config,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// Settings are the proxy-wide settings (LiteLLM's general_settings), kept as
// the JSON object the operator gave.
type Settings struct {
	GeneralSettings json.RawMessage `json:"general_settings,omitempty"`
	UpdatedAt       time.Time       `json:"updated_at"`
}

// Entity kinds in change records.
const (
	KindKey          = "key"
	KindTeam         = "team"
	KindUser         = "user"
	KindOrganization = "organization"
	KindModel        = "model"
	KindSettings     = "settings"
	// KindEndUser: an EndUser (spend.go), id end_user_id.
	KindEndUser = "end_user"
	// KindKeyModel names a key's spend on one model in SpendResult.Spends
	// (id "<token_id>/<model>"); it is not an entity of its own.
	KindKeyModel = "key_model"
	// KindTeamMember names a user's spend in a team in SpendResult.Spends
	// (id "<team_id>/<user_id>"); memberships live on their team.
	KindTeamMember = "team_member"
)

// Change operations.
const (
	OpPut    = "put"
	OpDelete = "delete"
)

// Change is one entity written by a transaction: its post-image as JSON (the
// entity struct above), or a tombstone.
type Change struct {
	Kind string          `json:"kind"`
	ID   string          `json:"id"`
	Op   string          `json:"op"`
	Data json.RawMessage `json:"data,omitempty"` // nil for OpDelete
}

// ChangeSet is one committed transaction.
type ChangeSet struct {
	Revision    int64
	CommittedAt time.Time
	Changes     []Change
}

// PrevRevision is the revision this change set applies on top of.
func (c ChangeSet) PrevRevision() int64 { return c.Revision - 1 }

// KeyFilter narrows ListKeys. Empty fields do not filter.
type KeyFilter struct {
	UserID         string
	TeamID         string
	OrganizationID string
	KeyAlias       string
	Page           Page
}

// TeamFilter narrows ListTeams.
type TeamFilter struct {
	OrganizationID string
	UserID         string // teams that have this member
	Page           Page
}

// UserFilter narrows ListUsers.
type UserFilter struct {
	UserRole string
	TeamID   string
	// UserEmail matches user_email exactly (team members given by email).
	UserEmail string
	Page      Page
}

// Reader holds the read operations, available outside and inside transactions.
// Get* return ErrNotFound when the object does not exist. List* return the
// page and the total number of matches; order is creation order (oldest
// first, ties by id), stable across pages.
type Reader interface {
	GetKey(ctx context.Context, tokenID string) (Key, error)
	// GetKeyByHash finds a key by the SHA-256 hex of its current secret.
	GetKeyByHash(ctx context.Context, keyHash string) (Key, error)
	GetKeyByAlias(ctx context.Context, alias string) (Key, error)
	ListKeys(ctx context.Context, f KeyFilter) ([]Key, int, error)

	GetTeam(ctx context.Context, teamID string) (Team, error)
	ListTeams(ctx context.Context, f TeamFilter) ([]Team, int, error)

	GetUser(ctx context.Context, userID string) (User, error)
	ListUsers(ctx context.Context, f UserFilter) ([]User, int, error)

	GetOrganization(ctx context.Context, orgID string) (Organization, error)
	ListOrganizations(ctx context.Context, p Page) ([]Organization, int, error)

	GetModel(ctx context.Context, id string) (Model, error)
	// ListModels returns every model (deployments are few), ordered by
	// model_name then id.
	ListModels(ctx context.Context) ([]Model, error)

	// GetSettings returns the zero Settings (no error) when none were saved.
	GetSettings(ctx context.Context) (Settings, error)

	// Each* call fn for every object, in no particular order, without loading
	// them all at once (snapshots of a million keys go through here). An
	// error from fn stops the iteration and is returned.
	EachKey(ctx context.Context, fn func(Key) error) error
	EachTeam(ctx context.Context, fn func(Team) error) error
	EachUser(ctx context.Context, fn func(User) error) error
	EachOrganization(ctx context.Context, fn func(Organization) error) error
	// EachKeyDocs is EachKey for a caller that decodes keys itself (the
	// snapshot builder transcodes them straight to their wire form): it
	// calls fn with batches of keys as JSON documents that DecodeJSON
	// decodes into exactly the keys EachKey yields, except that the fields
	// named in KeyDocOmits may be missing (zero). A document EachKey could
	// not decode makes EachKey fail; here it reaches fn. Every key is in
	// exactly one batch; batches are never empty. docs and their bytes are
	// valid only until fn returns; fn must not modify them. Inside
	// Store.Snapshot, fn must not use the reader (a store may stream the
	// keys over the snapshot's one connection meanwhile): it fails with
	// an error rather than waiting.
	EachKeyDocs(ctx context.Context, fn func(docs [][]byte) error) error

	// ListAudit returns audit entries newest first.
	ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, int, error)

	// ListSpendLogs returns spend logs newest first (by StartTime, ties in
	// reverse order of application).
	ListSpendLogs(ctx context.Context, f SpendLogFilter) ([]SpendLog, int, error)
	// GetEndUser returns an end user's spend; ErrNotFound when no request
	// named it yet.
	GetEndUser(ctx context.Context, endUserID string) (EndUser, error)
	// ListEndUsers returns end users ordered by end_user_id (they are
	// created by requests as often as by the API, so id order is the
	// stable one).
	ListEndUsers(ctx context.Context, p Page) ([]EndUser, int, error)
	// EachEndUser calls fn for every end user, as EachKey.
	EachEndUser(ctx context.Context, fn func(EndUser) error) error
	// SpendHighWater returns the highest sequence number applied from the
	// outbox (proxyID, outboxID), 0 when none.
	SpendHighWater(ctx context.Context, proxyID, outboxID string) (uint64, error)

	// EventReader: the event outbox and the rotation schedule (events.go).
	EventReader
	// SaaSReader: model groups, jobs and credit transactions (saas.go).
	SaaSReader
	// BudgetReader: the budget table (budgets.go).
	BudgetReader
}

// AuditEntry is one management mutation. Before and After are JSON objects
// of the changed object with secrets and hashes removed by the caller.
type AuditEntry struct {
	ID         string          `json:"id"`
	Action     string          `json:"action"` // created, updated, deleted, blocked, unblocked, regenerated, rotated
	ObjectType string          `json:"object_type"`
	ObjectID   string          `json:"object_id"`
	Caller     string          `json:"caller"`
	ChangedBy  string          `json:"changed_by,omitempty"`
	Before     json.RawMessage `json:"before,omitempty"`
	After      json.RawMessage `json:"after,omitempty"`
	CreatedAt  time.Time       `json:"created_at"`
}

// AuditFilter narrows ListAudit. Empty fields do not filter; zero times do
// not bound.
type AuditFilter struct {
	ObjectType string
	ObjectID   string
	Caller     string
	Since      time.Time
	Until      time.Time
	Page       Page
}

// Tx is a read-write transaction. Every write records a Change in the
// transaction's change set. Writes of objects that reference others
// (a key's team) do not check the reference: callers validate inside the
// same transaction.
type Tx interface {
	Reader

	// CreateKey fails with a *ConflictError (Field "key" or "key_alias") when
	// the hash or the non-empty alias is taken, or "token_id" for the id.
	CreateKey(ctx context.Context, k Key) error
	// UpdateKey replaces the stored key with the same TokenID (ErrNotFound if
	// none); alias uniqueness as in CreateKey.
	UpdateKey(ctx context.Context, k Key) error
	DeleteKey(ctx context.Context, tokenID string) error

	CreateTeam(ctx context.Context, t Team) error // Conflict "team_id"
	UpdateTeam(ctx context.Context, t Team) error
	// DeleteTeam deletes the team and every key with its team_id, including
	// its service-account keys.
	DeleteTeam(ctx context.Context, teamID string) error

	CreateUser(ctx context.Context, u User) error // Conflict "user_id"
	UpdateUser(ctx context.Context, u User) error
	// DeleteUser deletes the user, every key whose user_id is the user (its
	// personal keys and its keys in teams), and its team and organization
	// memberships. Service-account keys have no user and are never touched.
	DeleteUser(ctx context.Context, userID string) error

	CreateOrganization(ctx context.Context, o Organization) error // Conflict "organization_id"
	UpdateOrganization(ctx context.Context, o Organization) error
	// DeleteOrganization deletes the organization; teams and keys that named
	// it keep existing with their organization_id cleared.
	DeleteOrganization(ctx context.Context, orgID string) error

	CreateModel(ctx context.Context, m Model) error // Conflict "id"
	UpdateModel(ctx context.Context, m Model) error
	DeleteModel(ctx context.Context, id string) error

	PutSettings(ctx context.Context, s Settings) error

	// AppendAudit writes an audit row in this transaction (no change record:
	// audit rows are not synced to data planes).
	AppendAudit(ctx context.Context, e AuditEntry) error

	// ApplySpend applies the records of b above the high-water mark of
	// (b.ProxyID, b.OutboxID) and raises the mark to the last of them, so a
	// replayed batch (or its already-applied prefix) changes nothing. It
	// adds each record's cost to its key (and the key's per-model spend),
	// team, team member (when the user is a member), user, organization and
	// end user, skipping those that no longer exist, and writes one spend
	// log per record. Each touched key, team, user, organization and end
	// user gets one change record with its final spend, however many
	// records touched it (an end user a record names for the first time is
	// created). Records must have increasing Seq (> 0). It returns the number of
	// records applied and the soft budgets they made spend cross.
	ApplySpend(ctx context.Context, b SpendBatch) (SpendResult, error)

	// PutEndUser creates or replaces an end user (its spend, alias, budget
	// and blocked flag; CreatedAt is kept when it exists, else e.CreatedAt,
	// else now) and records a change. Used by the end-user API and the
	// LiteLLM import; request spend goes through ApplySpend.
	PutEndUser(ctx context.Context, e EndUser) error
	// DeleteEndUser deletes an end user (ErrNotFound if none) and records
	// a tombstone. A later request naming it creates it afresh.
	DeleteEndUser(ctx context.Context, endUserID string) error

	// EventWriter: the event outbox (events.go).
	EventWriter
	// SaaSWriter: model groups, jobs and credit transactions (saas.go).
	SaaSWriter
	// BudgetWriter: the budget table (budgets.go).
	BudgetWriter
}

// Store is the storage contract.
type Store interface {
	// Read returns a Reader outside any transaction (each call sees the
	// latest committed state).
	Read() Reader

	// ReadWriteTx runs fn in a transaction and commits it when fn returns nil.
	// The backend may call fn more than once (serialization retries), so fn
	// must not have side effects outside tx. An error from fn rolls back and
	// is returned unchanged. A transaction that wrote nothing gets no revision.
	ReadWriteTx(ctx context.Context, fn func(ctx context.Context, tx Tx) error) error

	// Head returns the highest assigned revision (0 for an empty store).
	Head(ctx context.Context) (int64, error)
	// Changes returns up to limit change sets with Revision > after, in order.
	Changes(ctx context.Context, after int64, limit int) ([]ChangeSet, error)
	// Oldest returns the lowest revision still available through Changes
	// (compaction may drop older ones); a reader behind it needs a snapshot.
	// Returns Head+1 when the log is empty.
	Oldest(ctx context.Context) (int64, error)
	// Snapshot calls fn with a consistent view of every entity and the
	// revision it reflects: every change set ≤ revision is included. (The
	// Postgres backend may also include writes committed but not yet
	// sequenced; replaying their change sets later is idempotent.)
	Snapshot(ctx context.Context, fn func(revision int64, r Reader) error) error
	// Subscribe returns a channel that receives a value (coalesced, never
	// blocking the store) whenever Head advances, until ctx ends.
	Subscribe(ctx context.Context) <-chan struct{}

	// SessionRevocations: admin UI sign-outs shared by every replica
	// (sessions.go).
	SessionRevocations

	// Ping checks the backend is reachable.
	Ping(ctx context.Context) error
	Close() error
}

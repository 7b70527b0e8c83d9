// Package litellmimport reads a LiteLLM proxy database (and optionally its
// config file) and turns it into Tollgate objects: Read fetches the rows in
// one read-only transaction, Map converts them (pure), and Apply writes the
// result to a store in one transaction, idempotently.
//
// The tables and columns follow LiteLLM's Prisma schema
// (litellm/proxy/schema.prisma). Older LiteLLM versions lack some tables and
// columns: rows are read with row_to_json, so a missing column decodes as its
// zero value, and Read reports which tables and columns were absent.
package litellmimport

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Timestamp decodes the timestamps row_to_json produces (Prisma columns are
// "timestamp(3) without time zone", read as UTC).
type Timestamp struct{ time.Time }

var tsLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999",
	"2006-01-02T15:04:05.999999999Z07",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02",
}

// UnmarshalJSON parses an ISO timestamp; null leaves the zero time.
func (t *Timestamp) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	for _, l := range tsLayouts {
		if v, err := time.Parse(l, s); err == nil {
			t.Time = v.UTC().Truncate(time.Microsecond)
			return nil
		}
	}
	return fmt.Errorf("unrecognised timestamp %q", s)
}

// Ptr returns nil for the zero time.
func (t Timestamp) Ptr() *time.Time {
	if t.IsZero() {
		return nil
	}
	v := t.Time
	return &v
}

// Raw is a JSON column (null, "{}" and "[]" count as empty).
type Raw = json.RawMessage

// Budget is a LiteLLM_BudgetTable row.
type Budget struct {
	BudgetID            string    `json:"budget_id"`
	MaxBudget           *float64  `json:"max_budget"`
	SoftBudget          *float64  `json:"soft_budget"`
	MaxParallelRequests *int64    `json:"max_parallel_requests"`
	TPMLimit            *int64    `json:"tpm_limit"`
	RPMLimit            *int64    `json:"rpm_limit"`
	ModelMaxBudget      Raw       `json:"model_max_budget"`
	BudgetDuration      string    `json:"budget_duration"`
	BudgetResetAt       Timestamp `json:"budget_reset_at"`
	AllowedModels       []string  `json:"allowed_models"`
}

// Key is a LiteLLM_VerificationToken row.
type Key struct {
	Token                string    `json:"token"`
	KeyName              string    `json:"key_name"`
	KeyAlias             string    `json:"key_alias"`
	Spend                float64   `json:"spend"`
	Expires              Timestamp `json:"expires"`
	Models               []string  `json:"models"`
	Aliases              Raw       `json:"aliases"`
	Config               Raw       `json:"config"`
	RouterSettings       Raw       `json:"router_settings"`
	UserID               string    `json:"user_id"`
	TeamID               string    `json:"team_id"`
	AgentID              string    `json:"agent_id"`
	ProjectID            string    `json:"project_id"`
	Permissions          Raw       `json:"permissions"`
	MaxParallelRequests  *int64    `json:"max_parallel_requests"`
	Metadata             Raw       `json:"metadata"`
	Blocked              *bool     `json:"blocked"`
	TPMLimit             *int64    `json:"tpm_limit"`
	RPMLimit             *int64    `json:"rpm_limit"`
	MaxBudget            *float64  `json:"max_budget"`
	BudgetDuration       string    `json:"budget_duration"`
	BudgetResetAt        Timestamp `json:"budget_reset_at"`
	AllowedCacheControls []string  `json:"allowed_cache_controls"`
	AllowedRoutes        []string  `json:"allowed_routes"`
	Policies             []string  `json:"policies"`
	AccessGroupIDs       []string  `json:"access_group_ids"`
	ModelSpend           Raw       `json:"model_spend"`
	ModelMaxBudget       Raw       `json:"model_max_budget"`
	BudgetID             string    `json:"budget_id"`
	OrganizationID       string    `json:"organization_id"`
	ObjectPermissionID   string    `json:"object_permission_id"`
	CreatedAt            Timestamp `json:"created_at"`
	CreatedBy            string    `json:"created_by"`
	UpdatedAt            Timestamp `json:"updated_at"`
	UpdatedBy            string    `json:"updated_by"`
	RotationCount        *int64    `json:"rotation_count"`
	AutoRotate           *bool     `json:"auto_rotate"`
	RotationInterval     string    `json:"rotation_interval"`
	LastRotationAt       Timestamp `json:"last_rotation_at"`
	KeyRotationAt        Timestamp `json:"key_rotation_at"`
	BudgetLimits         Raw       `json:"budget_limits"`
}

// Team is a LiteLLM_TeamTable row.
type Team struct {
	TeamID              string    `json:"team_id"`
	TeamAlias           string    `json:"team_alias"`
	OrganizationID      string    `json:"organization_id"`
	ObjectPermissionID  string    `json:"object_permission_id"`
	Admins              []string  `json:"admins"`
	Members             []string  `json:"members"`
	MembersWithRoles    Raw       `json:"members_with_roles"`
	Metadata            Raw       `json:"metadata"`
	MaxBudget           *float64  `json:"max_budget"`
	SoftBudget          *float64  `json:"soft_budget"`
	Spend               float64   `json:"spend"`
	Models              []string  `json:"models"`
	MaxParallelRequests *int64    `json:"max_parallel_requests"`
	TPMLimit            *int64    `json:"tpm_limit"`
	RPMLimit            *int64    `json:"rpm_limit"`
	BudgetDuration      string    `json:"budget_duration"`
	BudgetResetAt       Timestamp `json:"budget_reset_at"`
	Blocked             bool      `json:"blocked"`
	CreatedAt           Timestamp `json:"created_at"`
	UpdatedAt           Timestamp `json:"updated_at"`
	ModelMaxBudget      Raw       `json:"model_max_budget"`
	RouterSettings      Raw       `json:"router_settings"`
	Policies            []string  `json:"policies"`
	AccessGroupIDs      []string  `json:"access_group_ids"`
	BudgetLimits        Raw       `json:"budget_limits"`
	ModelID             *int64    `json:"model_id"`
	// TeamMemberPermissions are the key-management routes team members
	// with role "user" may call (LiteLLM's team_member_permissions).
	TeamMemberPermissions []string `json:"team_member_permissions"`
}

// TeamMembership is a LiteLLM_TeamMembership row.
type TeamMembership struct {
	UserID   string  `json:"user_id"`
	TeamID   string  `json:"team_id"`
	Spend    float64 `json:"spend"`
	BudgetID string  `json:"budget_id"`
}

// User is a LiteLLM_UserTable row.
type User struct {
	UserID              string    `json:"user_id"`
	UserAlias           string    `json:"user_alias"`
	TeamID              string    `json:"team_id"`
	OrganizationID      string    `json:"organization_id"`
	UserRole            string    `json:"user_role"`
	MaxBudget           *float64  `json:"max_budget"`
	Spend               float64   `json:"spend"`
	UserEmail           string    `json:"user_email"`
	Models              []string  `json:"models"`
	Metadata            Raw       `json:"metadata"`
	MaxParallelRequests *int64    `json:"max_parallel_requests"`
	TPMLimit            *int64    `json:"tpm_limit"`
	RPMLimit            *int64    `json:"rpm_limit"`
	BudgetDuration      string    `json:"budget_duration"`
	BudgetResetAt       Timestamp `json:"budget_reset_at"`
	ModelMaxBudget      Raw       `json:"model_max_budget"`
	ObjectPermissionID  string    `json:"object_permission_id"`
	CreatedAt           Timestamp `json:"created_at"`
	UpdatedAt           Timestamp `json:"updated_at"`
}

// Organization is a LiteLLM_OrganizationTable row.
type Organization struct {
	OrganizationID     string    `json:"organization_id"`
	OrganizationAlias  string    `json:"organization_alias"`
	BudgetID           string    `json:"budget_id"`
	Metadata           Raw       `json:"metadata"`
	Models             []string  `json:"models"`
	Spend              float64   `json:"spend"`
	ObjectPermissionID string    `json:"object_permission_id"`
	CreatedAt          Timestamp `json:"created_at"`
	UpdatedAt          Timestamp `json:"updated_at"`
}

// OrgMembership is a LiteLLM_OrganizationMembership row.
type OrgMembership struct {
	UserID         string `json:"user_id"`
	OrganizationID string `json:"organization_id"`
	UserRole       string `json:"user_role"`
}

// EndUser is a LiteLLM_EndUserTable row.
type EndUser struct {
	UserID   string  `json:"user_id"`
	Alias    string  `json:"alias"`
	Spend    float64 `json:"spend"`
	BudgetID string  `json:"budget_id"`
	Blocked  bool    `json:"blocked"`
}

// ProxyModel is a LiteLLM_ProxyModelTable row.
type ProxyModel struct {
	ModelID       string    `json:"model_id"`
	ModelName     string    `json:"model_name"`
	LiteLLMParams Raw       `json:"litellm_params"`
	ModelInfo     Raw       `json:"model_info"`
	Blocked       bool      `json:"blocked"`
	CreatedAt     Timestamp `json:"created_at"`
	UpdatedAt     Timestamp `json:"updated_at"`
}

// DeprecatedToken is a LiteLLM_DeprecatedVerificationToken row: a rotated
// key's old hash, valid until RevokeAt.
type DeprecatedToken struct {
	Token         string    `json:"token"`
	ActiveTokenID string    `json:"active_token_id"`
	RevokeAt      Timestamp `json:"revoke_at"`
}

// Source is everything read from a LiteLLM database.
type Source struct {
	Budgets          []Budget
	Keys             []Key
	Teams            []Team
	TeamMemberships  []TeamMembership
	Users            []User
	Organizations    []Organization
	OrgMemberships   []OrgMembership
	EndUsers         []EndUser
	ProxyModels      []ProxyModel
	DeprecatedTokens []DeprecatedToken
	// Counts of rows in tables Tollgate does not import, by table name.
	Unread map[string]int
	// MissingTables and MissingColumns ("Table.column") are what this
	// LiteLLM database lacks compared with the schema Tollgate knows.
	MissingTables  []string
	MissingColumns []string
}

// Table names.
const (
	tBudget     = "LiteLLM_BudgetTable"
	tKey        = "LiteLLM_VerificationToken"
	tTeam       = "LiteLLM_TeamTable"
	tTeamMember = "LiteLLM_TeamMembership"
	tUser       = "LiteLLM_UserTable"
	tOrg        = "LiteLLM_OrganizationTable"
	tOrgMember  = "LiteLLM_OrganizationMembership"
	tEndUser    = "LiteLLM_EndUserTable"
	tModel      = "LiteLLM_ProxyModelTable"
	tDeprecated = "LiteLLM_DeprecatedVerificationToken"
)

// unreadTables are counted and reported, never imported.
var unreadTables = []string{
	"LiteLLM_TagTable", "LiteLLM_ProjectTable", "LiteLLM_CredentialsTable", "LiteLLM_JWTKeyMapping",
	"LiteLLM_Config", "LiteLLM_MCPServerTable", "LiteLLM_AgentsTable", "LiteLLM_ObjectPermissionTable",
	"LiteLLM_SpendLogs", "LiteLLM_AuditLog",
}

// required tables: without the key table this is not a LiteLLM database.
var required = []string{tKey}

// Read connects to a LiteLLM Postgres database and reads every table the
// import uses in one read-only, repeatable-read transaction.
func Read(ctx context.Context, url string) (*Source, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect to the LiteLLM database: %w", err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // read-only

	cols := map[string]map[string]bool{}
	rows, err := tx.Query(ctx, `SELECT table_name, column_name FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name LIKE 'LiteLLM%'`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var tbl, col string
		if err := rows.Scan(&tbl, &col); err != nil {
			rows.Close()
			return nil, err
		}
		if cols[tbl] == nil {
			cols[tbl] = map[string]bool{}
		}
		cols[tbl][col] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, r := range required {
		if cols[r] == nil {
			return nil, fmt.Errorf("no %s table in the current schema: is this a LiteLLM database?", r)
		}
	}

	src := &Source{Unread: map[string]int{}}
	var readErr error
	read := func(table string, proto any, add func(json.RawMessage) error) {
		if readErr != nil {
			return
		}
		have := cols[table]
		if have == nil {
			src.MissingTables = append(src.MissingTables, table)
			return
		}
		for _, c := range jsonFields(proto) {
			if !have[c] {
				src.MissingColumns = append(src.MissingColumns, table+"."+c)
			}
		}
		q := "SELECT row_to_json(t)::text FROM " + pgx.Identifier{table}.Sanitize() + " t"
		rows, err := tx.Query(ctx, q)
		if err != nil {
			readErr = fmt.Errorf("read %s: %w", table, err)
			return
		}
		defer rows.Close()
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				readErr = fmt.Errorf("read %s: %w", table, err)
				return
			}
			if err := add(json.RawMessage(s)); err != nil {
				readErr = fmt.Errorf("decode %s row: %w", table, err)
				return
			}
		}
		if err := rows.Err(); err != nil {
			readErr = fmt.Errorf("read %s: %w", table, err)
		}
	}
	read(tBudget, Budget{}, appender(&src.Budgets))
	read(tKey, Key{}, appender(&src.Keys))
	read(tTeam, Team{}, appender(&src.Teams))
	read(tTeamMember, TeamMembership{}, appender(&src.TeamMemberships))
	read(tUser, User{}, appender(&src.Users))
	read(tOrg, Organization{}, appender(&src.Organizations))
	read(tOrgMember, OrgMembership{}, appender(&src.OrgMemberships))
	read(tEndUser, EndUser{}, appender(&src.EndUsers))
	read(tModel, ProxyModel{}, appender(&src.ProxyModels))
	read(tDeprecated, DeprecatedToken{}, appender(&src.DeprecatedTokens))
	if readErr != nil {
		return nil, readErr
	}
	for _, tbl := range unreadTables {
		if cols[tbl] == nil {
			continue
		}
		var n int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{tbl}.Sanitize()).Scan(&n); err != nil {
			return nil, fmt.Errorf("count %s: %w", tbl, err)
		}
		if n > 0 {
			src.Unread[tbl] = n
		}
	}
	sort.Strings(src.MissingColumns)
	return src, nil
}

func appender[T any](dst *[]T) func(json.RawMessage) error {
	return func(b json.RawMessage) error {
		var v T
		if err := json.Unmarshal(b, &v); err != nil {
			return err
		}
		*dst = append(*dst, v)
		return nil
	}
}

// jsonFields lists the json tags of a struct value's fields.
func jsonFields(v any) []string {
	b, _ := json.Marshal(v)
	var m map[string]json.RawMessage
	_ = json.Unmarshal(b, &m)
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// isEmptyJSON reports whether a JSON column holds nothing worth keeping.
func isEmptyJSON(r Raw) bool {
	s := strings.TrimSpace(string(r))
	return s == "" || s == "null" || s == "{}" || s == "[]"
}

package storetest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// t0 is the suite's clock origin. Every time the suite stores has
// microsecond precision, the resolution every backend must keep.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 123456000, time.UTC)

// zone is a non-UTC location: times must come back equal (time.Equal), not
// necessarily in the same location.
var zone = time.FixedZone("UTC+5:30", 5*3600+1800)

// at is t0 plus i milliseconds: distinct, ordered creation times.
func at(i int) time.Time { return t0.Add(time.Duration(i) * time.Millisecond) }

func ptr[T any](v T) *T { return &v }

// hashOf is the SHA-256 hex of s, the form key hashes take.
func hashOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// newKey is a key with only the required fields.
func newKey(id string, created time.Time) store.Key {
	return store.Key{TokenID: id, KeyHash: hashOf("sk-" + id), KeyName: "sk-..." + id, CreatedAt: created, UpdatedAt: created}
}

func newTeam(id string, created time.Time) store.Team {
	return store.Team{TeamID: id, CreatedAt: created, UpdatedAt: created}
}

func newUser(id string, created time.Time) store.User {
	return store.User{UserID: id, UserRole: store.RoleInternalUser, CreatedAt: created, UpdatedAt: created}
}

func newOrg(id string, created time.Time) store.Organization {
	return store.Organization{OrganizationID: id, OrganizationAlias: "alias " + id, CreatedAt: created, UpdatedAt: created}
}

func newModel(id, name string) store.Model {
	return store.Model{ID: id, ModelName: name, UpstreamModel: "openai/" + name, CreatedAt: t0, UpdatedAt: t0}
}

// fullLimits sets every limit, including a pointer to zero (a limit of 0
// is not "no limit") and a value beyond float64's exact integers.
func fullLimits() store.Limits {
	return store.Limits{
		MaxBudget:           ptr(int64(9007199254740993)),
		SoftBudget:          ptr(int64(0)),
		BudgetDuration:      "30d",
		BudgetResetAt:       ptr(t0.Add(30 * 24 * time.Hour).In(zone)),
		RPMLimit:            ptr(int64(60)),
		TPMLimit:            ptr(int64(100000)),
		MaxParallelRequests: ptr(int64(4)),
	}
}

// fullKey sets every field of a key.
func fullKey(id string) store.Key {
	return store.Key{
		TokenID:        id,
		KeyHash:        hashOf("sk-full-" + id),
		KeyName:        "sk-...full",
		KeyAlias:       "alias-" + id,
		UserID:         "user-" + id,
		TeamID:         "team-" + id,
		OrganizationID: "org-" + id,
		ServiceAccount: true,
		BudgetID:       "budget-" + id,
		Models:         []string{"gpt-4o", "claude-3-5-sonnet"},
		Limits:         fullLimits(),
		ModelMaxBudget: map[string]store.ModelBudget{
			"gpt-4o":            {BudgetLimit: 5000000, TimePeriod: "1d"},
			"claude-3-5-sonnet": {BudgetLimit: 1},
		},
		ModelRPMLimit:  map[string]int64{"gpt-4o": 10},
		ModelTPMLimit:  map[string]int64{"gpt-4o": 1000, "claude-3-5-sonnet": 0},
		Metadata:       json.RawMessage(`{"team":"ml","nested":{"list":[1,2.5,"x",null],"flag":true},"text":"h\u00e9llo \"quoted\" <&>"}`),
		Permissions:    json.RawMessage(`{"allow_pii_controls":false}`),
		Guardrails:     []string{"pii-mask", "prompt-injection"},
		Tags:           []string{"prod", "batch"},
		EnforcedParams: []string{"user", "metadata.generation_name"},
		AllowedRoutes:  []string{"/chat/completions", "/embeddings"},
		Blocked:        true,
		Expires:        ptr(t0.Add(90 * 24 * time.Hour).In(zone)),
		AutoRotate:     true,

		RotationInterval: "30d",
		KeyRotationAt:    ptr(t0.Add(30 * 24 * time.Hour)),
		LastRotationAt:   ptr(t0.Add(-time.Hour)),
		RotationCount:    3,
		PreviousHashes: []store.PreviousHash{
			{KeyHash: hashOf("sk-old-1-" + id), ValidUntil: t0.Add(time.Hour)},
			{KeyHash: hashOf("sk-old-2-" + id), ValidUntil: t0.Add(2 * time.Hour).In(zone)},
		},
		Spend:     1234567,
		CreatedAt: t0,
		UpdatedAt: t0.Add(time.Minute),
		CreatedBy: "admin",
		UpdatedBy: "ops",
	}
}

func fullTeam(id string) store.Team {
	return store.Team{
		TeamID:         id,
		TeamAlias:      "Team " + id,
		OrganizationID: "org-" + id,
		Members: []store.TeamMember{
			{UserID: "alice", Role: store.TeamRoleAdmin, MaxBudgetInTeam: ptr(int64(0)), Spend: 17},
			{UserID: "bob", Role: store.TeamRoleUser, MaxBudgetInTeam: ptr(int64(25000000)), BudgetID: "tier-b"},
			{UserID: "carol", Role: store.TeamRoleUser},
		},
		Models:           []string{"gpt-4o"},
		Limits:           fullLimits(),
		TeamMemberBudget: ptr(int64(10000000)),
		Metadata:         json.RawMessage(`{"cost_center":42,"owners":["a","b"]}`),
		Blocked:          true,
		Spend:            99,
		CreatedAt:        t0,
		UpdatedAt:        t0.Add(time.Second).In(zone),
	}
}

func fullUser(id string) store.User {
	return store.User{
		UserID:    id,
		UserAlias: "User " + id,
		UserEmail: id + "@example.com",
		UserRole:  store.RoleProxyAdminViewer,
		Models:    []string{"gpt-4o", "o1"},
		Limits:    fullLimits(),
		Metadata:  json.RawMessage(`{"sso":{"provider":"okta","groups":[]}}`),
		Blocked:   true,
		Spend:     7,
		CreatedAt: t0,
		UpdatedAt: t0.Add(time.Second),
	}
}

func fullOrg(id string) store.Organization {
	return store.Organization{
		OrganizationID:    id,
		OrganizationAlias: "Org " + id,
		BudgetID:          "budget-" + id,
		Members: []store.OrgMember{
			{UserID: "alice", Role: "org_admin"},
			{UserID: "bob", Role: store.RoleInternalUserViewer},
		},
		Models:    []string{"gpt-4o"},
		Limits:    fullLimits(),
		Metadata:  json.RawMessage(`{"region":"eu"}`),
		Blocked:   true,
		Spend:     1,
		CreatedAt: t0,
		UpdatedAt: t0.Add(time.Second),
	}
}

func fullModel(id string) store.Model {
	return store.Model{
		ID:                 id,
		ModelName:          "gpt-4o",
		UpstreamModel:      "openai/gpt-4o-2024-08-06",
		APIBase:            "http://127.0.0.1:9999/v1",
		APIKey:             "os.environ/OPENAI_API_KEY",
		APIVersion:         "2024-06-01",
		InputCostPerToken:  2500000,
		OutputCostPerToken: 10000000,
		AccessGroups:       []string{"beta", "internal"},
		RPM:                ptr(int64(0)),
		TPM:                ptr(int64(2000000)),
		Params:             json.RawMessage(`{"timeout":30,"stream_timeout":10.5,"max_retries":2}`),
		ModelInfo:          json.RawMessage(`{"mode":"chat","base_model":"gpt-4o"}`),
		FromConfig:         true,
		CreatedAt:          t0,
		UpdatedAt:          t0.Add(time.Second),
	}
}

// Settings as an operator writes them.
func fullSettings() store.Settings {
	return store.Settings{
		GeneralSettings: json.RawMessage(`{"service_account_settings":{"enforced_params":["user"]},` +
			`"key_generation_settings":{"team_key_generation":{"allowed_team_member_roles":["admin"]}}}`),
		UpdatedAt: t0.In(zone),
	}
}

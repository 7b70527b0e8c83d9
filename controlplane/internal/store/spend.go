package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// SpendRecord is one request's spend as a proxy reported it. It never holds
// the key's secret or the prompt: TokenID names the key.
type SpendRecord struct {
	// Seq is the record's sequence number in its proxy's outbox.
	Seq              uint64    `json:"seq"`
	RequestID        string    `json:"request_id"`
	TokenID          string    `json:"token_id,omitempty"`
	TeamID           string    `json:"team_id,omitempty"`
	UserID           string    `json:"user_id,omitempty"`
	OrganizationID   string    `json:"organization_id,omitempty"`
	EndUser          string    `json:"end_user,omitempty"`
	Model            string    `json:"model,omitempty"`
	DeploymentID     string    `json:"deployment_id,omitempty"`
	PromptTokens     int64     `json:"prompt_tokens"`
	CompletionTokens int64     `json:"completion_tokens"`
	Cost             int64     `json:"cost"` // nano-USD
	Streamed         bool      `json:"streamed,omitempty"`
	Estimated        bool      `json:"estimated,omitempty"`
	Status           int       `json:"status,omitempty"`
	Route            string    `json:"route,omitempty"`
	StartTime        time.Time `json:"start_time"`
	EndTime          time.Time `json:"end_time"`
}

// SpendBatch is a run of records from one proxy outbox, in increasing Seq
// order. Sequence numbers are scoped by (ProxyID, OutboxID).
type SpendBatch struct {
	ProxyID  string
	OutboxID string
	Records  []SpendRecord
}

// SpendLog is a stored spend record and where it came from.
type SpendLog struct {
	SpendRecord
	ProxyID  string `json:"proxy_id"`
	OutboxID string `json:"outbox_id"`
}

// SpendLogFilter narrows ListSpendLogs. Empty fields do not filter; Since is
// inclusive and Until exclusive, on StartTime; zero times do not bound.
type SpendLogFilter struct {
	TokenID   string
	RequestID string
	UserID    string
	TeamID    string
	EndUser   string
	Since     time.Time
	Until     time.Time
	Page      Page
}

// EndUser is a customer of the operator: the "user" field of requests.
type EndUser struct {
	EndUserID string `json:"end_user_id"`
	Spend     int64  `json:"spend"` // nano-USD
	// Alias is a display name (LiteLLM's alias).
	Alias string `json:"alias,omitempty"`
	// MaxBudget is the end user's budget (nano-USD; nil: none, then
	// general_settings.max_end_user_budget applies). Proxies refuse a
	// request naming the end user once Spend reaches it.
	MaxBudget *int64 `json:"max_budget,omitempty"`
	// Blocked: proxies refuse every request naming the end user.
	Blocked bool `json:"blocked,omitempty"`
	// BudgetID links the end user to a budget (budgets.go), whose
	// max_budget, rpm_limit and tpm_limit are copied into the fields here.
	BudgetID string `json:"budget_id,omitempty"`
	// RPMLimit and TPMLimit (nil: none) come from the end user's budget.
	RPMLimit  *int64    `json:"rpm_limit,omitempty"`
	TPMLimit  *int64    `json:"tpm_limit,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Validate checks what every backend relies on: a source, and records with
// increasing, positive sequence numbers.
func (b *SpendBatch) Validate() error {
	if b.ProxyID == "" || b.OutboxID == "" {
		return errors.New("store: spend batch without proxy_id or outbox_id")
	}
	var prev uint64
	for i := range b.Records {
		if b.Records[i].Seq <= prev {
			return fmt.Errorf("store: spend batch sequence numbers not increasing at %d", b.Records[i].Seq)
		}
		prev = b.Records[i].Seq
	}
	return nil
}

// Above returns the records with Seq > hw (the batch's records are in
// increasing order).
func (b *SpendBatch) Above(hw uint64) []SpendRecord {
	i := sort.Search(len(b.Records), func(i int) bool { return b.Records[i].Seq > hw })
	return b.Records[i:]
}

// MemberRef names a team membership.
type MemberRef struct{ TeamID, UserID string }

// SpendTotals is what a run of records adds to each entity, so that a
// backend writes each touched entity once per batch.
type SpendTotals struct {
	Keys      map[string]int64
	KeyModels map[string]map[string]int64
	Teams     map[string]int64
	Members   map[MemberRef]int64
	Users     map[string]int64
	Orgs      map[string]int64
	EndUsers  map[string]int64

	// Crossings collects, as the Add* methods run, every object whose
	// spend went from below its soft budget to at or above it.
	Crossings []SoftBudgetCrossing
	// After collects the spend each Add* left on its object.
	After []ObjectSpend
}

// ObjectSpend is an object's spend after a batch (nano-USD).
type ObjectSpend struct {
	Kind, ID string
	Spend    int64
}

// SoftBudgetCrossing is an object whose spend reached its soft_budget in a
// batch. Spend is reset at every budget period, so an object crosses at
// most once per period; a replayed batch applies nothing and crosses
// nothing. Money is nano-USD.
type SoftBudgetCrossing struct {
	Kind          string // KindKey, KindTeam, KindUser or KindOrganization
	ID            string
	Spend         int64
	SoftBudget    int64
	MaxBudget     *int64
	BudgetResetAt *time.Time
	// For a key: its display form, alias, user and team.
	KeyName, KeyAlias, UserID, TeamID string
}

// SpendResult is what ApplySpend did.
type SpendResult struct {
	Applied             int // records applied (0 for a replay)
	SoftBudgetCrossings []SoftBudgetCrossing
	// Spends is the spend of every key, team, user, organization and end
	// user the batch touched, after it (proxies learn from it when their synced
	// state holds their records: DESIGN.md, "Money").
	Spends []ObjectSpend
}

func (t *SpendTotals) cross(kind, id string, before int64, l *Limits, after int64) *SoftBudgetCrossing {
	if l.SoftBudget == nil || before >= *l.SoftBudget || after < *l.SoftBudget {
		return nil
	}
	t.Crossings = append(t.Crossings, SoftBudgetCrossing{Kind: kind, ID: id, Spend: after, SoftBudget: *l.SoftBudget,
		MaxBudget: l.MaxBudget, BudgetResetAt: l.BudgetResetAt})
	return &t.Crossings[len(t.Crossings)-1]
}

// Totals sums recs per entity.
func Totals(recs []SpendRecord) SpendTotals {
	t := SpendTotals{
		Keys: map[string]int64{}, KeyModels: map[string]map[string]int64{}, Teams: map[string]int64{},
		Members: map[MemberRef]int64{}, Users: map[string]int64{}, Orgs: map[string]int64{}, EndUsers: map[string]int64{},
	}
	for i := range recs {
		r := &recs[i]
		if r.TokenID != "" {
			t.Keys[r.TokenID] += r.Cost
			if r.Model != "" {
				m := t.KeyModels[r.TokenID]
				if m == nil {
					m = map[string]int64{}
					t.KeyModels[r.TokenID] = m
				}
				m[r.Model] += r.Cost
			}
		}
		if r.TeamID != "" {
			t.Teams[r.TeamID] += r.Cost
			if r.UserID != "" {
				t.Members[MemberRef{r.TeamID, r.UserID}] += r.Cost
			}
		}
		if r.UserID != "" {
			t.Users[r.UserID] += r.Cost
		}
		if r.OrganizationID != "" {
			t.Orgs[r.OrganizationID] += r.Cost
		}
		if r.EndUser != "" {
			t.EndUsers[r.EndUser] += r.Cost
		}
	}
	return t
}

// SortedIDs returns m's keys in order (backends lock rows in a fixed order
// so that concurrent batches never deadlock).
func SortedIDs(m map[string]int64) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// AddToKey adds the totals' spend to k.
func (t *SpendTotals) AddToKey(k *Key) {
	before := k.Spend
	k.Spend += t.Keys[k.TokenID]
	t.After = append(t.After, ObjectSpend{KindKey, k.TokenID, k.Spend})
	if c := t.cross(KindKey, k.TokenID, before, &k.Limits, k.Spend); c != nil {
		c.KeyName, c.KeyAlias, c.UserID, c.TeamID = k.KeyName, k.KeyAlias, k.UserID, k.TeamID
	}
	for model, c := range t.KeyModels[k.TokenID] {
		if k.ModelSpend == nil {
			k.ModelSpend = map[string]int64{}
		}
		k.ModelSpend[model] += c
		if _, ok := k.ModelMaxBudget[model]; ok {
			t.After = append(t.After, ObjectSpend{KindKeyModel, KeyModelID(k.TokenID, model), k.ModelSpend[model]})
		}
	}
}

// KeyModelID names a key's spend on a model in ObjectSpend (KindKeyModel).
func KeyModelID(tokenID, model string) string { return tokenID + "/" + model }

// AddToTeam adds the totals' spend to tm and to its members.
func (t *SpendTotals) AddToTeam(tm *Team) {
	before := tm.Spend
	tm.Spend += t.Teams[tm.TeamID]
	t.After = append(t.After, ObjectSpend{KindTeam, tm.TeamID, tm.Spend})
	t.cross(KindTeam, tm.TeamID, before, &tm.Limits, tm.Spend)
	for i := range tm.Members {
		if c, ok := t.Members[MemberRef{tm.TeamID, tm.Members[i].UserID}]; ok {
			tm.Members[i].Spend += c
			t.After = append(t.After, ObjectSpend{KindTeamMember, TeamMemberID(tm.TeamID, tm.Members[i].UserID), tm.Members[i].Spend})
		}
	}
}

// TeamMemberID names a user's spend in a team in ObjectSpend (KindTeamMember).
func TeamMemberID(teamID, userID string) string { return teamID + "/" + userID }

// AddToUser adds the totals' spend to u.
func (t *SpendTotals) AddToUser(u *User) {
	before := u.Spend
	u.Spend += t.Users[u.UserID]
	t.After = append(t.After, ObjectSpend{KindUser, u.UserID, u.Spend})
	t.cross(KindUser, u.UserID, before, &u.Limits, u.Spend)
}

// AddToOrg adds the totals' spend to o.
func (t *SpendTotals) AddToOrg(o *Organization) {
	before := o.Spend
	o.Spend += t.Orgs[o.OrganizationID]
	t.After = append(t.After, ObjectSpend{KindOrganization, o.OrganizationID, o.Spend})
	t.cross(KindOrganization, o.OrganizationID, before, &o.Limits, o.Spend)
}

// SpendGroup is what SpendReporter.SpendReport groups spend logs by.
type SpendGroup string

// The groups of a spend report.
const (
	SpendByKey     SpendGroup = "token_id"
	SpendByTeam    SpendGroup = "team_id"
	SpendByUser    SpendGroup = "user_id"
	SpendByModel   SpendGroup = "model"
	SpendByEndUser SpendGroup = "end_user"
)

// Valid reports whether g is one of the groups above.
func (g SpendGroup) Valid() bool {
	switch g {
	case SpendByKey, SpendByTeam, SpendByUser, SpendByModel, SpendByEndUser:
		return true
	}
	return false
}

// SpendDay sums the spend logs of one UTC day and group.
type SpendDay struct {
	Day      time.Time // midnight UTC
	Group    string    // "" for logs without the grouped field
	Cost     int64     // nano-USD
	Requests int64
	Tokens   int64 // prompt + completion
}

// SpendReporter is implemented by readers that sum spend logs themselves
// (both backends do), in one pass instead of page by page.
//
// SpendReport sums the logs f matches (f.Page is ignored) per UTC day of
// their StartTime and per group, ordered by day, then group. An invalid
// group is an error.
type SpendReporter interface {
	SpendReport(ctx context.Context, f SpendLogFilter, by SpendGroup) ([]SpendDay, error)
}

// SortSpendDays orders report rows by day, then group.
func SortSpendDays(rows []SpendDay) {
	slices.SortFunc(rows, func(a, b SpendDay) int {
		if c := a.Day.Compare(b.Day); c != 0 {
			return c
		}
		return strings.Compare(a.Group, b.Group)
	})
}

package store

import (
	"context"
	"encoding/json"
	"time"
)

// SaaS team API entities (SaaS LiteLLM's team layer, served at /api/*).
//
// A SaaS team is an ordinary Team with its SaaS part in Team.SaaS: status,
// credits and the model groups it may use, resolved to ordered model names.
// That part is synced to the data planes with the team, so every proxy
// refuses a suspended, paused or credit-less team from memory. Model groups,
// jobs, job calls and credit transactions live only on the control plane and
// are never synced (their writes record no Change and get no revision).

// Team statuses of the SaaS team API.
const (
	TeamStatusActive    = "active"
	TeamStatusSuspended = "suspended"
	TeamStatusPaused    = "paused"
)

// TeamSaaS is the SaaS part of a team.
type TeamSaaS struct {
	Status           string `json:"status"` // active | suspended | paused
	CreditsAllocated int64  `json:"credits_allocated"`
	CreditsUsed      int64  `json:"credits_used"`
	CreditsRemaining int64  `json:"credits_remaining"`
	// ModelGroups are the team's model groups in assignment order, each
	// with its model names in priority order (resolved when assigned).
	ModelGroups []TeamModelGroup `json:"model_groups,omitempty"`
	// KeyTokenID is the token id of the team's virtual key; KeyName its
	// display form ("sk-...abcd"). The plaintext is never stored.
	KeyTokenID string `json:"key_token_id,omitempty"`
	KeyName    string `json:"key_name,omitempty"`
}

// Refused reports whether the team may not make calls: not active, or no
// credits left.
func (s *TeamSaaS) Refused() bool {
	return s.Status != TeamStatusActive || s.CreditsRemaining <= 0
}

// GroupNames returns the names of the team's model groups.
func (s *TeamSaaS) GroupNames() []string {
	out := make([]string, 0, len(s.ModelGroups))
	for _, g := range s.ModelGroups {
		out = append(out, g.Name)
	}
	return out
}

// TeamModelGroup is a model group as assigned to a team.
type TeamModelGroup struct {
	Name   string   `json:"name"`
	Models []string `json:"models"` // public model names, highest priority first
}

// ModelGroupModel is one model of a group; lower Priority is tried first.
type ModelGroupModel struct {
	ModelName string `json:"model_name"`
	Priority  int    `json:"priority"`
}

// ModelGroup is a named, ordered list of models (SaaS LiteLLM's model
// group). Name is unique.
type ModelGroup struct {
	Name        string            `json:"group_name"`
	DisplayName string            `json:"display_name,omitempty"`
	Description string            `json:"description,omitempty"`
	Models      []ModelGroupModel `json:"models"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
}

// Job statuses.
const (
	JobPending    = "pending"
	JobInProgress = "in_progress"
	JobCompleted  = "completed"
	JobFailed     = "failed"
)

// Job groups the LLM calls of one business operation of a team.
type Job struct {
	JobID           string          `json:"job_id"`
	TeamID          string          `json:"team_id"`
	OrganizationID  string          `json:"organization_id,omitempty"`
	UserID          string          `json:"user_id,omitempty"`
	JobType         string          `json:"job_type"`
	Status          string          `json:"status"`
	Metadata        json.RawMessage `json:"metadata,omitempty"`
	ErrorMessage    string          `json:"error_message,omitempty"`
	CreditApplied   bool            `json:"credit_applied"`
	ModelGroupsUsed []string        `json:"model_groups_used,omitempty"`
	CreatedAt       time.Time       `json:"created_at"`
	StartedAt       *time.Time      `json:"started_at,omitempty"`
	CompletedAt     *time.Time      `json:"completed_at,omitempty"`
}

// JobCall is one upstream attempt made for a job. One LLM call of the API
// (RequestID, the call_id its client sees) makes one attempt per model of
// its group until one succeeds; CallID names the attempt.
type JobCall struct {
	CallID       string `json:"call_id"`
	RequestID    string `json:"request_id"`
	Attempt      int    `json:"attempt"`
	JobID        string `json:"job_id"`
	TeamID       string `json:"team_id"`
	ModelGroup   string `json:"model_group"`
	Model        string `json:"model"` // public model name that served (or failed)
	DeploymentID string `json:"deployment_id,omitempty"`
	Purpose      string `json:"purpose,omitempty"`
	ProxyID      string `json:"proxy_id,omitempty"`

	PromptTokens     int64  `json:"prompt_tokens"`
	CompletionTokens int64  `json:"completion_tokens"`
	TotalTokens      int64  `json:"total_tokens"`
	Cost             int64  `json:"cost"` // nano-USD
	LatencyMS        int64  `json:"latency_ms"`
	Status           int    `json:"status"`          // HTTP status of the attempt
	Error            string `json:"error,omitempty"` // empty when the call succeeded

	CreatedAt time.Time `json:"created_at"`
}

// Credit transaction types.
const (
	CreditAllocation = "allocation"
	CreditDeduction  = "deduction"
)

// CreditTransaction is one change of a team's credits.
type CreditTransaction struct {
	TransactionID  string          `json:"transaction_id"`
	TeamID         string          `json:"team_id"`
	OrganizationID string          `json:"organization_id,omitempty"`
	JobID          string          `json:"job_id,omitempty"`
	Type           string          `json:"transaction_type"` // allocation | deduction
	Amount         int64           `json:"credits_amount"`
	BalanceBefore  int64           `json:"balance_before"`
	BalanceAfter   int64           `json:"balance_after"`
	Reason         string          `json:"reason,omitempty"`
	Metadata       json.RawMessage `json:"metadata,omitempty"`
	CreatedAt      time.Time       `json:"created_at"`
}

// JobFilter narrows ListJobs.
type JobFilter struct {
	TeamID string // required
	Page   Page
}

// SaaSReader reads the SaaS entities (part of Reader).
type SaaSReader interface {
	// GetModelGroup returns ErrNotFound for an unknown name.
	GetModelGroup(ctx context.Context, name string) (ModelGroup, error)
	// ListModelGroups returns every group ordered by name.
	ListModelGroups(ctx context.Context) ([]ModelGroup, error)
	// GetJob returns ErrNotFound for an unknown id.
	GetJob(ctx context.Context, jobID string) (Job, error)
	// ListJobs returns a team's jobs newest first (reverse insertion
	// order) and their number.
	ListJobs(ctx context.Context, f JobFilter) ([]Job, int, error)
	// ListJobCalls returns a job's calls in insertion order.
	ListJobCalls(ctx context.Context, jobID string) ([]JobCall, error)
	// ListCreditTransactions returns a team's credit transactions newest
	// first (reverse insertion order) and their number.
	ListCreditTransactions(ctx context.Context, teamID string, p Page) ([]CreditTransaction, int, error)
}

// SaaSWriter writes the SaaS entities (part of Tx). None of these writes
// records a Change: the entities are not synced.
type SaaSWriter interface {
	// CreateModelGroup fails with a *ConflictError (Field "group_name")
	// when the name is taken.
	CreateModelGroup(ctx context.Context, g ModelGroup) error
	// CreateJob fails with a *ConflictError (Field "job_id") when the id
	// is taken.
	CreateJob(ctx context.Context, j Job) error
	// UpdateJob replaces the job with the same JobID (ErrNotFound if none).
	UpdateJob(ctx context.Context, j Job) error
	// AddJobCall appends a call (Conflict "call_id" for a taken id).
	AddJobCall(ctx context.Context, c JobCall) error
	// AddCreditTransaction appends a transaction (Conflict
	// "transaction_id" for a taken id).
	AddCreditTransaction(ctx context.Context, c CreditTransaction) error
}

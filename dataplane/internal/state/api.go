package state

// Limits mirror syncv1.Limits: money in nano-USD, -1 (or any negative) means
// no limit, budget_reset_at in unix seconds (0 none).
type Limits struct {
	MaxBudget           int64
	SoftBudget          int64
	BudgetDuration      string
	BudgetResetAtUnix   int64
	RPMLimit            int64
	TPMLimit            int64
	MaxParallelRequests int64
}

// Policy is the part of a key that many keys share; it is interned, so
// identical policies are one object. Immutable once published.
type Policy struct {
	Models         []string // empty: all models the team/org allow
	EnforcedParams []string // dotted names ("metadata.generation_name")
	AllowedRoutes  []string // empty: LLM routes allowed
	Tags           []string
	ModelRPMLimit  map[string]int64
	ModelTPMLimit  map[string]int64
	ModelMaxBudget map[string]ModelBudget
}

// ModelBudget is a per-model budget on a key (nano-USD).
type ModelBudget struct {
	BudgetLimit int64
	TimePeriod  string
}

// KeyInfo is a key as the decision reads it. It is returned by value; its
// strings and Policy are immutable and may be shared with the state.
type KeyInfo struct {
	TokenID        string
	UserID         string
	TeamID         string
	OrganizationID string
	ServiceAccount bool
	Blocked        bool
	ExpiresUnix    int64 // 0: never
	Limits         Limits
	Spend          int64
	Policy         *Policy // never nil
}

// TeamMember is a membership as the decision reads it.
type TeamMember struct {
	UserID          string
	Role            string
	MaxBudgetInTeam int64 // -1: none
	Spend           int64
}

// Team, User, Org and Model are immutable once published; a change replaces
// the whole object.
type Team struct {
	TeamID         string
	OrganizationID string
	Models         []string
	Limits         Limits
	Members        []TeamMember
	Blocked        bool
	Spend          int64
	// TeamMemberBudget is the default per-member budget in nano-USD (-1:
	// none) for members without their own max_budget_in_team.
	TeamMemberBudget int64
	// SaaS is set for teams of the SaaS team API (/api/*).
	SaaS *TeamSaaS
	// ModelAliases maps a model name the team's keys may request to the
	// public model it stands for (nil: none).
	ModelAliases map[string]string
}

// TeamSaaS is a SaaS team's status, credits and model groups.
type TeamSaaS struct {
	Status           string // active | suspended | paused
	CreditsAllocated int64
	CreditsUsed      int64
	CreditsRemaining int64
	ModelGroups      []TeamModelGroup
	KeyName          string // display form of the team's key
	TeamAlias        string
}

// TeamModelGroup is a model group with its models, highest priority first.
type TeamModelGroup struct {
	Name   string
	Models []string
}

// Refused reports whether the team may make no call: not active, or no
// credits left.
func (s *TeamSaaS) Refused() bool {
	return s.Status != "active" || s.CreditsRemaining <= 0
}

// Group returns the team's model group name.
func (s *TeamSaaS) Group(name string) (TeamModelGroup, bool) {
	for _, g := range s.ModelGroups {
		if g.Name == name {
			return g, true
		}
	}
	return TeamModelGroup{}, false
}

// Member returns the membership of userID in t.
func (t *Team) Member(userID string) (TeamMember, bool) {
	for _, m := range t.Members {
		if m.UserID == userID {
			return m, true
		}
	}
	return TeamMember{}, false
}

// User is a user as the decision reads it.
type User struct {
	UserID   string
	UserRole string
	Models   []string
	Limits   Limits
	Blocked  bool
	Spend    int64
}

// Org is an organization as the decision reads it.
type Org struct {
	OrganizationID string
	Models         []string
	Limits         Limits
	Blocked        bool
	Spend          int64
}

// Model is one deployment of a public model name.
type Model struct {
	ID            string
	ModelName     string
	UpstreamModel string // as configured, e.g. "openai/gpt-4o-mini"
	APIBase       string
	APIKey        string // reference "os.environ/NAME" or literal; resolve with ResolveCredential
	APIVersion    string
	InputCost     int64 // pico-USD per token
	OutputCost    int64
	// Prices beyond input/output tokens, pico-USD per unit; 0 when unset
	// (cached prompt tokens then cost InputCost).
	CacheCreationCost int64 // per prompt token written to the cache
	CacheReadCost     int64 // per prompt token read from the cache
	ImageCost         int64 // per image generated
	SecondCost        int64 // per second of audio transcribed
	CharacterCost     int64 // per character synthesized
	QueryCost         int64 // per rerank query
	AccessGroups      []string
	RPM, TPM          int64 // -1 none
}

// EndUser is an end user (the request body's "user") as the decision reads
// it. Immutable once published.
type EndUser struct {
	EndUserID string
	Spend     int64 // nano-USD
	MaxBudget int64 // nano-USD; negative: none (Settings.MaxEndUserBudget applies)
	Blocked   bool
	// RPM and TPM are the end user's rate limits (from its budget) when
	// HasRPM / HasTPM (flags, so that the zero EndUser has none).
	RPM, TPM       int64
	HasRPM, HasTPM bool
}

// Settings is the parsed part of general_settings the decision needs.
type Settings struct {
	// ServiceAccountEnforcedParams is
	// general_settings.service_account_settings.enforced_params.
	ServiceAccountEnforcedParams []string
	// MaxEndUserBudget is general_settings.max_end_user_budget in nano-USD,
	// when HasMaxEndUserBudget: the budget of an end user without its own
	// max_budget. (A flag, so that the zero Settings has no budget.)
	MaxEndUserBudget    int64
	HasMaxEndUserBudget bool
	// Raw is the whole general_settings JSON object.
	Raw []byte
}

// Reader is what the proxy's decision path reads. Implementations are safe
// for concurrent use and never block on the network.
type Reader interface {
	// Ready reports whether a snapshot (from the control plane or from the
	// cache) is loaded.
	Ready() bool
	// Revision is the revision of the loaded state.
	Revision() int64
	// LookupKey finds a key by the SHA-256 of its secret, also matching a
	// regenerated key's previous secret while nowMilli (unix ms) is before
	// its grace deadline (kept to the millisecond).
	LookupKey(hash *[32]byte, nowMilli int64) (KeyInfo, bool)
	Team(id string) (*Team, bool)
	User(id string) (*User, bool)
	Org(id string) (*Org, bool)
	// Deployments returns the deployments of a public model name (nil if none).
	Deployments(modelName string) []*Model
	// ModelNames returns every public model name, sorted.
	ModelNames() []string
	// AccessGroup returns the public model names in an access group.
	AccessGroup(group string) []string
	Settings() *Settings
	// EndUser returns an end user by id (false: never seen, so no spend).
	EndUser(id string) (*EndUser, bool)
	// KeyModelSpend is a key's synced spend on a model (nano-USD), kept
	// only for the models of its model_max_budget (0 otherwise).
	KeyModelSpend(tokenID, model string) int64
}

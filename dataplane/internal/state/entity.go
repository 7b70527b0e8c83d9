package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// Entity kinds on the wire (syncv1.Entity.kind).
const (
	KindKey          = "key"
	KindTeam         = "team"
	KindUser         = "user"
	KindOrganization = "organization"
	KindModel        = "model"
	KindSettings     = "settings"
	KindEndUser      = "end_user"

	// SettingsID is the id of the single settings entity.
	SettingsID = "settings"
)

var (
	// ErrGap is wrapped by ApplyDelta's error when a delta does not follow
	// the loaded revision (or nothing is loaded): the caller must
	// resubscribe. The state is unchanged.
	ErrGap = errors.New("state: revision gap")
	// ErrInvalidEntity is wrapped by the errors of Validate, Builder.Add and
	// ApplyDelta for an entity that cannot be applied (unknown kind, missing
	// value, malformed key hash, ...).
	ErrInvalidEntity = errors.New("state: invalid entity")
)

func invalid(e *syncv1.Entity, why string) error {
	return invalidID(e.GetKind(), e.GetId(), why)
}

func invalidID(kind, id, why string) error {
	// Never echo hashes or values: only kind and id.
	return fmt.Errorf("%w: %s %q: %s", ErrInvalidEntity, kind, id, why)
}

// Validate reports whether e can be applied (a tombstone needs only a known
// kind and an id). Builder.Add and ApplyDelta call it; callers use it to
// screen entities before persisting them.
func Validate(e *syncv1.Entity) error {
	if e == nil {
		return fmt.Errorf("%w: nil entity", ErrInvalidEntity)
	}
	if e.Id == "" {
		return invalid(e, "empty id")
	}
	if len(e.Id) > maxStringLen {
		return invalid(e, "id too long")
	}
	switch e.Kind {
	case KindKey, KindTeam, KindUser, KindOrganization, KindModel, KindEndUser:
	case KindSettings:
		if e.Id != SettingsID {
			return invalid(e, "settings id must be "+SettingsID)
		}
	default:
		return invalid(e, "unknown kind")
	}
	if e.Deleted {
		return nil
	}
	switch e.Kind {
	case KindKey:
		k := e.GetKey()
		if k == nil {
			return invalid(e, "missing key value")
		}
		if len(k.KeyHash) != 32 {
			return invalid(e, "key_hash is not 32 bytes")
		}
		for _, p := range k.PreviousHashes {
			if len(p.GetKeyHash()) != 32 {
				return invalid(e, "previous key_hash is not 32 bytes")
			}
		}
		if len(k.UserId) > maxStringLen || len(k.TeamId) > maxStringLen || len(k.OrganizationId) > maxStringLen {
			return invalid(e, "owner id too long")
		}
	case KindTeam:
		if e.GetTeam() == nil {
			return invalid(e, "missing team value")
		}
	case KindUser:
		if e.GetUser() == nil {
			return invalid(e, "missing user value")
		}
	case KindOrganization:
		if e.GetOrganization() == nil {
			return invalid(e, "missing organization value")
		}
	case KindEndUser:
		if e.GetEndUser() == nil {
			return invalid(e, "missing end_user value")
		}
	case KindModel:
		m := e.GetModel()
		if m == nil {
			return invalid(e, "missing model value")
		}
		if m.ModelName == "" {
			return invalid(e, "empty model_name")
		}
	case KindSettings:
		s := e.GetSettings()
		if s == nil {
			return invalid(e, "missing settings value")
		}
		if _, err := parseSettings(s.GeneralSettings); err != nil {
			return invalid(e, err.Error())
		}
	}
	return nil
}

func limitsFrom(l *syncv1.Limits) Limits {
	if l == nil {
		// Not sent: no limits (the control plane always sends them).
		return Limits{MaxBudget: -1, SoftBudget: -1, RPMLimit: -1, TPMLimit: -1, MaxParallelRequests: -1}
	}
	return Limits{
		MaxBudget:           l.MaxBudget,
		SoftBudget:          l.SoftBudget,
		BudgetDuration:      l.BudgetDuration,
		BudgetResetAtUnix:   l.BudgetResetAtUnix,
		RPMLimit:            l.RpmLimit,
		TPMLimit:            l.TpmLimit,
		MaxParallelRequests: l.MaxParallelRequests,
	}
}

// The id of the entity is authoritative for every kind (the control plane
// sends tombstones by entity id).

func teamFrom(e *syncv1.Entity) *Team {
	t := e.GetTeam()
	out := &Team{
		TeamID:           e.Id,
		OrganizationID:   t.OrganizationId,
		Models:           nilIfEmpty(t.Models),
		Limits:           limitsFrom(t.Limits),
		Blocked:          t.Blocked,
		Spend:            t.Spend,
		TeamMemberBudget: t.TeamMemberBudget,
	}
	if len(t.ModelAliases) > 0 {
		out.ModelAliases = t.ModelAliases
	}
	if len(t.Members) > 0 {
		out.Members = make([]TeamMember, len(t.Members))
		for i, m := range t.Members {
			out.Members[i] = TeamMember{
				UserID:          m.GetUserId(),
				Role:            m.GetRole(),
				MaxBudgetInTeam: m.GetMaxBudgetInTeam(),
				Spend:           m.GetSpend(),
			}
		}
	}
	if sa := t.GetSaas(); sa != nil {
		ts := &TeamSaaS{
			Status:           sa.GetStatus(),
			CreditsAllocated: sa.GetCreditsAllocated(),
			CreditsUsed:      sa.GetCreditsUsed(),
			CreditsRemaining: sa.GetCreditsRemaining(),
			KeyName:          sa.GetKeyName(),
			TeamAlias:        sa.GetTeamAlias(),
		}
		for _, g := range sa.GetModelGroups() {
			ts.ModelGroups = append(ts.ModelGroups, TeamModelGroup{Name: g.GetName(), Models: nilIfEmpty(g.GetModels())})
		}
		out.SaaS = ts
	}
	return out
}

func userFrom(e *syncv1.Entity) *User {
	u := e.GetUser()
	return &User{
		UserID:   e.Id,
		UserRole: u.UserRole,
		Models:   nilIfEmpty(u.Models),
		Limits:   limitsFrom(u.Limits),
		Blocked:  u.Blocked,
		Spend:    u.Spend,
	}
}

func orgFrom(e *syncv1.Entity) *Org {
	o := e.GetOrganization()
	return &Org{
		OrganizationID: e.Id,
		Models:         nilIfEmpty(o.Models),
		Limits:         limitsFrom(o.Limits),
		Blocked:        o.Blocked,
		Spend:          o.Spend,
	}
}

func endUserFrom(e *syncv1.Entity) *EndUser {
	u := e.GetEndUser()
	eu := &EndUser{EndUserID: e.Id, Spend: u.Spend, MaxBudget: u.MaxBudget, Blocked: u.Blocked}
	if u.RpmLimit != nil {
		eu.RPM, eu.HasRPM = u.GetRpmLimit(), true
	}
	if u.TpmLimit != nil {
		eu.TPM, eu.HasTPM = u.GetTpmLimit(), true
	}
	return eu
}

func modelFrom(e *syncv1.Entity) *Model {
	m := e.GetModel()
	return &Model{
		ID:                e.Id,
		ModelName:         m.ModelName,
		UpstreamModel:     m.UpstreamModel,
		APIBase:           m.ApiBase,
		APIKey:            m.ApiKey,
		APIVersion:        m.ApiVersion,
		InputCost:         m.InputCostPerToken,
		OutputCost:        m.OutputCostPerToken,
		CacheCreationCost: m.CacheCreationInputTokenCost,
		CacheReadCost:     m.CacheReadInputTokenCost,
		ImageCost:         m.CostPerImage,
		SecondCost:        m.CostPerSecond,
		CharacterCost:     m.InputCostPerCharacter,
		QueryCost:         m.InputCostPerQuery,
		AccessGroups:      nilIfEmpty(m.AccessGroups),
		RPM:               m.Rpm,
		TPM:               m.Tpm,
	}
}

// nilIfEmpty copies l so that published objects never share a slice with
// the caller's message.
func nilIfEmpty(l []string) []string {
	if len(l) == 0 {
		return nil
	}
	return slices.Clone(l)
}

// emptySettings is what Settings returns before any settings entity.
var emptySettings = &Settings{Raw: []byte("{}")}

// parseSettings reads the parts of general_settings the decision needs.
// Empty means "{}"; anything but a JSON object is an error, and so is a
// service_account_settings.enforced_params that is not a list of strings.
func parseSettings(raw []byte) (*Settings, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return emptySettings, nil
	}
	var gs struct {
		ServiceAccountSettings *struct {
			EnforcedParams []string `json:"enforced_params"`
		} `json:"service_account_settings"`
		MaxEndUserBudget json.RawMessage `json:"max_end_user_budget"`
	}
	if raw[0] != '{' {
		return nil, errors.New("general_settings is not a JSON object")
	}
	if err := json.Unmarshal(raw, &gs); err != nil {
		return nil, fmt.Errorf("general_settings: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	s := &Settings{Raw: bytes.Clone(raw)}
	// The control plane validated it; anything else (null) is no budget.
	var usd float64
	if v := gs.MaxEndUserBudget; len(v) > 0 && string(v) != "null" && json.Unmarshal(v, &usd) == nil {
		if m, err := money.FromUSD(usd); err == nil {
			s.MaxEndUserBudget, s.HasMaxEndUserBudget = m, true
		}
	}
	if sa := gs.ServiceAccountSettings; sa != nil && len(sa.EnforcedParams) > 0 {
		s.ServiceAccountEnforcedParams = sa.EnforcedParams
	}
	return s, nil
}

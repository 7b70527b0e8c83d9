package state

import (
	"slices"
	"strings"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// keyView is a key as the key table reads it: filled from a decoded
// syncv1.Key (fromProto) or straight from the key's wire form (wire.go),
// with the same result. Its strings and byte slices may alias a message or
// a receive buffer: the table copies whatever it keeps. Maps are slices
// sorted by model, one entry per model (the wire form may repeat a map key:
// the last one wins, as in a decoded map).
type keyView struct {
	hash           []byte
	user, team     string
	org            string
	serviceAccount bool
	blocked        bool
	models         []string
	enforced       []string
	routes         []string
	tags           []string
	hasLimits      bool // limits sent (otherwise: no limits)
	limits         limitsView
	rpm, tpm       []modelInt
	budgets        []modelBudget
	modelSpend     []modelInt
	prevs          []prevView
	expires        int64
	spend          int64
}

type limitsView struct {
	maxBudget, softBudget int64
	duration              string
	resetAt               int64
	rpm, tpm, parallel    int64
}

type modelInt struct {
	model string
	v     int64
}

type modelBudget struct {
	model  string
	limit  int64
	period string
}

type prevView struct {
	hash            []byte
	validUntil      int64 // unix seconds
	validUntilMilli int64 // unix ms, 0 from an older control plane
}

// reset empties k, keeping its slices' capacity.
func (k *keyView) reset() {
	*k = keyView{
		models: k.models[:0], enforced: k.enforced[:0], routes: k.routes[:0], tags: k.tags[:0],
		rpm: k.rpm[:0], tpm: k.tpm[:0], budgets: k.budgets[:0], modelSpend: k.modelSpend[:0],
		prevs: k.prevs[:0],
	}
}

// fromProto fills k from p (reusing k's slices).
func (k *keyView) fromProto(p *syncv1.Key) {
	k.reset()
	k.hash = p.KeyHash
	k.user, k.team, k.org = p.UserId, p.TeamId, p.OrganizationId
	k.serviceAccount, k.blocked = p.ServiceAccount, p.Blocked
	k.models = append(k.models, p.Models...)
	k.enforced = append(k.enforced, p.EnforcedParams...)
	k.routes = append(k.routes, p.AllowedRoutes...)
	k.tags = append(k.tags, p.Tags...)
	if l := p.Limits; l != nil {
		k.hasLimits = true
		k.limits = limitsView{
			maxBudget: l.MaxBudget, softBudget: l.SoftBudget, duration: l.BudgetDuration,
			resetAt: l.BudgetResetAtUnix, rpm: l.RpmLimit, tpm: l.TpmLimit, parallel: l.MaxParallelRequests,
		}
	}
	for m, v := range p.ModelRpmLimit {
		k.rpm = append(k.rpm, modelInt{m, v})
	}
	for m, v := range p.ModelTpmLimit {
		k.tpm = append(k.tpm, modelInt{m, v})
	}
	for m, v := range p.ModelSpend {
		k.modelSpend = append(k.modelSpend, modelInt{m, v})
	}
	for m, b := range p.ModelMaxBudget {
		k.budgets = append(k.budgets, modelBudget{m, b.GetBudgetLimit(), b.GetTimePeriod()})
	}
	sortModels(k.rpm)
	sortModels(k.tpm)
	sortModels(k.modelSpend)
	slices.SortFunc(k.budgets, func(a, b modelBudget) int { return strings.Compare(a.model, b.model) })
	for _, ph := range p.PreviousHashes {
		k.prevs = append(k.prevs, prevView{hash: ph.GetKeyHash(), validUntil: ph.GetValidUntilUnix(), validUntilMilli: ph.GetValidUntilUnixMs()})
	}
	k.expires, k.spend = p.ExpiresUnix, p.Spend
}

func sortModels(l []modelInt) {
	slices.SortFunc(l, func(a, b modelInt) int { return strings.Compare(a.model, b.model) })
}

// dedupByModel sorts l by model and keeps the last of each model's entries
// (in l's order), as decoding a map keeps the last value of a repeated key.
func dedupByModel[T any](l []T, model func(*T) string) []T {
	if len(l) < 2 {
		return l
	}
	slices.SortStableFunc(l, func(a, b T) int { return strings.Compare(model(&a), model(&b)) })
	out := l[:0]
	for i := range l {
		if i+1 < len(l) && model(&l[i+1]) == model(&l[i]) {
			continue
		}
		out = append(out, l[i])
	}
	return out
}

func intModel(m *modelInt) string       { return m.model }
func budgetModel(m *modelBudget) string { return m.model }

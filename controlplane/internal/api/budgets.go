package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/duration"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

// Budgets (/budget/*): LiteLLM's budget table.
//
// A budget is a named set of limits; keys, organizations, end users and
// team memberships link to one with budget_id. Enforcement does not know
// budgets: the transaction that links an object copies the budget's limits
// into it, and the transaction that changes a budget rewrites every object
// linked to it (one revision), so the proxies see ordinary limits on
// ordinary objects and their decision path is unchanged. Spend stays on
// each object, as in LiteLLM: two keys on one budget each get its
// max_budget.
//
// While an object is linked, its limits are the budget's: setting a limit
// on it directly is a 400 (change the budget, or unlink with budget_id "").
// Organizations are the exception LiteLLM makes: an organization always has
// a budget (/organization/new creates one from its limits), and
// /organization/update's limits change that budget, and so every object
// linked to it. Team memberships enforce only max_budget and end users
// max_budget, rpm_limit and tpm_limit (the proxy's gate counts an end
// user's requests and tokens like a key's), so a budget with other limits
// cannot be linked to them (400), and a budget linked to them cannot gain
// other limits. A budget in use cannot be
// deleted (400 naming what uses it): LiteLLM's delete would fail on the
// foreign keys or leave dangling references.
type budgetService struct {
	adminv1.UnimplementedBudgetServiceServer
	s *Server
}

const auditBudget = "budget"

func budgetOut(b *store.Budget) *adminv1.Budget {
	out := budgetTableOf(b.BudgetID, b.Limits)
	out.CreatedAt, out.UpdatedAt = tsOf(b.CreatedAt), tsOf(b.UpdatedAt)
	out.CreatedBy, out.UpdatedBy = b.CreatedBy, b.UpdatedBy
	return out
}

// budgetTableOf is litellm_budget_table of an object whose limits are its
// budget's (they are copied on every change, so no read is needed).
func budgetTableOf(id string, l store.Limits) *adminv1.Budget {
	out := &adminv1.Budget{
		BudgetId: id, MaxBudget: usdValue(l.MaxBudget), SoftBudget: usdValue(l.SoftBudget),
		MaxParallelRequests: limitValue(l.MaxParallelRequests), TpmLimit: limitValue(l.TPMLimit), RpmLimit: limitValue(l.RPMLimit),
		BudgetResetAt: tsValue(l.BudgetResetAt),
	}
	if l.BudgetDuration != "" {
		out.BudgetDuration = wrapperspb.String(l.BudgetDuration)
	}
	return out
}

// budgetFields is a validated /budget/new or /budget/update body.
type budgetFields struct {
	maxBudget, softBudget, rpm, tpm, parallel *int64
	duration                                  *string // "" clears
	resetAt                                   *time.Time
}

func budgetFieldsFrom(req *adminv1.NewBudgetRequest) (budgetFields, error) {
	var f budgetFields
	var err error
	if m := req.GetModelMaxBudget(); m != nil && len(m.GetFields()) > 0 {
		return f, badRequest("model_max_budget", "model_max_budget is not supported on budgets: set model_max_budget on the keys")
	}
	if f.maxBudget, err = usdPtr("max_budget", req.GetMaxBudget()); err != nil {
		return f, err
	}
	if f.softBudget, err = usdPtr("soft_budget", req.GetSoftBudget()); err != nil {
		return f, err
	}
	if f.rpm, err = limitPtr("rpm_limit", req.GetRpmLimit()); err != nil {
		return f, err
	}
	if f.tpm, err = limitPtr("tpm_limit", req.GetTpmLimit()); err != nil {
		return f, err
	}
	if f.parallel, err = limitPtr("max_parallel_requests", req.GetMaxParallelRequests()); err != nil {
		return f, err
	}
	if req.BudgetDuration != nil {
		v := req.GetBudgetDuration().GetValue()
		if v != "" {
			d, err := parseDuration("budget_duration", v)
			if err != nil {
				return f, err
			}
			v = d.String()
		}
		f.duration = &v
	}
	if f.resetAt, err = timestampPtr("budget_reset_at", req.GetBudgetResetAt()); err != nil {
		return f, err
	}
	return f, nil
}

// apply sets the fields present on b. budget_reset_at is the given one, or
// now + budget_duration when the duration changes (LiteLLM's default).
func (f budgetFields) apply(b *store.Budget, now time.Time) {
	set := func(dst **int64, v *int64) {
		if v != nil {
			*dst = clonePtr(v)
		}
	}
	set(&b.MaxBudget, f.maxBudget)
	set(&b.SoftBudget, f.softBudget)
	set(&b.RPMLimit, f.rpm)
	set(&b.TPMLimit, f.tpm)
	set(&b.MaxParallelRequests, f.parallel)
	if f.duration != nil && *f.duration != b.BudgetDuration {
		b.BudgetDuration, b.BudgetResetAt = *f.duration, nil
		if d, err := duration.Parse(*f.duration); err == nil && *f.duration != "" {
			at := d.AddTo(now)
			b.BudgetResetAt = &at
		}
	}
	if f.resetAt != nil && b.BudgetDuration != "" {
		at := *f.resetAt
		b.BudgetResetAt = &at
	}
}

func clonePtr(p *int64) *int64 {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func (bs *budgetService) NewBudget(ctx context.Context, req *adminv1.NewBudgetRequest) (*adminv1.Budget, error) {
	s := bs.s
	c, err := s.authorize(ctx, authz.BudgetNew, authz.Target{})
	if err != nil {
		return nil, err
	}
	if err := checkID("budget_id", req.GetBudgetId(), false); err != nil {
		return nil, err
	}
	f, err := budgetFieldsFrom(req)
	if err != nil {
		return nil, err
	}
	now := s.now()
	b := store.Budget{BudgetID: req.GetBudgetId(), CreatedAt: now, UpdatedAt: now, CreatedBy: c.ID, UpdatedBy: c.ID}
	if b.BudgetID == "" {
		b.BudgetID = keys.NewID()
	}
	f.apply(&b, now)
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateBudget(ctx, b); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, "created", auditBudget, b.BudgetID, nil, budgetOut(&b))
	})
	if errors.Is(err, store.ErrConflict) {
		return nil, badRequest("budget_id", "Budget with id '"+b.BudgetID+"' already exists.")
	}
	if err != nil {
		return nil, storeError(ctx, err, "budget")
	}
	return budgetOut(&b), nil
}

// UpdateBudget changes the fields present and rewrites every object linked
// to the budget in the same transaction.
func (bs *budgetService) UpdateBudget(ctx context.Context, req *adminv1.NewBudgetRequest) (*adminv1.Budget, error) {
	s := bs.s
	c, err := s.authorize(ctx, authz.BudgetUpdate, authz.Target{})
	if err != nil {
		return nil, err
	}
	if err := checkID("budget_id", req.GetBudgetId(), true); err != nil {
		return nil, err
	}
	f, err := budgetFieldsFrom(req)
	if err != nil {
		return nil, err
	}
	var out store.Budget
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		now := s.now()
		b, err := getBudget(ctx, tx, req.GetBudgetId(), notFound)
		if err != nil {
			return err
		}
		before := budgetOut(&b)
		oldReset := b.BudgetResetAt
		f.apply(&b, now)
		b.UpdatedAt, b.UpdatedBy = now, c.ID
		refs, err := tx.BudgetRefs(ctx, b.BudgetID)
		if err != nil {
			return err
		}
		if err := fitsMaxBudgetOnly(&b, refs); err != nil {
			return err
		}
		if err := tx.UpdateBudget(ctx, b); err != nil {
			return err
		}
		reset := !timeEq(oldReset, b.BudgetResetAt)
		if err := propagateBudget(ctx, tx, &b, refs, now, reset, ""); err != nil {
			return err
		}
		out = b
		return s.audit(ctx, tx, c, "updated", auditBudget, b.BudgetID, before, budgetOut(&b))
	})
	if err != nil {
		return nil, storeError(ctx, err, "budget")
	}
	return budgetOut(&out), nil
}

func timeEq(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

// DeleteBudget deletes an unused budget and answers the deleted row
// (LiteLLM's answer).
func (bs *budgetService) DeleteBudget(ctx context.Context, req *adminv1.DeleteBudgetRequest) (*adminv1.Budget, error) {
	s := bs.s
	c, err := s.authorize(ctx, authz.BudgetDelete, authz.Target{})
	if err != nil {
		return nil, err
	}
	if err := checkID("id", req.GetId(), true); err != nil {
		return nil, err
	}
	var out store.Budget
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		b, err := getBudget(ctx, tx, req.GetId(), notFound)
		if err != nil {
			return err
		}
		refs, err := tx.BudgetRefs(ctx, b.BudgetID)
		if err != nil {
			return err
		}
		if !refs.Empty() {
			return badRequest("id", "budget "+b.BudgetID+" is in use by "+describeRefs(refs)+": link them to another budget (budget_id) or delete them first")
		}
		if err := tx.DeleteBudget(ctx, b.BudgetID); err != nil {
			return err
		}
		out = b
		return s.audit(ctx, tx, c, "deleted", auditBudget, b.BudgetID, budgetOut(&b), nil)
	})
	if err != nil {
		return nil, storeError(ctx, err, "budget")
	}
	return budgetOut(&out), nil
}

func describeRefs(r store.BudgetRefs) string {
	var parts []string
	add := func(n int, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(len(r.Keys), "key(s)")
	add(len(r.Organizations), "organization(s)")
	add(len(r.EndUsers), "end user(s)")
	add(len(r.TeamMembers), "team membership(s)")
	return strings.Join(parts, ", ")
}

// GetBudgetInfo answers the budgets named that exist (LiteLLM's find_many:
// unknown ids are left out).
func (bs *budgetService) GetBudgetInfo(ctx context.Context, req *adminv1.BudgetInfoRequest) (*adminv1.BudgetsResponse, error) {
	s := bs.s
	if _, err := s.authorize(ctx, authz.BudgetInfo, authz.Target{}); err != nil {
		return nil, err
	}
	ids := req.GetBudgets()
	if len(ids) == 0 {
		return nil, badRequest("budgets", "Specify list of budget id's to query. Passed in=[]")
	}
	if len(ids) > maxListLen {
		return nil, badRequest("budgets", "budgets must list at most 1000 budgets")
	}
	out := &adminv1.BudgetsResponse{Budgets: []*adminv1.Budget{}}
	seen := map[string]bool{}
	r := s.store.Read()
	for _, id := range ids {
		if err := checkID("budgets", id, true); err != nil {
			return nil, err
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		b, err := r.GetBudget(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			return nil, storeError(ctx, err, "budget")
		}
		out.Budgets = append(out.Budgets, budgetOut(&b))
	}
	return out, nil
}

func (bs *budgetService) ListBudgets(ctx context.Context, _ *adminv1.ListBudgetsRequest) (*adminv1.BudgetsResponse, error) {
	s := bs.s
	if _, err := s.authorize(ctx, authz.BudgetList, authz.Target{}); err != nil {
		return nil, err
	}
	list, err := s.store.Read().ListBudgets(ctx)
	if err != nil {
		return nil, storeError(ctx, err, "budget")
	}
	out := &adminv1.BudgetsResponse{Budgets: make([]*adminv1.Budget, 0, len(list))}
	for i := range list {
		out.Budgets = append(out.Budgets, budgetOut(&list[i]))
	}
	return out, nil
}

// getBudget reads a budget inside tx; an unknown id is answered by missing
// (notFound for /budget/*, a 400 where another object names it).
func getBudget(ctx context.Context, tx store.Reader, id string, missing func(param, msg string) error) (store.Budget, error) {
	b, err := tx.GetBudget(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return b, missing("budget_id", "budget_id "+id+" does not exist")
	}
	return b, err
}

// linkBudget reads the budget an object is being linked to (an unknown one
// is a 400) and rewrites it unchanged: a concurrent /budget/update or
// /budget/delete then writes the same row, so on Postgres (REPEATABLE READ)
// one of the two transactions fails to serialize and runs again on fresh
// data, instead of linking the object with stale limits or to a deleted
// budget (write skew across different rows).
func linkBudget(ctx context.Context, tx store.Tx, id string) (store.Budget, error) {
	b, err := getBudget(ctx, tx, id, badRequest)
	if err != nil {
		return b, err
	}
	return b, tx.UpdateBudget(ctx, b)
}

// fitsMaxBudgetOnly refuses limits that end users (max_budget, rpm_limit,
// tpm_limit) and team memberships (max_budget) do not enforce on a budget
// linked to any of them.
func fitsMaxBudgetOnly(b *store.Budget, refs store.BudgetRefs) error {
	if len(refs.TeamMembers) > 0 {
		if err := onlyMaxBudget(b, false, "budget "+b.BudgetID+" is linked to team members, which enforce only max_budget"); err != nil {
			return err
		}
	}
	if len(refs.EndUsers) > 0 {
		return onlyMaxBudget(b, true, "budget "+b.BudgetID+" is linked to end users, which enforce only max_budget, rpm_limit and tpm_limit")
	}
	return nil
}

// onlyMaxBudget refuses a budget that sets more than max_budget (and, with
// rate, rpm_limit and tpm_limit).
func onlyMaxBudget(b *store.Budget, rate bool, why string) error {
	switch {
	case b.SoftBudget != nil:
		return badRequest("soft_budget", why+": it cannot set soft_budget")
	case b.RPMLimit != nil && !rate:
		return badRequest("rpm_limit", why+": it cannot set rpm_limit")
	case b.TPMLimit != nil && !rate:
		return badRequest("tpm_limit", why+": it cannot set tpm_limit")
	case b.MaxParallelRequests != nil:
		return badRequest("max_parallel_requests", why+": it cannot set max_parallel_requests")
	case b.BudgetDuration != "":
		return badRequest("budget_duration", why+": it cannot set budget_duration (their spend has no budget period)")
	}
	return nil
}

// copyBudget makes l the budget's limits. The budget period restarts only
// when the duration changes (or reset says the budget's reset time did):
// otherwise each object keeps its own budget_reset_at, which the reset job
// advances with its spend.
func copyBudget(l *store.Limits, b *store.Budget, now time.Time, reset bool) {
	l.MaxBudget, l.SoftBudget = clonePtr(b.MaxBudget), clonePtr(b.SoftBudget)
	l.RPMLimit, l.TPMLimit, l.MaxParallelRequests = clonePtr(b.RPMLimit), clonePtr(b.TPMLimit), clonePtr(b.MaxParallelRequests)
	if !reset && l.BudgetDuration == b.BudgetDuration && (l.BudgetDuration == "") == (l.BudgetResetAt == nil) {
		return
	}
	l.BudgetDuration, l.BudgetResetAt = b.BudgetDuration, nil
	if b.BudgetDuration == "" {
		return
	}
	if b.BudgetResetAt != nil && b.BudgetResetAt.After(now) {
		at := *b.BudgetResetAt
		l.BudgetResetAt = &at
	} else if d, err := duration.Parse(b.BudgetDuration); err == nil {
		at := d.AddTo(now)
		l.BudgetResetAt = &at
	}
}

// propagateBudget rewrites every object linked to b (skipOrg is written by
// the caller itself).
func propagateBudget(ctx context.Context, tx store.Tx, b *store.Budget, refs store.BudgetRefs, now time.Time, reset bool, skipOrg string) error {
	for _, id := range refs.Keys {
		k, err := tx.GetKey(ctx, id)
		if err != nil {
			return err
		}
		copyBudget(&k.Limits, b, now, reset)
		k.UpdatedAt = now
		if err := tx.UpdateKey(ctx, k); err != nil {
			return err
		}
	}
	for _, id := range refs.Organizations {
		if id == skipOrg {
			continue
		}
		o, err := tx.GetOrganization(ctx, id)
		if err != nil {
			return err
		}
		copyBudget(&o.Limits, b, now, reset)
		o.UpdatedAt = now
		if err := tx.UpdateOrganization(ctx, o); err != nil {
			return err
		}
	}
	for _, id := range refs.EndUsers {
		e, err := tx.GetEndUser(ctx, id)
		if err != nil {
			return err
		}
		e.MaxBudget, e.RPMLimit, e.TPMLimit, e.UpdatedAt = clonePtr(b.MaxBudget), clonePtr(b.RPMLimit), clonePtr(b.TPMLimit), now
		if err := tx.PutEndUser(ctx, e); err != nil {
			return err
		}
	}
	for i := 0; i < len(refs.TeamMembers); {
		teamID := refs.TeamMembers[i].TeamID
		for i < len(refs.TeamMembers) && refs.TeamMembers[i].TeamID == teamID {
			i++
		}
		t, err := tx.GetTeam(ctx, teamID)
		if err != nil {
			return err
		}
		for j := range t.Members {
			if t.Members[j].BudgetID == b.BudgetID {
				t.Members[j].MaxBudgetInTeam = clonePtr(b.MaxBudget)
			}
		}
		t.UpdatedAt = now
		if err := tx.UpdateTeam(ctx, t); err != nil {
			return err
		}
	}
	return nil
}

func hasLimits(l store.Limits) bool {
	return l.MaxBudget != nil || l.SoftBudget != nil || l.BudgetDuration != "" || l.RPMLimit != nil ||
		l.TPMLimit != nil || l.MaxParallelRequests != nil
}

// setsLimits reports whether an update names a limit.
func (p patch) setsLimits() bool {
	return p.maxBudget != nil || p.softBudget != nil || p.hasBudgetDuration || p.rpm != nil || p.tpm != nil || p.parallel != nil
}

func linkedLimitErr(what, budgetID string) error {
	return badRequest("budget_id", "the limits of "+what+" come from budget "+budgetID+
		": change them with /budget/update, or unlink it with budget_id \"\"")
}

// linkKey applies a key's budget_id (link is the requested id: nil when
// absent, "" to unlink) inside tx; limitsSet says the request also set
// limits on the key.
func linkKey(ctx context.Context, tx store.Tx, k *store.Key, link *string, limitsSet bool, now time.Time) error {
	if link == nil {
		if k.BudgetID != "" && limitsSet {
			return linkedLimitErr("key "+k.TokenID, k.BudgetID)
		}
		return nil
	}
	if *link == "" {
		k.BudgetID = ""
		return nil
	}
	if limitsSet {
		return badRequest("budget_id", "set either budget_id or the key's limits, not both: the limits of a key linked to a budget are the budget's")
	}
	b, err := linkBudget(ctx, tx, *link)
	if err != nil {
		return err
	}
	copyBudget(&k.Limits, &b, now, k.BudgetID != b.BudgetID)
	k.BudgetID = b.BudgetID
	return nil
}

// newOrgBudget links a new organization to budgetID, or creates its budget
// from its own limits (LiteLLM: every organization has a budget).
func newOrgBudget(ctx context.Context, tx store.Tx, c authz.Caller, o *store.Organization, budgetID string, now time.Time) (created *store.Budget, err error) {
	if budgetID != "" {
		if hasLimits(o.Limits) {
			return nil, badRequest("budget_id", "set either budget_id or the organization's limits, not both: an organization's limits are its budget's")
		}
		b, err := linkBudget(ctx, tx, budgetID)
		if err != nil {
			return nil, err
		}
		copyBudget(&o.Limits, &b, now, true)
		o.BudgetID = b.BudgetID
		return nil, nil
	}
	b := store.Budget{BudgetID: keys.NewID(), Limits: o.Limits, CreatedAt: now, UpdatedAt: now, CreatedBy: c.ID, UpdatedBy: c.ID}
	if err := tx.CreateBudget(ctx, b); err != nil {
		return nil, err
	}
	o.BudgetID = b.BudgetID
	return &b, nil
}

// updateOrgBudget runs after /organization/update applied its patch to o:
// a new budget_id relinks the organization; limits in the request change
// its budget (created now for an organization that had none) and so every
// object linked to it.
func updateOrgBudget(ctx context.Context, tx store.Tx, c authz.Caller, o *store.Organization, link *wrapperspb.StringValue, limitsSet bool, now time.Time) error {
	if link != nil && link.GetValue() != o.BudgetID {
		if limitsSet {
			return badRequest("budget_id", "set either budget_id or the organization's limits, not both: an organization's limits are its budget's")
		}
		if link.GetValue() == "" {
			return badRequest("budget_id", "an organization always has a budget: name another budget_id")
		}
		b, err := linkBudget(ctx, tx, link.GetValue())
		if err != nil {
			return err
		}
		copyBudget(&o.Limits, &b, now, true)
		o.BudgetID = b.BudgetID
		return nil
	}
	if !limitsSet {
		return nil
	}
	if o.BudgetID == "" {
		_, err := newOrgBudget(ctx, tx, c, o, "", now)
		return err
	}
	b, err := getBudget(ctx, tx, o.BudgetID, badRequest)
	if err != nil {
		return err
	}
	oldReset := b.BudgetResetAt
	b.Limits = o.Limits
	b.UpdatedAt, b.UpdatedBy = now, c.ID
	refs, err := tx.BudgetRefs(ctx, b.BudgetID)
	if err != nil {
		return err
	}
	if err := fitsMaxBudgetOnly(&b, refs); err != nil {
		return err
	}
	if err := tx.UpdateBudget(ctx, b); err != nil {
		return err
	}
	return propagateBudget(ctx, tx, &b, refs, now, !timeEq(oldReset, b.BudgetResetAt), o.OrganizationID)
}

// linkEndUser applies an end user's budget_id ("" leaves it as it is);
// maxBudgetSet says the request also set max_budget.
func linkEndUser(ctx context.Context, tx store.Tx, e *store.EndUser, budgetID string, maxBudgetSet bool) error {
	if budgetID == "" {
		if e.BudgetID != "" && maxBudgetSet {
			return linkedLimitErr("end user "+e.EndUserID, e.BudgetID)
		}
		return nil
	}
	if maxBudgetSet {
		return badRequest("budget_id", "set either budget_id or max_budget, not both: the max_budget of an end user linked to a budget is the budget's")
	}
	b, err := linkBudget(ctx, tx, budgetID)
	if err != nil {
		return err
	}
	if err := onlyMaxBudget(&b, true, "end users enforce only max_budget, rpm_limit and tpm_limit, and budget "+b.BudgetID+" sets more"); err != nil {
		return err
	}
	e.BudgetID, e.MaxBudget, e.RPMLimit, e.TPMLimit = b.BudgetID, clonePtr(b.MaxBudget), clonePtr(b.RPMLimit), clonePtr(b.TPMLimit)
	return nil
}

// linkMember applies a team membership's budget_id (nil: absent, "":
// unlink).
func linkMember(ctx context.Context, tx store.Tx, m *store.TeamMember, link *wrapperspb.StringValue, maxBudgetSet bool) error {
	if link == nil {
		if m.BudgetID != "" && maxBudgetSet {
			return linkedLimitErr("the membership of "+m.UserID, m.BudgetID)
		}
		return nil
	}
	if link.GetValue() == "" {
		m.BudgetID = ""
		return nil
	}
	if maxBudgetSet {
		return badRequest("budget_id", "set either budget_id or max_budget_in_team, not both")
	}
	b, err := linkBudget(ctx, tx, link.GetValue())
	if err != nil {
		return err
	}
	if err := onlyMaxBudget(&b, false, "team memberships enforce only max_budget, and budget "+b.BudgetID+" sets more"); err != nil {
		return err
	}
	m.BudgetID, m.MaxBudgetInTeam = b.BudgetID, clonePtr(b.MaxBudget)
	return nil
}

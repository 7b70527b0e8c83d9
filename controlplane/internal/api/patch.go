package api

import (
	"encoding/json"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// limitsFrom validates the shared limit fields of a create request.
func limitsFrom(now time.Time, maxBudget, softBudget *wrapperspb.DoubleValue, budgetDuration string, rpm, tpm, parallel *wrapperspb.Int32Value) (store.Limits, error) {
	var l store.Limits
	var err error
	if l.MaxBudget, err = usdPtr("max_budget", maxBudget); err != nil {
		return l, err
	}
	if l.SoftBudget, err = usdPtr("soft_budget", softBudget); err != nil {
		return l, err
	}
	if budgetDuration != "" {
		d, err := parseDuration("budget_duration", budgetDuration)
		if err != nil {
			return l, err
		}
		l.BudgetDuration = d.String()
		at := d.AddTo(now)
		l.BudgetResetAt = &at
	}
	if l.RPMLimit, err = limitPtr("rpm_limit", rpm); err != nil {
		return l, err
	}
	if l.TPMLimit, err = limitPtr("tpm_limit", tpm); err != nil {
		return l, err
	}
	if l.MaxParallelRequests, err = limitPtr("max_parallel_requests", parallel); err != nil {
		return l, err
	}
	return l, nil
}

// patch is a validated partial update of the fields teams, users and orgs share.
type patch struct {
	now                   time.Time
	models                []string
	hasModels             bool
	maxBudget, softBudget *int64
	rpm, tpm, parallel    *int64
	budgetDuration        string
	hasBudgetDuration     bool
	metadata              json.RawMessage
	// hasMetadata: metadata was sent; {} replaces the old object with none.
	hasMetadata bool
}

func patchFrom(now time.Time, models *structpb.ListValue, maxBudget, softBudget *wrapperspb.DoubleValue, budgetDuration *wrapperspb.StringValue, rpm, tpm, parallel *wrapperspb.Int32Value, metadata *structpb.Struct) (patch, error) {
	p := patch{now: now}
	var err error
	if p.models, p.hasModels, err = listValue("models", models); err != nil {
		return p, err
	}
	if p.maxBudget, err = usdPtr("max_budget", maxBudget); err != nil {
		return p, err
	}
	if p.softBudget, err = usdPtr("soft_budget", softBudget); err != nil {
		return p, err
	}
	if budgetDuration != nil {
		p.hasBudgetDuration = true
		if v := budgetDuration.GetValue(); v != "" {
			d, err := parseDuration("budget_duration", v)
			if err != nil {
				return p, err
			}
			p.budgetDuration = d.String()
		}
	}
	if p.rpm, err = limitPtr("rpm_limit", rpm); err != nil {
		return p, err
	}
	if p.tpm, err = limitPtr("tpm_limit", tpm); err != nil {
		return p, err
	}
	if p.parallel, err = limitPtr("max_parallel_requests", parallel); err != nil {
		return p, err
	}
	p.hasMetadata = metadata != nil
	if p.metadata, err = structJSON("metadata", metadata); err != nil {
		return p, err
	}
	return p, nil
}

func (p patch) apply(models *[]string, l *store.Limits, metadata *json.RawMessage) {
	if p.hasModels {
		*models = p.models
	}
	if p.maxBudget != nil {
		l.MaxBudget = p.maxBudget
	}
	if p.softBudget != nil {
		l.SoftBudget = p.softBudget
	}
	if p.hasBudgetDuration {
		l.BudgetDuration, l.BudgetResetAt = p.budgetDuration, nil
		if p.budgetDuration != "" {
			lim, _ := limitsFrom(p.now, nil, nil, p.budgetDuration, nil, nil, nil)
			l.BudgetResetAt = lim.BudgetResetAt
		}
	}
	if p.rpm != nil {
		l.RPMLimit = p.rpm
	}
	if p.tpm != nil {
		l.TPMLimit = p.tpm
	}
	if p.parallel != nil {
		l.MaxParallelRequests = p.parallel
	}
	if p.hasMetadata {
		*metadata = p.metadata
	}
}

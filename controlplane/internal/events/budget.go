package events

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
)

// SoftBudgetPayload is the body of a budget.soft_budget_crossed event. It
// carries LiteLLM's budget-alert fields (event, event_group, event_message,
// spend, soft_budget, max_budget, key_alias, user_id, team_id) so receivers
// written for LiteLLM's webhook alerts read it unchanged, plus the object
// and its budget_reset_at. It never holds key material: a key is named by
// its token_id and display form.
func SoftBudgetPayload(c store.SoftBudgetCrossing, now time.Time) map[string]any {
	group := c.Kind
	if group == store.KindOrganization {
		group = "organization"
	}
	name := c.ID
	if c.Kind == store.KindKey && c.KeyName != "" {
		name = c.KeyName
		if c.KeyAlias != "" {
			name = c.KeyAlias + " (" + c.KeyName + ")"
		}
	}
	p := map[string]any{
		"event":         "soft_budget_crossed",
		"event_group":   group,
		"event_message": fmt.Sprintf("Soft budget crossed: %s %s spend $%s reached soft budget $%s", c.Kind, name, usd(c.Spend), usd(c.SoftBudget)),
		"object_type":   c.Kind,
		"object_id":     c.ID,
		"spend":         money.ToUSD(c.Spend),
		"soft_budget":   money.ToUSD(c.SoftBudget),
		"max_budget":    nil,
		"time":          now.UTC().Format(time.RFC3339Nano),
	}
	if c.MaxBudget != nil {
		p["max_budget"] = money.ToUSD(*c.MaxBudget)
	}
	if c.BudgetResetAt != nil {
		p["budget_reset_at"] = c.BudgetResetAt.UTC().Format(time.RFC3339Nano)
	}
	switch c.Kind {
	case store.KindKey:
		p["token"] = c.ID
		p["key_name"] = c.KeyName
		p["key_alias"] = c.KeyAlias
		p["user_id"] = c.UserID
		p["team_id"] = c.TeamID
	case store.KindTeam:
		p["team_id"] = c.ID
	case store.KindUser:
		p["user_id"] = c.ID
	case store.KindOrganization:
		p["organization_id"] = c.ID
	}
	return p
}

// EnqueueSoftBudgets adds one budget.soft_budget_crossed event per crossing
// to the outbox in tx (the spend batch's transaction, so a crossing is
// announced exactly when its spend commits, and a replayed batch announces
// nothing). Delivery is the outbox's: retried with backoff, never in the
// request path.
func EnqueueSoftBudgets(ctx context.Context, tx store.Tx, crossings []store.SoftBudgetCrossing, now time.Time) error {
	for _, c := range crossings {
		if err := Enqueue(ctx, tx, store.EventSoftBudgetCrossed, SoftBudgetPayload(c, now), now); err != nil {
			return err
		}
	}
	return nil
}

// usd formats nano-USD as exact dollars (no exponent, no rounding).
func usd(nanos int64) string { return strconv.FormatFloat(money.ToUSD(nanos), 'f', -1, 64) }

package store

import (
	"context"
	"encoding/json"
	"time"
)

// Lifecycle event types (the event outbox). Payloads are JSON objects of
// object ids, display key names, changed_by and timestamps; only key.rotated
// carries a secret, sealed (encrypted) by the caller before it is stored.
const (
	EventKeyCreated     = "key.created"
	EventKeyUpdated     = "key.updated"
	EventKeyDeleted     = "key.deleted"
	EventKeyRegenerated = "key.regenerated"
	EventKeyRotated     = "key.rotated"
	EventKeyBlocked     = "key.blocked"
	EventKeyUnblocked   = "key.unblocked"
	EventUserCreated    = "user.created"
	EventTeamCreated    = "team.created"
	// EventSoftBudgetCrossed: spend reached an object's soft_budget (once
	// per budget period), enqueued with the spend batch that crossed it.
	EventSoftBudgetCrossed = "budget.soft_budget_crossed"
)

// Event is one entry of the durable event outbox: enqueued in the same
// transaction as the change it describes, delivered at least once by the
// control plane's event job. ID is unique (receivers de-duplicate on it).
type Event struct {
	ID      string          `json:"event_id"`
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"data"` // JSON object
	// CreatedAt is when the change happened.
	CreatedAt time.Time `json:"created_at"`
	// Attempts counts claims (delivery attempts started).
	Attempts int `json:"attempts"`
	// NextAttemptAt is when the event is next due; a claim pushes it to the
	// end of the claim's lease.
	NextAttemptAt time.Time `json:"next_attempt_at"`
	// DeliveredAt is set once a delivery succeeded; nil while pending.
	DeliveredAt *time.Time `json:"delivered_at,omitempty"`
	// LastError describes the last failed attempt (no secrets).
	LastError string `json:"last_error,omitempty"`
}

// EventFilter narrows ListEvents. Empty fields do not filter.
type EventFilter struct {
	Type        string
	PendingOnly bool // only events not delivered yet
	Page        Page
}

// EventReader reads the outbox and the rotation schedule (part of Reader).
type EventReader interface {
	// ListEvents returns events in enqueue order (oldest first) and the
	// number of matches.
	ListEvents(ctx context.Context, f EventFilter) ([]Event, int, error)
	// KeysDueForRotation returns up to limit keys with AutoRotate set and
	// KeyRotationAt ≤ now, earliest first (served by an index).
	KeysDueForRotation(ctx context.Context, now time.Time, limit int) ([]Key, error)
	// BudgetResetsDue returns up to limit keys, teams, users and
	// organizations whose BudgetResetAt is before until, earliest first
	// (served by an index, so the budget-reset job never scans every key).
	BudgetResetsDue(ctx context.Context, until time.Time, limit int) ([]BudgetReset, error)
}

// BudgetReset names an object whose budget resets at At. Kind is KindKey,
// KindTeam, KindUser or KindOrganization; ID is its primary id.
type BudgetReset struct {
	Kind string
	ID   string
	At   time.Time
}

// EventWriter writes the outbox (part of Tx). None of these writes records a
// Change: events are not synced to data planes and get no revision.
type EventWriter interface {
	// EnqueueEvent stores e as pending. ID and Type are required; a zero
	// NextAttemptAt means CreatedAt (due at once). A taken ID is a
	// *ConflictError with Field "event_id".
	EnqueueEvent(ctx context.Context, e Event) error
	// ClaimEvents takes up to limit pending events with NextAttemptAt ≤ now,
	// earliest due first (ties in enqueue order), increments their
	// Attempts and pushes their NextAttemptAt to now+lease, so that no other
	// claimer (another replica) gets them until the lease ends. It returns
	// them as updated. Postgres skips rows locked by a concurrent claimer
	// (FOR UPDATE SKIP LOCKED).
	ClaimEvents(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]Event, error)
	// MarkEventDelivered sets DeliveredAt (ErrNotFound for an unknown id;
	// marking a delivered event again keeps the first time).
	MarkEventDelivered(ctx context.Context, id string, at time.Time) error
	// MarkEventFailed reschedules a pending event to next and records the
	// error (ErrNotFound for an unknown id; no-op on a delivered event).
	MarkEventFailed(ctx context.Context, id string, next time.Time, lastError string) error
	// PurgeEvents deletes up to limit events delivered before the given
	// time and returns how many it deleted.
	PurgeEvents(ctx context.Context, deliveredBefore time.Time, limit int) (int, error)
}

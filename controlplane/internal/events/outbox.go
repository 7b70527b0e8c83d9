package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"slices"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// NewID returns a random UUID (version 4) for an event: receivers
// de-duplicate deliveries on it.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("events: crypto/rand failed: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// Enqueue adds an event of type typ with data (a JSON object; never key
// material except key.rotated's sealed secret) to the outbox in tx, so that
// it commits or rolls back with the change it describes.
func Enqueue(ctx context.Context, tx store.Tx, typ string, data any, now time.Time) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	now = now.UTC()
	return tx.EnqueueEvent(ctx, store.Event{ID: NewID(), Type: typ, Payload: b, CreatedAt: now, NextAttemptAt: now})
}

// ForAudit maps an audit row (action on objectType) to the lifecycle event
// it emits, "" when none does.
func ForAudit(action, objectType string) string {
	switch objectType {
	case store.KindKey:
		switch action {
		case "created":
			return store.EventKeyCreated
		case "updated":
			return store.EventKeyUpdated
		case "deleted":
			return store.EventKeyDeleted
		case "regenerated":
			return store.EventKeyRegenerated
		case "rotated":
			return store.EventKeyRotated
		case "blocked":
			return store.EventKeyBlocked
		case "unblocked":
			return store.EventKeyUnblocked
		}
	case store.KindUser:
		if action == "created" {
			return store.EventUserCreated
		}
	case store.KindTeam:
		if action == "created" {
			return store.EventTeamCreated
		}
	}
	return ""
}

// payloadFields are the fields of an object's API view an event may carry,
// per object type: ids, display names and roles, never secrets or hashes.
var payloadFields = map[string][]string{
	store.KindKey:  {"token_id", "key_name", "key_alias", "user_id", "team_id", "organization_id", "blocked", "expires", "auto_rotate", "rotation_interval", "key_rotation_at"},
	store.KindUser: {"user_id", "user_alias", "user_email", "user_role"},
	store.KindTeam: {"team_id", "team_alias", "organization_id"},
}

// AuditPayload builds an event's data from the audit row's before/after API
// views (JSON objects): the allowed fields of the object as it is after the
// change (before, for a deletion), the object type and id, the caller and
// the litellm-changed-by header, the time, and for updates the names (not
// values) of the fields that changed.
func AuditPayload(objectType, objectID, caller, changedBy string, before, after json.RawMessage, now time.Time) map[string]any {
	var b, a map[string]any
	_ = json.Unmarshal(before, &b)
	_ = json.Unmarshal(after, &a)
	src := a
	if src == nil {
		src = b
	}
	out := map[string]any{
		"object_type": objectType,
		"object_id":   objectID,
		"caller":      caller,
		"timestamp":   now.UTC().Format(time.RFC3339Nano),
	}
	if changedBy != "" {
		out["changed_by"] = changedBy
	}
	for _, f := range payloadFields[objectType] {
		if v, ok := src[f]; ok && v != nil && v != "" {
			out[f] = v
		}
	}
	if a != nil && b != nil {
		changed := []string{}
		for _, f := range changedFields(b, a) {
			if f != "updated_at" && f != "updated_by" && f != "key_name" {
				changed = append(changed, f)
			}
		}
		out["changed_fields"] = changed
	}
	return out
}

func changedFields(b, a map[string]any) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range []map[string]any{b, a} {
		for k := range m {
			if seen[k] {
				continue
			}
			seen[k] = true
			x, _ := json.Marshal(b[k])
			y, _ := json.Marshal(a[k])
			if string(x) != string(y) {
				out = append(out, k)
			}
		}
	}
	slices.Sort(out)
	return out
}

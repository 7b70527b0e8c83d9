// Package events delivers the control plane's lifecycle events and rotates
// auto_rotate keys.
//
// # Architecture
//
// API handlers enqueue events (key.created, key.updated, ...) in the store's
// outbox in the same transaction as the change and its audit row (Enqueue).
// The Job, started once per control-plane process, runs two loops on one
// ticker:
//
//   - Delivery: claims due events (ClaimEvents: a lease, and on Postgres
//     FOR UPDATE SKIP LOCKED, so replicas never deliver the same event at
//     the same time), POSTs each to the configured webhook with an
//     HMAC-SHA256 signature, and marks it delivered on a 2xx or reschedules
//     it with exponential backoff otherwise. A crash between the POST and
//     the mark delivers the event again when its lease ends: delivery is
//     at least once, and receivers de-duplicate on event_id.
//   - Rotation: finds auto_rotate keys whose key_rotation_at has passed
//     (an index) and rotates each in its own transaction: a new secret on
//     the same record, the old one honoured for the grace period, the
//     counters, the next key_rotation_at, an audit row and the key.rotated
//     event, which alone carries the new secret (sealed in the outbox, see
//     sign.go). The transaction re-reads the key and skips it when it is no
//     longer due, and concurrent replicas conflict on the key row (Postgres
//     serialization failure, retried by the store), so each rotation
//     happens once.
//
// Nothing is rotated while the webhook is not configured (the new secret
// would be lost); events enqueued while no webhook is configured are
// discarded.
package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/duration"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
)

// Defaults of a Job.
const (
	DefaultInterval  = time.Second
	DefaultLease     = time.Minute
	DefaultTimeout   = 10 * time.Second
	DefaultBatch     = 50
	DefaultRetention = 7 * 24 * time.Hour
	// MaxPreviousSecrets bounds the old secrets a key keeps honouring
	// (a short rotation_interval with a long grace period).
	MaxPreviousSecrets = 16
)

// Job delivers events and rotates keys. Fields may be changed before Run.
type Job struct {
	Store    store.Store
	Client   *http.Client
	Log      *slog.Logger
	Now      func() time.Time
	Getenv   func(string) string
	Interval time.Duration // between rounds
	Lease    time.Duration // how long a claimed event is reserved
	Timeout  time.Duration // per webhook request
	Batch    int
	// Base and MaxBackoff shape retries (Backoff).
	BaseBackoff, MaxBackoff time.Duration
	// Retention is how long delivered events are kept.
	Retention time.Duration

	seal     sealer
	warnMu   sync.Mutex
	warnedAt map[string]time.Time
}

// New returns a Job over st; masterKey seals rotated secrets in the outbox.
func New(st store.Store, masterKey string) *Job {
	return &Job{
		Store: st,
		Client: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a redirect is not a delivery
		}},
		Log: slog.Default(), Now: time.Now, Interval: DefaultInterval, Lease: DefaultLease,
		Timeout: DefaultTimeout, Batch: DefaultBatch, BaseBackoff: BaseBackoff, MaxBackoff: MaxBackoff,
		Retention: DefaultRetention, seal: newSealer(masterKey), warnedAt: map[string]time.Time{},
	}
}

// Run starts the event delivery and key rotation job of a control plane and
// returns at once; it stops when ctx ends. (The one call run.go makes.)
func Run(ctx context.Context, st store.Store, masterKey string) {
	go New(st, masterKey).Loop(ctx)
}

// Loop runs rounds every Interval until ctx ends.
func (j *Job) Loop(ctx context.Context) {
	t := time.NewTicker(j.Interval)
	defer t.Stop()
	for {
		if err := j.Round(ctx); err != nil && ctx.Err() == nil {
			j.warn("round", "event job round failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Round rotates due keys, then delivers due events, then purges old
// delivered ones.
func (j *Job) Round(ctx context.Context) error {
	cfg, err := LoadConfig(ctx, j.Store.Read(), j.Getenv)
	if err != nil {
		return err
	}
	if cfg.Enabled && cfg.Problem != "" {
		j.warn("config", "event webhook not usable: events wait and no key is rotated", "problem", cfg.Problem)
	}
	if err := j.rotate(ctx, cfg); err != nil {
		return fmt.Errorf("rotate keys: %w", err)
	}
	if err := j.deliver(ctx, cfg); err != nil {
		return fmt.Errorf("deliver events: %w", err)
	}
	return j.Store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		_, err := tx.PurgeEvents(ctx, j.Now().Add(-j.Retention), 1000)
		return err
	})
}

// warn logs at most once a minute per topic.
func (j *Job) warn(topic, msg string, args ...any) {
	j.warnMu.Lock()
	last, ok := j.warnedAt[topic]
	now := time.Now()
	if ok && now.Sub(last) < time.Minute {
		j.warnMu.Unlock()
		return
	}
	j.warnedAt[topic] = now
	j.warnMu.Unlock()
	j.Log.Warn(msg, args...)
}

// Body is the JSON a webhook receives.
type Body struct {
	EventID   string          `json:"event_id"`
	Type      string          `json:"type"`
	CreatedAt time.Time       `json:"created_at"`
	Data      json.RawMessage `json:"data"`
}

// deliver claims and sends due events until none is left or a batch
// failed entirely. The outcomes of a batch are recorded in one transaction.
// A batch stops sending when half its lease is spent (a slow webhook): the
// rest are released for the next round, so no claim outlives its lease.
func (j *Job) deliver(ctx context.Context, cfg Config) error {
	if cfg.Enabled && !cfg.Ready() {
		return nil // misconfigured: keep events until it is fixed
	}
	for range 100 { // bounded per round
		claimedAt := j.Now()
		var claimed []store.Event
		err := j.Store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
			var err error
			claimed, err = tx.ClaimEvents(ctx, claimedAt, j.Batch, j.Lease)
			return err
		})
		if err != nil || len(claimed) == 0 {
			return err
		}
		started := time.Now()
		results := make([]error, len(claimed))
		released := make([]bool, len(claimed))
		ok := 0
		for i, e := range claimed {
			switch {
			case time.Since(started) > j.Lease/2:
				released[i] = true
			case !cfg.Enabled:
				if e.Type == store.EventKeyRotated {
					// Never discard a new secret: wait for a webhook.
					results[i] = errors.New("no webhook configured")
				}
			default:
				t0 := time.Now()
				results[i] = j.send(ctx, cfg, e)
				countDelivery(e.Type, results[i], false, time.Since(t0))
			}
			if released[i] {
				countDelivery(e.Type, nil, true, 0)
			}
			if results[i] == nil && !released[i] {
				ok++
			}
		}
		if err := j.record(context.WithoutCancel(ctx), claimed, results, released); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if ok == 0 {
			return nil // the webhook is failing: wait for the backoff
		}
	}
	return nil
}

// record marks each claimed event delivered (nil result), reschedules it
// with backoff (an error), or releases it at once (not attempted).
func (j *Job) record(ctx context.Context, claimed []store.Event, results []error, released []bool) error {
	now := j.Now()
	return j.Store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		for i, e := range claimed {
			var err error
			switch {
			case released[i]:
				err = tx.MarkEventFailed(ctx, e.ID, now, "not attempted: the batch ran out of time")
			case results[i] == nil:
				err = tx.MarkEventDelivered(ctx, e.ID, now)
			default:
				next := now.Add(jitter(Backoff(e.Attempts, j.BaseBackoff, j.MaxBackoff)))
				err = tx.MarkEventFailed(ctx, e.ID, next, results[i].Error())
			}
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
		return nil
	})
}

// send POSTs one event. Only the status matters; the response body is
// drained (bounded) and never logged.
func (j *Job) send(ctx context.Context, cfg Config, e store.Event) error {
	data, err := j.unseal(e)
	if err != nil {
		j.Log.Error("event not delivered", "event_id", e.ID, "type", e.Type, "err", err)
		return err
	}
	body, err := json.Marshal(Body{EventID: e.ID, Type: e.Type, CreatedAt: e.CreatedAt.UTC(), Data: data})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, j.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, cfg.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tollgate-events/1")
	req.Header.Set(EventIDHeader, e.ID)
	req.Header.Set(EventTypeHeader, e.Type)
	req.Header.Set("X-Tollgate-Delivery-Attempt", strconv.Itoa(e.Attempts))
	req.Header.Set(SignatureHeader, Sign(cfg.Secret, body))
	resp, err := j.Client.Do(req)
	if err != nil {
		// The error names the URL, never the body.
		j.Log.Warn("event delivery failed", "event_id", e.ID, "type", e.Type, "attempt", e.Attempts, "err", err)
		return fmt.Errorf("webhook unreachable: %w", errors.Unwrap(err))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		j.Log.Warn("event delivery failed", "event_id", e.ID, "type", e.Type, "attempt", e.Attempts, "status", resp.StatusCode)
		return fmt.Errorf("webhook returned %d", resp.StatusCode)
	}
	j.Log.Debug("event delivered", "event_id", e.ID, "type", e.Type, "attempt", e.Attempts)
	return nil
}

// unseal replaces key.rotated's sealed_key with the plaintext key.
func (j *Job) unseal(e store.Event) (json.RawMessage, error) {
	if e.Type != store.EventKeyRotated {
		return e.Payload, nil
	}
	var m map[string]any
	if err := json.Unmarshal(e.Payload, &m); err != nil {
		return nil, err
	}
	sealed, _ := m["sealed_key"].(string)
	tokenID, _ := m["token_id"].(string)
	plain, err := j.seal.open(sealed, e.ID+"\x00"+tokenID)
	if err != nil {
		return nil, err
	}
	delete(m, "sealed_key")
	m["key"] = plain
	return json.Marshal(m)
}

// rotate rotates every due auto_rotate key (when the webhook can deliver
// the new secrets).
func (j *Job) rotate(ctx context.Context, cfg Config) error {
	if !cfg.Ready() {
		return nil
	}
	for range 100 { // bounded per round
		due, err := j.Store.Read().KeysDueForRotation(ctx, j.Now(), j.Batch)
		if err != nil || len(due) == 0 {
			return err
		}
		rotated := 0
		for _, k := range due {
			did, err := j.rotateKey(ctx, k.TokenID, cfg.Grace)
			if err != nil {
				j.Log.Error("key rotation failed", "token_id", k.TokenID, "err", err)
				continue
			}
			if did {
				rotated++
			}
		}
		if rotated == 0 {
			return nil
		}
	}
	return nil
}

// rotateKey rotates one key if it is still due, in one transaction.
func (j *Job) rotateKey(ctx context.Context, tokenID string, grace time.Duration) (bool, error) {
	var did bool
	err := j.Store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		did = false
		now := j.Now().UTC()
		k, err := tx.GetKey(ctx, tokenID)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if !k.AutoRotate || k.KeyRotationAt == nil || k.KeyRotationAt.After(now) {
			return nil // rotated by another replica, or no longer rotating
		}
		interval, err := duration.Parse(k.RotationInterval)
		if err != nil {
			return fmt.Errorf("key %s: rotation_interval %q: %w", tokenID, k.RotationInterval, err)
		}
		before := rotationView(&k)
		secret := keys.Generate() // inside fn: a retried attempt makes a fresh one
		graceUntil := now.Add(grace)
		prev := k.PreviousHashes[:0:0]
		for _, p := range k.PreviousHashes {
			if p.ValidUntil.After(now) {
				prev = append(prev, p)
			}
		}
		if grace > 0 {
			prev = append(prev, store.PreviousHash{KeyHash: k.KeyHash, ValidUntil: graceUntil})
		}
		if len(prev) > MaxPreviousSecrets {
			prev = prev[len(prev)-MaxPreviousSecrets:]
		}
		k.PreviousHashes = prev
		k.KeyHash = keys.Hash(secret)
		k.KeyName = keys.DisplayName(secret)
		k.RotationCount++
		k.LastRotationAt = &now
		next := interval.AddTo(now)
		k.KeyRotationAt = &next
		k.UpdatedAt = now
		k.UpdatedBy = "system"
		if err := tx.UpdateKey(ctx, k); err != nil {
			return err
		}
		after := rotationView(&k)
		b, _ := json.Marshal(before)
		a, _ := json.Marshal(after)
		if err := tx.AppendAudit(ctx, store.AuditEntry{
			ID: keys.NewID(), Action: "rotated", ObjectType: store.KindKey, ObjectID: k.TokenID,
			Caller: "system", Before: b, After: a, CreatedAt: now,
		}); err != nil {
			return err
		}
		id := NewID()
		data := map[string]any{
			"object_type": store.KindKey, "object_id": k.TokenID, "caller": "system",
			"token_id": k.TokenID, "key_name": k.KeyName, "rotation_count": k.RotationCount,
			"last_rotation_at": now, "key_rotation_at": next, "timestamp": now.Format(time.RFC3339Nano),
			"sealed_key": j.seal.seal(secret, id+"\x00"+k.TokenID),
		}
		if grace > 0 {
			data["grace_until"] = graceUntil
		} else {
			data["grace_until"] = now
		}
		for f, v := range map[string]string{"key_alias": k.KeyAlias, "user_id": k.UserID, "team_id": k.TeamID, "organization_id": k.OrganizationID} {
			if v != "" {
				data[f] = v
			}
		}
		payload, err := json.Marshal(data)
		if err != nil {
			return err
		}
		if err := tx.EnqueueEvent(ctx, store.Event{ID: id, Type: store.EventKeyRotated, Payload: payload, CreatedAt: now, NextAttemptAt: now}); err != nil {
			return err
		}
		did = true
		return nil
	})
	if err == nil && did {
		j.Log.Info("key rotated", "token_id", tokenID)
	}
	return did, err
}

// rotationView is what a rotation's audit row shows: no key material.
func rotationView(k *store.Key) map[string]any {
	return map[string]any{
		"token_id": k.TokenID, "key_name": k.KeyName, "rotation_count": k.RotationCount,
		"last_rotation_at": k.LastRotationAt, "key_rotation_at": k.KeyRotationAt,
		"rotation_interval": k.RotationInterval, "auto_rotate": k.AutoRotate,
	}
}

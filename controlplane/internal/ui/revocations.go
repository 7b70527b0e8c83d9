package ui

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// Revocations is where sign-outs are shared between replicas
// (store.SessionRevocations: a table in Postgres).
type Revocations = store.SessionRevocations

// Sign-outs across replicas: each replica keeps every unexpired revoked
// session id in memory (the revoked map, read on every request without a
// query) and polls the store for the ones recorded since its last poll.
const (
	// DefaultRevocationPoll is how often a replica reads new sign-outs:
	// a sign-out on another replica is refused here within this plus one
	// query.
	DefaultRevocationPoll = 250 * time.Millisecond
	// revocationsStaleAfter: with no successful poll for this long (store
	// unreachable from this replica), sessions are refused with 503
	// rather than trusted on a list that may miss sign-outs.
	revocationsStaleAfter = 5 * time.Second
	// pruneEvery: expired sign-outs are deleted from the store by whichever
	// replica gets there (idempotent), about this often.
	pruneEvery = 10 * time.Minute
)

// shared is the store-backed half of the revocation list: the poll state.
type shared struct {
	st    Revocations
	every time.Duration

	mu     sync.Mutex
	cursor int64
	lastOK time.Time // zero until the first poll succeeded
	failed bool
}

// fresh reports whether the list reflects the store as of at most
// revocationsStaleAfter ago (always true without a store).
func (h *Handler) fresh() bool {
	if h.shared == nil {
		return true
	}
	h.shared.mu.Lock()
	defer h.shared.mu.Unlock()
	return !h.shared.lastOK.IsZero() && h.cfg.Now().Sub(h.shared.lastOK) <= revocationsStaleAfter
}

// Run polls the store for sign-outs until ctx ends (a no-op without
// Config.Revocations). Sessions are refused until the first poll succeeds,
// so a replica that just started never accepts a cookie signed out before.
func (h *Handler) Run(ctx context.Context) {
	if h.shared == nil {
		return
	}
	nextPrune := h.cfg.Now().Add(rand.N(pruneEvery))
	t := time.NewTicker(h.shared.every)
	defer t.Stop()
	for {
		h.poll(ctx)
		if now := h.cfg.Now(); now.After(nextPrune) {
			nextPrune = now.Add(pruneEvery)
			if n, err := h.shared.st.PruneRevokedSessions(ctx, now); err != nil && ctx.Err() == nil {
				slog.Warn("admin ui: pruning expired sign-outs failed", "err", err)
			} else if n > 0 {
				slog.Info("admin ui: pruned expired sign-outs", "count", n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (h *Handler) poll(ctx context.Context) {
	s := h.shared
	s.mu.Lock()
	cursor := s.cursor
	s.mu.Unlock()
	now := h.cfg.Now()
	rs, next, err := s.st.RevokedSessions(ctx, cursor, now)
	if err != nil {
		if ctx.Err() == nil {
			s.mu.Lock()
			if !s.failed {
				slog.Warn("admin ui: reading sign-outs failed; sessions are refused if it lasts", "err", err, "after", revocationsStaleAfter)
			}
			s.failed = true
			s.mu.Unlock()
		}
		return
	}
	for _, r := range rs {
		h.revoked.add(r.ID, r.Expires.Unix(), now)
	}
	s.mu.Lock()
	if s.failed {
		slog.Info("admin ui: sign-outs readable again")
	}
	s.failed = false
	s.cursor = next
	s.lastOK = now
	s.mu.Unlock()
}

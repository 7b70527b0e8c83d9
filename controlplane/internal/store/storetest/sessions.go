package storetest

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// sessionTests: the admin UI's sign-out list every replica reads.
var sessionTests = []test{
	{"RevokeAndList", testSessionRevokeAndList},
	{"CursorSeesLaterRevocations", testSessionCursor},
	{"ExpiredAreHiddenAndPruned", testSessionPrune},
	{"RevokeAgainKeepsLaterExpiry", testSessionRevokeAgain},
	{"BadIDRefused", testSessionBadID},
	{"NoRevision", testSessionNoRevision},
}

func revokedIDs(t *testing.T, s store.Store, cursor int64, now time.Time) ([]string, map[string]time.Time, int64) {
	t.Helper()
	rs, next, err := s.RevokedSessions(t.Context(), cursor, now)
	if err != nil {
		t.Fatalf("RevokedSessions: %v", err)
	}
	var ids []string
	exp := map[string]time.Time{}
	for _, r := range rs {
		ids = append(ids, r.ID)
		exp[r.ID] = r.Expires
	}
	slices.Sort(ids)
	return slices.Compact(ids), exp, next
}

func revoke(t *testing.T, s store.Store, id string, exp time.Time) {
	t.Helper()
	if err := s.RevokeSession(t.Context(), id, exp); err != nil {
		t.Fatalf("RevokeSession(%s): %v", id, err)
	}
}

func testSessionRevokeAndList(t *testing.T, s store.Store) {
	now := time.Now()
	if ids, _, _ := revokedIDs(t, s, 0, now); len(ids) != 0 {
		t.Fatalf("empty store lists %v", ids)
	}
	revoke(t, s, "s1", now.Add(time.Hour))
	revoke(t, s, "s2", now.Add(2*time.Hour))
	ids, exp, _ := revokedIDs(t, s, 0, now)
	if !slices.Equal(ids, []string{"s1", "s2"}) {
		t.Fatalf("revoked %v, want [s1 s2]", ids)
	}
	if d := exp["s1"].Sub(now.Add(time.Hour)); d < -time.Millisecond || d > time.Millisecond {
		t.Fatalf("s1 expires %v, want %v", exp["s1"], now.Add(time.Hour))
	}
}

// A poller that passes each call's cursor to the next sees every later
// revocation (perhaps more than once), and stops seeing the old ones once
// they are well behind it.
func testSessionCursor(t *testing.T, s store.Store) {
	now := time.Now()
	revoke(t, s, "old", now.Add(time.Hour))
	ids, _, cur := revokedIDs(t, s, 0, now)
	if !slices.Equal(ids, []string{"old"}) {
		t.Fatalf("revoked %v", ids)
	}
	revoke(t, s, "new", now.Add(time.Hour))
	ids, _, cur2 := revokedIDs(t, s, cur, now)
	if !slices.Contains(ids, "new") {
		t.Fatalf("after the cursor: %v, want new among them", ids)
	}
	if cur2 < cur {
		t.Fatalf("cursor went back from %d to %d", cur, cur2)
	}
	// Concurrent revocations while polling: none is missed.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	seen := map[string]bool{}
	done := make(chan []string)
	go func() {
		var written []string
		for i := range 20 {
			id := "c" + strings.Repeat("x", i)
			if err := s.RevokeSession(ctx, id, now.Add(time.Hour)); err != nil {
				t.Errorf("RevokeSession: %v", err)
			}
			written = append(written, id)
		}
		done <- written
	}()
	var written []string
	cur = cur2
	for written == nil {
		select {
		case written = <-done:
		default:
		}
		ids, _, cur = revokedIDs(t, s, cur, now)
		for _, id := range ids {
			seen[id] = true
		}
	}
	ids, _, _ = revokedIDs(t, s, cur, now) // the call after the last write
	for _, id := range ids {
		seen[id] = true
	}
	for _, id := range written {
		if !seen[id] {
			t.Fatalf("revocation %q never listed to a poller following the cursor", id)
		}
	}
}

func testSessionPrune(t *testing.T, s store.Store) {
	now := time.Now()
	revoke(t, s, "short", now.Add(time.Minute))
	revoke(t, s, "long", now.Add(time.Hour))
	later := now.Add(2 * time.Minute)
	if ids, _, _ := revokedIDs(t, s, 0, later); !slices.Equal(ids, []string{"long"}) {
		t.Fatalf("at +2m revoked %v, want [long]", ids)
	}
	n, err := s.PruneRevokedSessions(t.Context(), later)
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1", n, err)
	}
	if ids, _, _ := revokedIDs(t, s, 0, now); !slices.Equal(ids, []string{"long"}) {
		t.Fatalf("after prune revoked %v, want [long]", ids)
	}
	if n, err := s.PruneRevokedSessions(t.Context(), later); err != nil || n != 0 {
		t.Fatalf("second Prune = %d, %v; want 0", n, err)
	}
}

func testSessionRevokeAgain(t *testing.T, s store.Store) {
	now := time.Now()
	revoke(t, s, "s", now.Add(time.Hour))
	_, _, cur := revokedIDs(t, s, 0, now)
	revoke(t, s, "s", now.Add(time.Minute))
	if ids, _, _ := revokedIDs(t, s, cur, now); !slices.Contains(ids, "s") {
		t.Fatalf("revoked again after the cursor: %v, want s among them", ids)
	}
	_, exp, _ := revokedIDs(t, s, 0, now)
	if d := exp["s"].Sub(now.Add(time.Hour)); d < -time.Millisecond || d > time.Millisecond {
		t.Fatalf("expiry %v after a second, shorter revocation; want the later %v", exp["s"], now.Add(time.Hour))
	}
}

func testSessionBadID(t *testing.T, s store.Store) {
	now := time.Now()
	for _, id := range []string{"", strings.Repeat("a", store.MaxSessionIDLen+1)} {
		if err := s.RevokeSession(t.Context(), id, now.Add(time.Hour)); err == nil {
			t.Fatalf("RevokeSession(%d bytes) accepted", len(id))
		}
	}
	if ids, _, _ := revokedIDs(t, s, 0, now); len(ids) != 0 {
		t.Fatalf("refused ids stored: %v", ids)
	}
}

func testSessionNoRevision(t *testing.T, s store.Store) {
	revoke(t, s, "s", time.Now().Add(time.Hour))
	time.Sleep(50 * time.Millisecond)
	if h, err := s.Head(t.Context()); err != nil || h != 0 {
		t.Fatalf("Head = %d, %v; sign-outs must not create revisions", h, err)
	}
}

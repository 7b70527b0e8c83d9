package ui

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
)

// flaky is a Revocations that can be made to fail.
type flaky struct {
	store.SessionRevocations
	fail atomic.Bool
}

var errDown = errors.New("store down")

func (f *flaky) RevokeSession(ctx context.Context, id string, exp time.Time) error {
	if f.fail.Load() {
		return errDown
	}
	return f.SessionRevocations.RevokeSession(ctx, id, exp)
}

func (f *flaky) RevokedSessions(ctx context.Context, cursor int64, now time.Time) ([]store.RevokedSession, int64, error) {
	if f.fail.Load() {
		return nil, cursor, errDown
	}
	return f.SessionRevocations.RevokedSessions(ctx, cursor, now)
}

// replica is one control plane's UI handler on the shared store.
func replica(t *testing.T, rv Revocations, run bool) *env {
	t.Helper()
	e := &env{api: &fakeAPI{}}
	h, err := New(Config{API: e.api, Identify: identify, MasterKey: master, Revocations: rv, RevocationPoll: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e.h = h
	if run {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); h.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	return e
}

func waitCode(t *testing.T, e *env, c *http.Cookie, want int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		w := e.do("GET", "/ui/api/key/list", "", nil, c)
		if w.Code == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET with the session: %d %s, want %d within %s", w.Code, w.Body, want, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A sign-out on one replica is refused by another within a poll, and by a
// replica started afterwards from its first request on.
func TestSignOutReachesEveryReplica(t *testing.T) {
	st, err := embedded.Open(filepath.Join(t.TempDir(), "cp.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	a, b := replica(t, st, true), replica(t, st, true)
	c, csrf := a.signIn(t, master)
	waitCode(t, b, c, 200, 5*time.Second)
	if w := a.do("POST", "/ui/session/logout", "", map[string]string{CSRFHeader: csrf}, c); w.Code != 200 {
		t.Fatalf("logout: %d %s", w.Code, w.Body)
	}
	if w := a.do("GET", "/ui/api/key/list", "", nil, c); w.Code != 401 {
		t.Fatalf("signed-out replica: %d", w.Code)
	}
	waitCode(t, b, c, 401, time.Second)

	// A replica that has not read the store yet refuses every session
	// (it cannot know which were signed out); after its first poll, the
	// signed-out one stays refused and a live one works.
	fresh := replica(t, st, false)
	live, _ := a.signIn(t, master)
	if w := fresh.do("GET", "/ui/api/key/list", "", nil, live); w.Code != 503 {
		t.Fatalf("before the first poll: %d, want 503", w.Code)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); fresh.h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitCode(t, fresh, live, 200, 5*time.Second)
	if w := fresh.do("GET", "/ui/api/key/list", "", nil, c); w.Code != 401 {
		t.Fatalf("restarted replica accepts a signed-out session: %d", w.Code)
	}
}

// With the store unreachable a sign-out is not reported done, and a
// replica whose list went stale refuses sessions instead of trusting it.
func TestSignOutNeedsTheStore(t *testing.T) {
	st, err := embedded.Open(filepath.Join(t.TempDir(), "cp.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	f := &flaky{SessionRevocations: st}
	a := replica(t, f, true)
	c, csrf := a.signIn(t, master)
	waitCode(t, a, c, 200, 5*time.Second)
	f.fail.Store(true)
	w := a.do("POST", "/ui/session/logout", "", map[string]string{CSRFHeader: csrf}, c)
	if w.Code != 503 || len(w.Result().Cookies()) != 0 {
		t.Fatalf("logout with the store down: %d, cookies %v; want 503 and the cookie kept", w.Code, w.Result().Cookies())
	}
	waitCode(t, a, c, 503, revocationsStaleAfter+5*time.Second)
	f.fail.Store(false)
	waitCode(t, a, c, 200, 5*time.Second)
	if w := a.do("POST", "/ui/session/logout", "", map[string]string{CSRFHeader: csrf}, c); w.Code != 200 {
		t.Fatalf("logout: %d", w.Code)
	}
	waitCode(t, a, c, 401, time.Second)
}

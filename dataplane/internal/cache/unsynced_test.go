package cache

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/dataplane/internal/state/statetest"
)

// A delta commit puts the unsynced marker down (with this boot's id);
// Close syncs and removes it.
func TestDeltaMarksUnsyncedUntilClose(t *testing.T) {
	if bootID() == "" {
		t.Skip("no boot id on this system")
	}
	path := filepath.Join(t.TempDir(), "c.db")
	c := open(t, path)
	snapshot(t, c, 10, keys(5))
	if _, err := os.Stat(c.markerPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("marker after a (synced) snapshot: %v", err)
	}
	if err := c.ApplyDelta(&syncv1.Delta{PrevRevision: 10, Revision: 11, Changes: []*syncv1.Entity{statetest.Key(100)}}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(c.markerPath())
	if err != nil || string(raw) != bootID()+"\n" {
		t.Fatalf("marker after a delta: %q, %v", raw, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.markerPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("marker after Close: %v", err)
	}
}

// After a crash of the process (marker of this boot left behind) the cache
// is kept with its last delta; after a crash of the machine (marker of
// another boot) it is moved aside and the proxy starts empty.
func TestUnsyncedMarkerAfterCrash(t *testing.T) {
	if bootID() == "" {
		t.Skip("no boot id on this system")
	}
	for _, tc := range []struct {
		name    string
		boot    string
		wantRev int64
	}{{"process crash", bootID(), 11}, {"machine crash", "another-boot", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.db")
			c := open(t, path)
			snapshot(t, c, 10, keys(5))
			if err := c.ApplyDelta(&syncv1.Delta{PrevRevision: 10, Revision: 11, Changes: []*syncv1.Entity{statetest.Key(100)}}); err != nil {
				t.Fatal(err)
			}
			// A crash: the file closed without Close's sync and marker removal.
			c.mu.Lock()
			c.db.Close()
			c.db = nil
			c.mu.Unlock()
			if err := os.WriteFile(c.markerPath(), []byte(tc.boot+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			c2 := open(t, path)
			rev, _, _ := load(t, c2)
			if rev != tc.wantRev {
				t.Fatalf("revision after %s: %d, want %d", tc.name, rev, tc.wantRev)
			}
			if err := c2.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(c2.markerPath()); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("marker left after Close: %v", err)
			}
		})
	}
}

// While deltas keep coming the marker stays down and nothing is synced;
// once they pause for idleClear the file is synced and the marker removed.
func TestUnsyncedSyncedOnlyWhenQuiet(t *testing.T) {
	if bootID() == "" {
		t.Skip("no boot id on this system")
	}
	defer func(d time.Duration) { idleClear = d }(idleClear)
	idleClear = 500 * time.Millisecond // deltas come every 40 ms: a stall of 460 ms would let a sync in
	path := filepath.Join(t.TempDir(), "c.db")
	c := open(t, path)
	defer c.Close()
	snapshot(t, c, 10, keys(5))
	rev := int64(10)
	for end := time.Now().Add(1300 * time.Millisecond); time.Now().Before(end); time.Sleep(40 * time.Millisecond) {
		if err := c.ApplyDelta(&syncv1.Delta{PrevRevision: rev, Revision: rev + 1, Changes: []*syncv1.Entity{statetest.Key(100 + int(rev))}}); err != nil {
			t.Fatal(err)
		}
		rev++
	}
	c.mu.Lock()
	synced, unsynced := c.synced, c.unsynced
	c.mu.Unlock()
	if synced != 0 || !unsynced {
		t.Fatalf("while deltas came every 40 ms: synced writes %d, marker down %v; want 0, true", synced, unsynced)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		c.mu.Lock()
		synced, unsynced, writes := c.synced, c.unsynced, c.deltaWrites
		c.mu.Unlock()
		if !unsynced {
			if synced != writes {
				t.Fatalf("marker removed with %d of %d delta writes synced", synced, writes)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("marker still down 2 s after the last delta")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Stat(c.markerPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("marker file after the quiet spell: %v", err)
	}
}

package cache

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

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

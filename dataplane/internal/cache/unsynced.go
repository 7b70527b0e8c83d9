package cache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Deltas are committed without an fdatasync. A delta commit (two
// fdatasyncs in bbolt: pages, then meta) arrives with every spend the
// control plane applies, about ten a second per proxy under load, and on
// this class of machine each fdatasync costs ~110-140 µs of CPU plus two
// context switches: at 50 req/s the deltas alone were a third of what the
// proxy spends beyond a bare reverse proxy (README, Performance).
//
// Without the fdatasync a commit is still atomic for a crash of the
// process (SIGKILL, OOM kill, panic): bbolt writes the pages, then the meta
// page, and the kernel keeps both. A crash of the machine could leave the
// meta page on disk without the pages it points to: a tree whose pages hold
// older, checksum-valid values under the newer revision (a revoked key
// active again, and the control plane would not resend the delta). So:
//
//   - before the first unsynced commit, a marker file <cache>.unsynced is
//     written durably with the machine's boot id;
//   - once no delta came for idleClear, the file is fdatasynced and the
//     marker removed (durably). While deltas keep coming the marker stays
//     down and nothing is synced: a sync then would not let the marker go
//     (the next delta is already on its way) and buys nothing a crash of
//     the machine could use, since such a crash discards the cache while
//     the marker is down. (It was a sync a second, ~150 µs of CPU and a
//     wake-up each, at any rate of spend; the kernel writes the pages back
//     on its own schedule meanwhile.);
//   - Close syncs and removes it; so does Open after a crash of the process
//     (same boot id: the kernel still holds the writes);
//   - Open with a marker from another boot (the machine went down with
//     unsynced writes) moves the cache aside: the proxy starts empty and
//     needs a snapshot (it is not ready while the control plane is away,
//     rather than serving a state it cannot trust).
//
// Snapshot installs keep their fdatasynced commits.
// idleClear is the quiet spell after which the deltas are synced and the
// marker removed (a variable for tests, read by Open).
var idleClear = 2 * time.Second

func (c *Cache) markerPath() string { return c.path + ".unsynced" }

// bootID names this boot of the machine ("" where the kernel does not
// say: a marker is then never trusted).
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// checkUnsynced runs at Open, before the file is opened: a marker from
// another boot means the cache may hold a torn tree; it is moved aside.
func (c *Cache) checkUnsynced() error {
	raw, err := os.ReadFile(c.markerPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cache: read %s: %w", c.markerPath(), err)
	}
	if id := bootID(); id != "" && strings.TrimSpace(string(raw)) == id {
		// A crash of the process: the kernel has every write; the sync
		// loop makes them durable, then removes the marker.
		c.unsynced, c.deltaWrites = true, 1
		return nil
	}
	if _, err := os.Lstat(c.path); err == nil {
		if err := c.moveAside(errors.New("the machine restarted before the last deltas were synced to disk")); err != nil {
			return err
		}
	}
	c.clearUnsynced()
	return nil
}

// markUnsynced puts the marker down before an unsynced commit (c.mu held).
func (c *Cache) markUnsynced() error {
	if c.unsynced {
		return nil
	}
	path := c.markerPath()
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("cache: marker: %w", err)
	}
	_, err = f.WriteString(bootID() + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		return fmt.Errorf("cache: marker: %w", err)
	}
	c.unsynced = true
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return nil
}

// clearUnsynced removes the marker (durably).
func (c *Cache) clearUnsynced() {
	if err := os.Remove(c.markerPath()); err == nil {
		_ = syncDir(filepath.Dir(c.markerPath()))
	}
	c.unsynced = false
}

// syncLocked makes the committed deltas durable and removes the marker,
// with final (Close) or once deltas stopped for idleClear (c.mu held).
func (c *Cache) syncLocked(final bool) {
	if c.db == nil || !c.unsynced {
		return
	}
	if !final && time.Since(c.lastWrite) < c.idleClear {
		return
	}
	if c.synced != c.deltaWrites || final {
		if err := c.db.Sync(); err != nil {
			c.log.Warn("cache: sync failed; retrying", "err", err)
			return
		}
		c.synced = c.deltaWrites
	}
	c.clearUnsynced()
}

// syncLoop looks every idleClear while the marker is down (a quiet spell
// of idleClear ends it), and sleeps (no timer) while it is not.
func (c *Cache) syncLoop() {
	defer close(c.syncStopped)
	for {
		c.mu.Lock()
		pending := c.unsynced
		c.mu.Unlock()
		if !pending {
			select {
			case <-c.stopSync:
				return
			case <-c.kick:
			}
		}
		select {
		case <-c.stopSync:
			return
		case <-time.After(c.idleClear):
		}
		c.mu.Lock()
		c.syncLocked(false)
		c.mu.Unlock()
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

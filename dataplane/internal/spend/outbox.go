package spend

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// Defaults.
const (
	DefaultMaxGroup = 512
	// maxQueued bounds the records waiting for a write; beyond it Append
	// blocks (back-pressure on a stalled disk rather than lost spend).
	maxQueued = 200_000
	// memMax is how many unacked records the outbox keeps in memory for
	// shipping and acks; older ones (a long control-plane outage) are read
	// back from the log.
	memMax = 1 << 16
	// segMax: a segment is closed (fdatasynced) and a new one started
	// once it is this large; fully acked segments are deleted.
	segMax = 4 << 20
	// maxGroupBytes: room past segMax for the group that crosses it.
	maxGroupBytes = 1 << 20
	// seqSkip is how far the numbering jumps at each Open past the highest
	// number found (records or acked mark). Records written after the last
	// fdatasync can be lost by a crash of the machine although they were
	// shipped and applied; a fresh number for every new record keeps the
	// control plane's high-water mark from taking one of them for a
	// replay. (Far more than one sync interval of records at any rate.)
	seqSkip = 1 << 24
)

// DefaultWindow is the default group-commit window: how long records gather
// after the first one reaches an idle outbox before they are written to the
// log in one write(2). It is the process-crash bound: a SIGKILL, an OOM
// kill or a panic loses at most the records of the last Window (written
// records are in the kernel's page cache and survive the process). At 200
// req/s it turns four requests' records into one write and one writer
// wake-up.
const DefaultWindow = 20 * time.Millisecond

// DefaultSyncInterval is how often written records are made durable on disk
// (fdatasync) while records keep coming: the machine-crash bound (a kernel
// panic or power loss loses at most the records written in the last
// interval; a crash of the proxy process loses none of them). An
// fdatasync costs ~110-140 µs of CPU here, and more in what it sets off: a
// goroutine blocked in a syscall for a millisecond has its P handed to
// another thread by the runtime's monitor. One per 20 ms window was one
// per request at 50 req/s, a third of a bare proxy's whole cost per
// request (README, Performance). Postgres with synchronous_commit off
// bounds the same loss at 3 × 200 ms.
const DefaultSyncInterval = time.Second

// Options configure Open.
type Options struct {
	// MaxGroup is the most records one write holds (default 512).
	MaxGroup int
	// Window is how long the writer lets records gather after the first
	// one arrives at an idle outbox (default DefaultWindow; negative: write
	// at once). A SIGKILL loses at most the records of the last Window.
	Window time.Duration
	// SyncInterval is how often written records are fdatasynced (default
	// DefaultSyncInterval; negative: after every write). A crash of the
	// machine loses at most the records of the last SyncInterval.
	SyncInterval time.Duration
	// Legacy is the path of a bbolt outbox written by an older proxy
	// (<cache>.spend); its unacked records and outbox id are taken over at
	// Open and the file is removed.
	Legacy string
	Logger *slog.Logger
}

// Outbox is a durable queue of spend records.
type Outbox struct {
	dir       string
	id        string
	maxGroup  int
	window    time.Duration
	syncEvery time.Duration
	log       *slog.Logger

	mu         sync.Mutex
	queue      []*syncv1.SpendRecord // appended, not yet written
	space      *sync.Cond            // signalled when the queue shrinks
	work       chan struct{}         // wakes the writer now
	gather     *time.Timer           // wakes the writer a Window after a group's first record
	gathering  bool                  // the queue waits for gather
	lastWrite  time.Time             // the last write to the log
	syncArmed  bool                  // a sync is scheduled (the writer's timer)
	syncKick   chan struct{}         // asks the writer to schedule a sync
	dirty      bool                  // written since the last fdatasync
	closed     bool
	lastSeq    uint64 // last written seq
	ackedSeq   uint64 // every seq ≤ ackedSeq is acked
	unacked    int    // records written and not acked
	mem        []*syncv1.SpendRecord
	segs       []*segment // in order; the last is the one being written
	changed    chan struct{}
	changedOut bool   // changed was handed out since it was last closed
	committed  uint64 // records written since open (stats)
	groups     uint64 // writes since open
	syncs      uint64 // fdatasyncs since open
	commitDur  time.Duration
	maxCommit  time.Duration
	writerErr  error
	// marks remembers when each unacked group was written (in seq
	// order), for the age of the oldest unacked record.
	marks []commitMark

	ackMu   sync.Mutex // the acked mark file
	ackFile *os.File

	// The writer's own.
	cur *os.File // under mu: inline writes use it too
	// curMap is the current segment's preallocated extent mapped shared
	// (nil when the file system would not map it): records are copied
	// into it, no syscall. The page cache holds them from then on, so a
	// process that is killed loses none; fdatasync makes them durable.
	curMap   []byte
	lastSync time.Time
	buf      []byte

	writerDone chan struct{}
	closing    chan struct{} // closed by Close: ends a group window early
}

// commitMark: records up to last were written at (or, for records found
// in the log at Open, before) at.
type commitMark struct {
	last uint64
	at   time.Time
}

// maxMarks bounds the commit marks kept while the control plane does not
// ack (an hour of back-to-back commits would otherwise grow without bound).
const maxMarks = 1024

// markGrain: writes this close together share a commit mark.
const markGrain = 10 * time.Millisecond

// addMarkLocked appends m; beyond maxMarks adjacent marks are merged, each
// pair keeping the earlier time, so the oldest age errs on the old side.
func (ob *Outbox) addMarkLocked(m commitMark) {
	// A write within markGrain of the last mark joins it (its time, the
	// earlier, stands for both): one mark per record written inline would
	// otherwise merge the list over and over at high rates.
	if n := len(ob.marks); n > 0 && m.at.Sub(ob.marks[n-1].at) < markGrain {
		ob.marks[n-1].last = m.last
		return
	}
	ob.marks = append(ob.marks, m)
	if len(ob.marks) <= maxMarks {
		return
	}
	j := 0
	for i := 0; i < len(ob.marks); i += 2 {
		mk := ob.marks[i]
		if i+1 < len(ob.marks) {
			mk.last = ob.marks[i+1].last
		}
		ob.marks[j] = mk
		j++
	}
	ob.marks = ob.marks[:j]
}

// Open opens (or creates) the outbox log in the directory dir.
func Open(dir string, o Options) (*Outbox, error) {
	if o.MaxGroup <= 0 {
		o.MaxGroup = DefaultMaxGroup
	}
	if o.Window == 0 {
		o.Window = DefaultWindow
	}
	if o.SyncInterval == 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ob := &Outbox{dir: dir, maxGroup: o.MaxGroup, window: o.Window, syncEvery: o.SyncInterval,
		log: o.Logger.With("component", "spend"), work: make(chan struct{}, 1), syncKick: make(chan struct{}, 1), changed: make(chan struct{}),
		writerDone: make(chan struct{}), closing: make(chan struct{})}
	ob.space = sync.NewCond(&ob.mu)
	ob.gather = time.NewTimer(time.Hour)
	ob.gather.Stop()
	if err := ob.open(o.Legacy); err != nil {
		ob.closeFiles()
		return nil, fmt.Errorf("spend outbox %s: %w", dir, err)
	}
	go ob.writer()
	return ob, nil
}

func (ob *Outbox) open(legacy string) error {
	if err := os.MkdirAll(ob.dir, 0o700); err != nil {
		return err
	}
	id, err := os.ReadFile(filepath.Join(ob.dir, fileID))
	switch {
	case err == nil && len(strings.TrimSpace(string(id))) > 0:
		ob.id = strings.TrimSpace(string(id))
	case err == nil || errors.Is(err, os.ErrNotExist):
	default:
		return err
	}
	segs, err := listSegments(ob.dir)
	if err != nil {
		return err
	}
	acked := readAcked(ob.dir)
	var recs []*syncv1.SpendRecord // unacked, in order
	var last uint64
	for i, s := range segs {
		size, err := scan(s.path, func(r *syncv1.SpendRecord) error {
			if r.Seq <= last {
				return fmt.Errorf("%s: sequence %d after %d", s.path, r.Seq, last)
			}
			last, s.last = r.Seq, r.Seq
			if r.Seq > acked {
				recs = append(recs, r)
			}
			return nil
		})
		s.size = size
		if errors.Is(err, errTorn) {
			// The tail of a segment the machine did not sync before it
			// went down; nothing after it was acknowledged to anyone.
			ob.log.Warn("spend outbox: a segment ends in a torn record (the machine stopped before it was synced); reading up to it", "segment", filepath.Base(s.path), "records_after_seq", s.last)
		} else if err != nil {
			return err
		}
		if i+1 < len(segs) && s.last >= segs[i+1].first {
			return fmt.Errorf("%s overlaps the next segment", s.path)
		}
	}
	if legacy != "" {
		lid, lrecs, llast, err := readLegacy(legacy)
		if err != nil {
			return fmt.Errorf("older outbox %s: %w", legacy, err)
		}
		switch {
		case lid == "":
			legacy = "" // none there
		case ob.id != "" && ob.id != lid:
			ob.log.Error("spend outbox: an older outbox with another id is left next to the log; it is not shipped", "file", legacy)
			legacy = ""
		default:
			ob.id = lid
			var take []*syncv1.SpendRecord
			for _, r := range lrecs {
				if r.Seq > last {
					take = append(take, r)
				}
			}
			if len(take) > 0 {
				s, err := writeSegment(ob.dir, take)
				if err != nil {
					return err
				}
				segs = append(segs, s)
				recs = append(recs, take...)
			}
			last = max(last, llast)
		}
	}
	if ob.id == "" {
		var b [16]byte
		if _, err := crand.Read(b[:]); err != nil {
			return err
		}
		ob.id = hex.EncodeToString(b[:])
	}
	if err := writeDurable(ob.dir, fileID, []byte(ob.id+"\n")); err != nil {
		return err
	}
	// Every record found is kept in a segment this session does not write
	// to; segments holding no unacked record are removed.
	var keep []*segment
	for _, s := range segs {
		if s.last == 0 || s.last <= acked {
			if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			continue
		}
		keep = append(keep, s)
	}
	ob.segs = keep
	seen := max(last, acked)
	if seen > 0 || len(segs) > 0 {
		ob.lastSeq = seen + seqSkip
	}
	ob.ackedSeq = ob.lastSeq
	if len(recs) > 0 {
		ob.ackedSeq = recs[0].Seq - 1
	}
	ob.unacked = len(recs)
	ob.mem = recs
	if len(ob.mem) > memMax {
		ob.mem = ob.mem[len(ob.mem)-memMax:] // the older ones are read back from their segments
	}
	af, err := os.OpenFile(filepath.Join(ob.dir, fileAcked), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	ob.ackFile = af
	if err := ob.newSegment(ob.lastSeq + 1); err != nil {
		return err
	}
	if legacy != "" {
		// Its records are in a segment now, durably.
		if err := os.Remove(legacy); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if ob.unacked > 0 {
		ob.marks = append(ob.marks, commitMark{last: recs[len(recs)-1].Seq, at: time.Now()})
		ob.log.Info("spend outbox holds unshipped records", "records", ob.unacked, "outbox_id", ob.id)
	}
	return nil
}

// writeDurable writes name in dir atomically and durably (temporary file,
// fsync, rename, directory fsync), unless it already holds data.
func writeDurable(dir, name string, data []byte) error {
	path := filepath.Join(dir, name)
	if cur, err := os.ReadFile(path); err == nil && string(cur) == string(data) {
		return nil
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// newSegment starts the segment written from seq first (the writer's, or
// Open's).
func (ob *Outbox) newSegment(first uint64) error {
	path := segName(ob.dir, first)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte(segMagic)); err != nil {
		f.Close()
		return err
	}
	// Blocks allocated up front: an append then writes into them instead
	// of allocating on every write (the length is set, so an fdatasync has
	// no size to journal). The zeros after the last frame end the log.
	var m []byte
	if syscall.Fallocate(int(f.Fd()), 0, 0, segMax+maxGroupBytes) == nil && mapSegments {
		// Writes through a shared mapping of allocated blocks: no write
		// syscall per record, and no fault beyond the file's end.
		m, _ = syscall.Mmap(int(f.Fd()), 0, segMax+maxGroupBytes, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	}
	// The segment's directory entry is durable before any record in it
	// is (an fdatasync of the file does not promise its name).
	if err := syncDir(ob.dir); err != nil {
		f.Close()
		return err
	}
	ob.mu.Lock()
	ob.cur, ob.curMap = f, m
	ob.segs = append(ob.segs, &segment{first: first, path: path, size: int64(len(segMagic))})
	ob.mu.Unlock()
	return nil
}

// mapSegments: segments are written through a mapping where the file
// system allows (tests turn it off to cover the write path).
var mapSegments = true

func (ob *Outbox) closeFiles() {
	if ob.curMap != nil {
		_ = syscall.Munmap(ob.curMap)
		ob.curMap = nil
	}
	if ob.cur != nil {
		ob.cur.Close()
		ob.cur = nil
	}
	if ob.ackFile != nil {
		ob.ackFile.Close()
		ob.ackFile = nil
	}
}

// ID is the outbox id (random, fixed when the log was created).
func (ob *Outbox) ID() string { return ob.id }

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("spend outbox closed")

// Append queues r for the next write. r.Seq is assigned then; the caller
// must not modify r afterwards.
func (ob *Outbox) Append(r *syncv1.SpendRecord) error {
	ob.mu.Lock()
	for len(ob.queue) >= maxQueued && !ob.closed {
		ob.space.Wait()
	}
	if ob.closed {
		ob.mu.Unlock()
		return ErrClosed
	}
	if ob.inlineLocked(r) {
		ob.mu.Unlock()
		return nil
	}
	first := len(ob.queue) == 0
	ob.queue = append(ob.queue, r)
	full := len(ob.queue) >= ob.maxGroup
	if first && !full && ob.window > 0 {
		ob.gathering = true
	}
	ob.mu.Unlock()
	switch {
	case full || ob.window <= 0:
		select {
		case ob.work <- struct{}{}:
		default:
		}
	case first:
		// The writer sleeps until the group's window ends: one wake-up
		// per group, not one per record plus one for the window.
		ob.gather.Reset(ob.window)
	}
	return nil
}

// inlineLocked writes r at once, on the caller's goroutine, when the
// outbox is idle: nothing queued (no group is waiting that r would
// overtake) and no write for a quarter Window (so inline writes stay at
// most four per Window; a steady 50 req/s, one record per 20 ms, is all
// inline rather than on either side of the Window by jitter).
// At modest rates that is every record, with no writer wake-up at all (the
// proxy calls Append after the response went out). It reports whether it
// wrote r (mu held).
func (ob *Outbox) inlineLocked(r *syncv1.SpendRecord) bool {
	if ob.window <= 0 || ob.syncEvery < 0 || len(ob.queue) > 0 || ob.writerErr != nil ||
		ob.segs[len(ob.segs)-1].size >= segMax {
		return false
	}
	// Into the mapping a record is a copy: every record goes inline. A
	// write syscall is not: at most four a Window, the rest in groups.
	if ob.curMap == nil && time.Since(ob.lastWrite) < ob.window/4 {
		return false
	}
	start := time.Now()
	if err := ob.writeLocked([]*syncv1.SpendRecord{r}); err != nil {
		return false // queued: the writer retries
	}
	ob.afterWriteLocked(1, start)
	if !ob.syncArmed {
		ob.syncArmed = true
		select {
		case ob.syncKick <- struct{}{}:
		default:
		}
	}
	return true
}

// afterWriteLocked accounts a write of n records that began at start.
func (ob *Outbox) afterWriteLocked(n int, start time.Time) {
	took := time.Since(start)
	ob.lastWrite = start
	ob.addMarkLocked(commitMark{last: ob.lastSeq, at: start})
	ob.groups++
	ob.commitDur += took
	ob.maxCommit = max(ob.maxCommit, took)
	ob.broadcastLocked()
}

// writer writes the queue group by group, and fdatasyncs what was written
// (by it or inline) at most every syncEvery, until Close.
func (ob *Outbox) writer() {
	defer close(ob.writerDone)
	backoff := 10 * time.Millisecond
	syncTimer := time.NewTimer(time.Hour)
	syncTimer.Stop()
	defer syncTimer.Stop()
	arm := func() { // mu held
		ob.syncArmed = true
		syncTimer.Reset(max(time.Until(ob.lastSync.Add(ob.syncEvery)), 0))
	}
	syncOrRetry := func() { // mu not held; a failed sync is retried after backoff
		if err := ob.sync(); err != nil {
			ob.log.Error("spend outbox: sync failed; retrying", "err", err)
			ob.mu.Lock()
			ob.syncArmed = true
			ob.mu.Unlock()
			syncTimer.Reset(backoff)
		}
	}
	for {
		ob.mu.Lock()
		for len(ob.queue) == 0 || (ob.window > 0 && len(ob.queue) < ob.maxGroup && !ob.closed && ob.gathering) {
			if len(ob.queue) == 0 && ob.closed {
				ob.mu.Unlock()
				if err := ob.sync(); err != nil {
					ob.log.Error("spend outbox: final sync failed", "err", err)
				}
				return
			}
			ob.mu.Unlock()
			select {
			case <-ob.work:
			case <-ob.closing:
			case <-ob.gather.C:
				ob.mu.Lock()
				ob.gathering = false
				ob.mu.Unlock()
			case <-ob.syncKick: // an inline write: schedule its sync
				ob.mu.Lock()
				arm()
				ob.mu.Unlock()
			case <-syncTimer.C:
				ob.mu.Lock()
				ob.syncArmed = false
				ob.mu.Unlock()
				syncOrRetry()
			}
			ob.mu.Lock()
		}
		n := min(len(ob.queue), ob.maxGroup)
		group := ob.queue[:n:n]
		start := time.Now()
		err := ob.writeLocked(group)
		if err != nil {
			ob.writerErr = err
			closed := ob.closed
			ob.mu.Unlock()
			ob.log.Error("spend outbox write failed; retrying", "records", n, "err", err)
			if closed {
				return // Close gives up: the records were never written
			}
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		ob.writerErr = nil
		ob.queue = ob.queue[n:]
		if len(ob.queue) == 0 {
			ob.queue = nil // release the backing array
		}
		ob.afterWriteLocked(n, start)
		ob.space.Broadcast()
		syncNow := ob.syncEvery < 0 || time.Since(ob.lastSync) >= ob.syncEvery
		if !syncNow && !ob.syncArmed {
			arm()
		}
		ob.mu.Unlock()

		if syncNow {
			syncOrRetry()
		}
		ob.rollover()
	}
}

// writeLocked assigns the group its sequence numbers and appends it to the
// current segment in one write (mu held; only the writer and Open call it).
func (ob *Outbox) writeLocked(group []*syncv1.SpendRecord) error {
	if len(group) == 0 {
		return nil
	}
	buf := ob.buf[:0]
	first := ob.lastSeq + 1
	for i, r := range group {
		r.Seq = first + uint64(i)
		var err error
		if buf, err = appendFrame(buf, r); err != nil {
			return err
		}
	}
	seg := ob.segs[len(ob.segs)-1]
	if end := seg.size + int64(len(buf)); ob.curMap != nil && end <= int64(len(ob.curMap)) {
		copy(ob.curMap[seg.size:end], buf)
	} else if _, err := ob.cur.WriteAt(buf, seg.size); err != nil {
		return err
	}
	ob.buf = buf
	if cap(ob.buf) > 1<<20 {
		ob.buf = nil
	}
	seg.size += int64(len(buf))
	ob.lastSeq = first + uint64(len(group)) - 1
	seg.last = ob.lastSeq
	ob.dirty = true
	ob.unacked += len(group)
	ob.committed += uint64(len(group))
	ob.mem = append(ob.mem, group...)
	if len(ob.mem) > memMax {
		// The oldest stay in their segment (read back when shipped).
		drop := len(ob.mem) - memMax
		clear(ob.mem[:drop])
		ob.mem = ob.mem[drop:]
	}
	return nil
}

// sync makes what was written durable (the writer's, or Open's).
func (ob *Outbox) sync() error {
	ob.mu.Lock()
	dirty, f := ob.dirty, ob.cur
	ob.dirty = false
	ob.mu.Unlock()
	ob.lastSync = time.Now()
	if !dirty || f == nil {
		return nil
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		ob.mu.Lock()
		ob.dirty = true
		ob.mu.Unlock()
		return err
	}
	ob.mu.Lock()
	ob.syncs++
	ob.mu.Unlock()
	return nil
}

// rollover starts a new segment when the current one is full (synced
// first). It reports whether it did.
func (ob *Outbox) rollover() bool {
	ob.mu.Lock()
	seg := ob.segs[len(ob.segs)-1]
	full := seg.size >= segMax
	next := ob.lastSeq + 1
	ob.mu.Unlock()
	if !full {
		return false
	}
	if err := ob.sync(); err != nil {
		ob.log.Error("spend outbox: sync before a new segment failed; staying on this one", "err", err)
		return false
	}
	ob.mu.Lock()
	old, oldMap := ob.cur, ob.curMap
	ob.mu.Unlock()
	if err := ob.newSegment(next); err != nil {
		ob.log.Error("spend outbox: cannot start a new segment; staying on this one", "err", err)
		return false
	}
	// An inline write may have reached the old segment after the sync
	// (fdatasync writes back the mapping's dirty pages too).
	_ = syscall.Fdatasync(int(old.Fd()))
	if oldMap != nil {
		_ = syscall.Munmap(oldMap)
	}
	old.Close()
	ob.dropAcked()
	return true
}

func (ob *Outbox) broadcastLocked() {
	if !ob.changedOut {
		return // nobody holds the channel: nothing to wake, nothing to allocate
	}
	close(ob.changed)
	ob.changed = make(chan struct{})
	ob.changedOut = false
}

// Changed returns a channel closed at the next write or ack.
func (ob *Outbox) Changed() <-chan struct{} {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	ob.changedOut = true
	return ob.changed
}

// memFloor is the lowest seq the in-memory records hold (lastSeq+1 when
// none): unacked records below it are only in their segments (locked).
func (ob *Outbox) memFloorLocked() uint64 {
	if len(ob.mem) == 0 {
		return ob.lastSeq + 1
	}
	return ob.mem[0].Seq
}

// fromDisk reads the written records with after < seq < below, up to max,
// from the segments.
func (ob *Outbox) fromDisk(after, below uint64, max int) ([]*syncv1.SpendRecord, error) {
	ob.mu.Lock()
	segs := append([]*segment(nil), ob.segs...)
	ob.mu.Unlock()
	var out []*syncv1.SpendRecord
	stop := errors.New("stop")
	for i, s := range segs {
		if i+1 < len(segs) && segs[i+1].first <= after+1 {
			continue // every record of s is ≤ after
		}
		if s.first >= below {
			break
		}
		_, err := scan(s.path, func(r *syncv1.SpendRecord) error {
			if r.Seq >= below || len(out) >= max {
				return stop
			}
			if r.Seq > after {
				out = append(out, r)
			}
			return nil
		})
		if err == stop || len(out) >= max {
			break
		}
		if err != nil && !errors.Is(err, errTorn) {
			return nil, err
		}
	}
	return out, nil
}

// Batch returns up to max written records with seq > after (and not yet
// acked), or nil when there are none.
func (ob *Outbox) Batch(proxyID string, after uint64, max int) (*syncv1.SpendBatch, error) {
	ob.mu.Lock()
	after = maxU(after, ob.ackedSeq)
	last := ob.lastSeq
	if after >= last || ob.unacked == 0 {
		ob.mu.Unlock()
		return nil, nil
	}
	b := &syncv1.SpendBatch{ProxyId: proxyID, OutboxId: ob.id, OutboxLastSeq: last}
	floor := ob.memFloorLocked()
	if after+1 >= floor {
		i := sort.Search(len(ob.mem), func(i int) bool { return ob.mem[i].Seq > after })
		b.Records = append(b.Records, ob.mem[i:min(len(ob.mem), i+max)]...)
		ob.mu.Unlock()
	} else {
		ob.mu.Unlock()
		recs, err := ob.fromDisk(after, floor, max)
		if err != nil {
			return nil, fmt.Errorf("spend outbox: %w", err)
		}
		b.Records = recs
	}
	if len(b.Records) == 0 {
		return nil, nil
	}
	b.FirstSeq, b.LastSeq = b.Records[0].Seq, b.Records[len(b.Records)-1].Seq
	return b, nil
}

func maxU(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// Ack forgets every record up to lastSeq: the control plane applied them.
// It returns what those records cost per key, team, user and organization
// (ObjectSpend.Spend holds the cost), for the budget gate, and whether no
// appended record is left unacked. An ack for another outbox id (a stale
// stream) is ignored.
func (ob *Outbox) Ack(outboxID string, lastSeq uint64) ([]*syncv1.ObjectSpend, bool, error) {
	costs, err := ob.ack(outboxID, lastSeq)
	ob.mu.Lock()
	drained := ob.unacked == 0 && len(ob.queue) == 0
	ob.mu.Unlock()
	return costs, drained && err == nil, err
}

type ref struct{ kind, id string }

// addCosts adds what r cost to each object it is charged to.
func addCosts(costs map[ref]int64, r *syncv1.SpendRecord) {
	if r.Cost <= 0 {
		return
	}
	user := r.UserId
	if r.TeamId != "" {
		user = "" // a team key spends the team's budget, not its user's (as the gate counts it)
	}
	for _, o := range [...]ref{{"key", r.TokenId}, {"team", r.TeamId}, {"user", user}, {"organization", r.OrganizationId}, {"end_user", r.EndUser}} {
		if o.id != "" {
			costs[o] += r.Cost
		}
	}
	// A key's spend on the model, for model_max_budget (the limiter
	// ignores those it holds no budget for).
	if r.TokenId != "" && r.Model != "" {
		costs[ref{"key_model", r.TokenId + "/" + r.Model}] += r.Cost
	}
	// The user's spend in the team, for team-member budgets.
	if r.TeamId != "" && r.UserId != "" {
		costs[ref{"team_member", r.TeamId + "/" + r.UserId}] += r.Cost
	}
}

func (ob *Outbox) ack(outboxID string, lastSeq uint64) ([]*syncv1.ObjectSpend, error) {
	if outboxID != ob.id {
		return nil, nil
	}
	ob.mu.Lock()
	if lastSeq > ob.lastSeq {
		lastSeq = ob.lastSeq // never beyond what exists
	}
	from := ob.ackedSeq
	if lastSeq <= from {
		ob.mu.Unlock()
		return nil, nil
	}
	costs := map[ref]int64{}
	n := 0
	floor := ob.memFloorLocked()
	var disk []*syncv1.SpendRecord
	if from+1 < floor {
		// Acked records older than memory: read back (rare: a backlog).
		ob.mu.Unlock()
		var err error
		if disk, err = ob.fromDisk(from, min(floor, lastSeq+1), 1<<30); err != nil {
			return nil, fmt.Errorf("spend outbox ack: %w", err)
		}
		ob.mu.Lock()
		if ob.ackedSeq != from { // a concurrent ack took them
			ob.mu.Unlock()
			return ob.ack(outboxID, lastSeq)
		}
	}
	for _, r := range disk {
		addCosts(costs, r)
		n++
	}
	i := 0
	for i < len(ob.mem) && ob.mem[i].Seq <= lastSeq {
		addCosts(costs, ob.mem[i])
		i++
	}
	n += i
	clear(ob.mem[:i])
	ob.mem = ob.mem[i:]
	if len(ob.mem) == 0 {
		ob.mem = nil
	}
	ob.ackedSeq = lastSeq
	ob.unacked = max(ob.unacked-n, 0)
	j := 0
	for j < len(ob.marks) && ob.marks[j].last <= ob.ackedSeq {
		j++
	}
	ob.marks = ob.marks[j:]
	if len(ob.marks) == 0 {
		ob.marks = nil
	}
	ob.broadcastLocked()
	ob.mu.Unlock()

	// The acked mark only spares a restart resending what was applied
	// (the control plane skips it anyway): written, not synced.
	ob.ackMu.Lock()
	if ob.ackFile != nil {
		if _, err := ob.ackFile.WriteAt(ackedBytes(lastSeq), 0); err != nil {
			ob.log.Warn("spend outbox: acked mark not written; a restart resends applied records", "err", err)
		}
	}
	ob.ackMu.Unlock()
	ob.dropAcked()

	out := make([]*syncv1.ObjectSpend, 0, len(costs))
	for o, c := range costs {
		out = append(out, &syncv1.ObjectSpend{Kind: o.kind, Id: o.id, Spend: c})
	}
	return out, nil
}

// dropAcked removes the segments (other than the one being written) whose
// records are all acked.
func (ob *Outbox) dropAcked() {
	ob.mu.Lock()
	var gone []*segment
	for len(ob.segs) > 1 && ob.segs[0].last <= ob.ackedSeq {
		gone = append(gone, ob.segs[0])
		ob.segs = ob.segs[1:]
	}
	ob.mu.Unlock()
	for _, s := range gone {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			ob.log.Warn("spend outbox: acked segment not removed", "segment", filepath.Base(s.path), "err", err)
		}
	}
}

// Stats describe the outbox.
type Stats struct {
	Queued    int    // appended, not yet written
	Unacked   uint64 // written, not yet acked
	LastSeq   uint64
	AckedSeq  uint64
	Committed uint64 // records written since Open
	Groups    uint64 // writes since Open
	Syncs     uint64 // fdatasyncs since Open
	// MeanCommit and MaxCommit are the durations of a group write.
	MeanCommit, MaxCommit time.Duration
	// OldestUnacked is when the oldest record not yet acked was written
	// (zero when everything is acked; records found in the log at Open
	// count from Open).
	OldestUnacked time.Time
}

// Stats returns the outbox's counters.
func (ob *Outbox) Stats() Stats {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	st := Stats{Queued: len(ob.queue), Unacked: uint64(ob.unacked), LastSeq: ob.lastSeq, AckedSeq: ob.ackedSeq,
		Committed: ob.committed, Groups: ob.groups, Syncs: ob.syncs, MaxCommit: ob.maxCommit}
	if ob.groups > 0 {
		st.MeanCommit = ob.commitDur / time.Duration(ob.groups)
	}
	if len(ob.marks) > 0 && st.Unacked > 0 {
		st.OldestUnacked = ob.marks[0].at
	}
	return st
}

// Flush waits until everything appended so far is written to the log
// (survives the process; the machine after the next sync).
func (ob *Outbox) Flush(ctx context.Context) error {
	ob.mu.Lock()
	target := ob.committed + uint64(len(ob.queue))
	ob.mu.Unlock()
	return ob.waitFor(ctx, func() bool { return ob.committed >= target })
}

// WaitShipped waits until every record appended so far is written and
// acked by the control plane.
func (ob *Outbox) WaitShipped(ctx context.Context) error {
	ob.mu.Lock()
	queued := len(ob.queue)
	target := ob.lastSeq
	ob.mu.Unlock()
	if queued > 0 {
		if err := ob.Flush(ctx); err != nil {
			return err
		}
		ob.mu.Lock()
		target = ob.lastSeq
		ob.mu.Unlock()
	}
	return ob.waitFor(ctx, func() bool { return ob.ackedSeq >= target || ob.unacked == 0 })
}

// waitFor waits until done (called under mu) holds.
func (ob *Outbox) waitFor(ctx context.Context, done func() bool) error {
	for {
		ob.mu.Lock()
		ok, ch := done(), ob.changed
		ob.changedOut = true
		ob.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close writes and syncs what is queued, stops the writer and closes the
// files. Append fails afterwards.
func (ob *Outbox) Close() error {
	ob.mu.Lock()
	if ob.closed {
		ob.mu.Unlock()
		return nil
	}
	ob.closed = true
	ob.space.Broadcast()
	close(ob.closing)
	ob.mu.Unlock()
	select {
	case ob.work <- struct{}{}:
	default:
	}
	<-ob.writerDone
	ob.mu.Lock()
	lost := len(ob.queue)
	ob.mu.Unlock()
	if lost > 0 {
		ob.log.Error("spend outbox closed with unwritten records", "records", lost)
	}
	ob.ackMu.Lock()
	defer ob.ackMu.Unlock()
	var err error
	if ob.curMap != nil {
		_ = syscall.Munmap(ob.curMap)
		ob.curMap = nil
	}
	if ob.cur != nil {
		err = ob.cur.Close()
		ob.cur = nil
	}
	if ob.ackFile != nil {
		if e := ob.ackFile.Close(); err == nil {
			err = e
		}
		ob.ackFile = nil
	}
	return err
}

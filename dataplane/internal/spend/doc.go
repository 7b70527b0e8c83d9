// Package spend is the proxy's spend outbox: every completed request's
// spend record is written to an append-only log before it is shipped to the
// control plane, so that nothing is lost on a restart and nothing is
// counted twice.
//
// # Architecture
//
// Record (the proxy's OnUsage hook) prices an outcome and appends it. The
// segment being written is mapped shared over its preallocated blocks:
// while nothing is queued, the record is framed and copied into the
// mapping on the caller's goroutine (the proxy calls it after the response
// went out), no system call, no other goroutine woken. Where the file
// system would not map the segment (or it is full and a new one is due), an
// idle outbox (nothing queued, no write for a quarter Window) writes the
// record at once with pwrite; otherwise it is queued and one writer
// goroutine appends the queue to the log in groups (group commit: whatever
// queued while the previous write ran, or for one Window after the group's
// first record, at most MaxGroup records, one write(2) per group). A write
// assigns each record the next sequence number.
// Written records are fdatasynced at most every SyncInterval (1 s by
// default) while records keep coming, and at Close. The log is a directory
// of its own (by default the cache path plus ".spendlog"): segments of
// CRC-checked frames (segment.go), the outbox id, and an acked mark.
//
// The sync client reads written records in sequence order (Batch, from
// memory: the newest 65,536 unacked records are kept there, older ones are
// read back from their segments), sends them, and calls Ack when the
// control plane confirms. Acks are in memory (plus the acked mark, written
// without a sync: it only spares a restart resending applied records);
// fully acked segments are deleted. Sequence numbers are scoped by the
// outbox id: the control plane keeps a high-water mark per (proxy id,
// outbox id), so a batch sent twice is applied once, and each Open numbers
// new records far past anything found (seqSkip), so a record lost by a
// machine crash after it was shipped never lends its number to a new one.
//
// # Why a log and not bbolt
//
// Each bbolt commit cost two fdatasyncs (pages, then meta) and each ack a
// third transaction; at 50-200 req/s with a 20 ms window that was about
// one fsynced transaction per request, ~20% of the proxy's CPU at 200 req/s
// (README, Performance). A log write is a copy into the mapping (or one
// write(2)); durability against a crash of the process needs no fsync at
// all (the kernel keeps the page cache), only a crash of the machine does,
// and that is bounded by SyncInterval.
//
// # Failure modes
//
//   - SIGKILL, OOM kill or panic: written records survive; what is lost is
//     what was queued but not written: through the mapping nothing but a
//     copy in progress (a torn last frame); with write syscalls the records
//     of the last Window (20 ms by default) plus the write in progress
//     (README, "Spend"; deploy/e2e TestSpendLostOnSIGKILL measures it).
//   - An I/O error of the disk while the kernel reads a mapped page back in
//     would be a SIGBUS; the mapping covers only blocks fallocate allocated
//     (no fault past the end of the file, no allocation at fault time).
//   - Kernel panic or power loss: records written since the last fdatasync
//     (at most SyncInterval of them) may be lost; a frame torn by it ends
//     its segment at Open (logged). Set --spend-sync-interval 0 to sync
//     every write (the old behaviour: one fdatasync per group).
//   - SIGTERM: the proxy stops taking requests, Close writes and syncs the
//     queue, and the proxy waits (bounded) until the control plane acked
//     everything.
//   - Control plane unreachable: records accumulate in segments and ship
//     when it is back (older than memory: read back from disk).
//   - A failed write keeps the records queued and is retried.
//   - An outbox file of an older proxy (<cache>.spend, bbolt) is taken over
//     at Open: its records go into a segment with their sequence numbers
//     and outbox id (micro-USD costs converted), then the file is removed.
//
// # Thread safety
//
// Every method is safe for concurrent use.
package spend

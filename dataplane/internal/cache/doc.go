// Package cache persists the data plane's replica in a bbolt file, so that a
// restarted proxy serves its last state even when the control plane is down.
//
// # Architecture
//
// A snapshot bucket "snap/<n>" holds the snapshot's chunks as received from
// the control plane (encoded ControlMessage{snapshot}, under "c" + seq);
// the bucket "ovl/<n>" beside it an overlay of the entities changed by
// deltas since (protobuf syncv1.Entity under "e" + kind + 0x00 + id; a
// deletion is a tombstone entity, since the chunks may hold the object).
// The overlay has a bucket of its own because bbolt rewrites a leaf whole:
// an entity among the chunks shared a leaf with the last chunk, and each
// delta wrote that chunk (up to a few MB) again. Caches of the previous
// release keep their overlay in the snapshot bucket after the chunks; Load
// reads it before the overlay bucket, and a delta moves an entity it
// changes out of it. Every value is prefixed by
// its CRC-32C (bbolt checksums only its meta pages). Load yields the chunks'
// entities, then the overlay: applied in order, they give the state. The
// chunks are stored as they came (no per-entity encoding or B-tree insert;
// the control plane sends keys in any order; WriteFramed stores the
// receive buffer itself) and are checked, copied out of the mapping and,
// with LoadRaw, prepared (parsed) on other CPUs at a restart, ahead of the
// caller. The overlay is bounded by the number of distinct
// objects changed since the snapshot; the next snapshot starts without one.
// The "meta" bucket holds the schema version, the revision and the name of
// the active snapshot bucket. A snapshot is written into a new staging
// bucket in transactions of ~16 MiB that are not fsynced (memory stays
// bounded; a staging bucket is never read before its activation), each run
// on a goroutine of its own while the caller goes on (one at a time), and
// activated by one final, fsynced transaction that points meta at it, sets
// the revision and deletes the previous snapshot: a partial snapshot is
// never what Load or a restart sees. A crash before the activation leaves
// the previous snapshot active and the staging bucket for Open to delete;
// should a power loss damage pages written without fsync, Open's checks
// move the file aside and the proxy fetches a snapshot (the cache is
// rebuildable). A delta is one transaction with its revision (not fsynced:
// unsynced.go).
// The freelist is not persisted (NoFreelistSync) and is rebuilt at open by
// walking every page.
//
// # Thread safety
//
// A Cache is safe for concurrent use; operations are serialized by a mutex
// (the replica has a single writer anyway). Load and LoadRaw hold it for
// their duration. A SnapshotWriter belongs to one goroutine; its background
// transactions take the mutex like any operation.
//
// # Failure modes
//
//   - Open checks the file before bbolt maps it (a valid meta page; a size
//     that holds every page the meta page counts), then lets bbolt walk the
//     page tree, then checks the schema. Anything wrong (garbage, truncated,
//     inconsistent tree, unknown schema version or layout, any bbolt open
//     error but a lock timeout) moves the file to <path>.corrupt-<unixtime>
//     with an error log, and Open continues with an empty cache. A lock held
//     by another process fails Open with ErrLocked after 2s instead.
//   - Staging buckets left by a crash or an abort are deleted at Open (and
//     at the next BeginSnapshot).
//   - Load fails with ErrCorrupt on an undecodable entity; the caller can
//     Reset (move aside, start empty) and resync from the control plane.
//   - bbolt panics on some corruptions; Open and Load recover them (with
//     debug.SetPanicOnFault for faults on the mapping) and report
//     ErrCorrupt. A bbolt open that panicked leaks its file descriptor and
//     a goroutine; that happens once per corrupt file.
package cache

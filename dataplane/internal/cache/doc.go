// Package cache persists the data plane's replica in a bbolt file, so that a
// restarted proxy serves its last state even when the control plane is down.
//
// # Architecture
//
// Entities are stored as protobuf bytes (syncv1.Entity), prefixed by their
// CRC-32C (bbolt checksums only its meta pages), under
// kind + 0x00 + id inside a snapshot bucket "snap/<n>". The "meta" bucket
// holds the schema version, the revision and the name of the active
// snapshot bucket. A snapshot is written into a new staging bucket in
// transactions of ~16 MiB (memory stays bounded, fsyncs stay few) and
// activated by one final transaction that points meta at it, sets the
// revision and deletes the previous snapshot: a partial snapshot is never
// what Load or a restart sees. A delta is one transaction with its
// revision. Commits are fsynced (a committed revision survives kill -9); the
// freelist is not persisted (NoFreelistSync) and is rebuilt at open by
// walking every page.
//
// # Thread safety
//
// A Cache is safe for concurrent use; operations are serialized by a mutex
// (the replica has a single writer anyway). Load holds it for its duration.
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

// Package replica keeps the data plane's copy of the control plane's state:
// the in-memory state.State read by the request path and the bbolt cache
// that lets a restarted proxy serve without the control plane, advanced
// together by the sync client.
//
// # Architecture
//
// Open loads the cache's snapshot (with the deltas applied since) into a
// state.Builder and installs it: the cache's reading goroutines check each
// stored chunk and parse its keys (state.Chunk.Prepare) while this one adds
// the previous chunk's. ApplyChunk feeds each snapshot chunk (its keys
// already parsed by the sync client's receiving goroutine) to a Builder and
// its received bytes, uncopied, to the cache's staging bucket as it
// arrives, so neither side ever holds the whole snapshot's messages; the
// last chunk commits the cache (one fsynced transaction activates the
// snapshot and its revision) and then installs the Builder in memory with
// one pointer swap. ApplyDelta checks the
// revision, persists the delta in one transaction with its revision, then
// applies it in memory. Persisting first means the revision a proxy reports
// is always on disk: after kill -9 it restarts at that revision or later.
//
// # Thread safety
//
// ApplyChunk, AbortSnapshot, ApplyDelta and Close are meant for one writer
// (the sync client) and are serialized by a mutex. State() is read
// concurrently by any number of request goroutines.
//
// # Failure modes
//
//   - Chunk out of order (other revision, seq not next, first seq not 0):
//     the partial snapshot is discarded, ErrSnapshotOrder; the installed
//     state is untouched. A stream that breaks mid-snapshot should call
//     AbortSnapshot (a later seq 0 would otherwise be refused).
//   - Delta not following the revision: error wrapping state.ErrGap,
//     nothing changes; the caller resubscribes.
//   - Invalid entities (never sent by a correct control plane): left out of
//     snapshots (and of the cache's copy of the chunk), turned into
//     tombstones in deltas, logged. The object does
//     not exist on this proxy (fail closed) and sync keeps moving.
//   - Cache write or commit failure (disk full, I/O error): the snapshot or
//     delta is not applied in memory either and the error is returned; the
//     proxy keeps serving its current state.
//   - An entity that does not decode (state.ErrMalformed) in a snapshot
//     chunk: the partial snapshot is discarded and the error returned, as
//     for a message that does not decode.
//   - Corrupt cache at Open: moved aside by the cache package (or, when an
//     entity fails to decode while loading, by Reset); the replica starts
//     empty and not ready until a snapshot arrives.
package replica

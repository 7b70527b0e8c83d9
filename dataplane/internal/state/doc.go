// Package state is the data plane's in-memory copy of what the control plane
// synced: keys, teams, users, organizations, models and settings, built for
// lookups at microsecond cost (the key table is pointer-free so that a million
// keys cost the garbage collector nothing).
//
// # Architecture
//
// A State publishes one immutable-ish view through an atomic pointer: the
// revision, the key table, and copy-on-write maps of teams, users and
// organizations (64 shards each, so a change copies one shard), the model
// index (by id, by public name, by access group) and the parsed settings.
//
// The key table holds no Go pointers. Keys are 104-byte records in
// per-shard slices (64 shards chosen by a seeded hash of the key's SHA-256)
// with the token id inline (longer than 32 bytes: in the arena); each shard
// has an open-addressing index of uint32 slots (record index, a 7-bit tag, a
// previous-hash bit) with linear probing and backward-shift deletion, so
// churn never leaves tombstones in the index. User, team and organization
// ids are interned uint32 references into an append-only arena of 1 MiB
// byte chunks; policies (models, enforced params, allowed routes, tags,
// per-model maps) and limit profiles are interned in small tables and
// referenced by index, so identical policies are one *Policy. A previous
// hash of a regenerated key is a full copy of the key's record, carrying
// its grace deadline, in the shard of that previous hash: every lookup is
// one shard, one read lock, no allocation. Expiry and budget reset times are
// kept as 32-bit unix seconds (clamped at 2106).
//
// Records are append-only: updates rewrite fields in place but never the
// token id bytes (so a TokenID string a reader holds never changes), and a
// deleted key, or a regenerated key's old record, becomes a tombstone. The
// writer keeps a token-id index; when tombstones exceed a quarter of the
// live records (and 16384), a delta rebuilds the table on the side and swaps
// it in (compaction).
//
// Snapshots are built with NewSnapshot/Builder.Add into a fresh table and
// maps that nobody reads, then published by Install with one pointer store.
// A snapshot's key table is filled in bulk: records are appended, and the
// token-id and shard indexes are built once at the end, in memory order,
// the shards on every CPU (a repeated token id keeps its last record; a
// tombstone ends bulk mode early). Keys come either decoded
// (Builder.Add) or encoded: Builder.AddWire and AddChunkEntity read a key
// entity straight from its wire form (wire.go), only the fields the table
// keeps, without allocating; Chunk.Prepare does that parse ahead, on
// another goroutine. Anything the parser does not expect is decoded with
// proto.Unmarshal instead, so both paths give the same table.
//
// # Thread safety
//
// Reader methods are safe for any number of concurrent goroutines. There is
// one writer at a time (Install and ApplyDelta serialize on a mutex); a
// Builder belongs to one goroutine. A reader never waits for more than one
// key's update: a shard's write lock is held for one record, or for growing
// one shard's index or record slice (a 1/64th of the table: ~0.2 ms at 1M
// keys, amortized over thousands of inserts). Everything returned (KeyInfo strings and Policy,
// *Team, *User, *Org, *Model, slices, *Settings) is immutable and may be kept.
//
// Visibility of a delta: key changes are applied one by one, each atomic;
// then the other objects and the revision switch together. A snapshot is
// all-or-nothing.
//
// # Failure modes
//
//   - A delta that does not follow the loaded revision fails with ErrGap
//     and changes nothing; so does a delta with any invalid entity
//     (ErrInvalidEntity: unknown kind, missing value, key hash not 32 bytes,
//     ids over 1024 bytes, general_settings not a JSON object).
//   - Builder.Add rejects an invalid entity and stays usable; so does
//     AddWire, and bytes that do not decode fail with ErrMalformed.
//   - Hashes are never echoed in errors.
//   - Expired previous hashes stop matching at their deadline but keep
//     their record until the key changes, a compaction, or the next
//     snapshot.
//   - Interned policies and limit profiles that no key uses any more are
//     kept until the next snapshot.
package state

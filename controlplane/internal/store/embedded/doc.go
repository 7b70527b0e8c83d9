// Package embedded stores the control plane's state in one bbolt file, for
// a single control-plane process run without --database-url.
//
// # Architecture
//
// Every entity is stored as the JSON of its store struct in a bucket per
// kind (keys, teams, users, organizations, models, settings), keyed by its
// id. Index buckets sit next to them:
//
//	keys_by_hash     key_hash → token_id            GetKeyByHash, uniqueness
//	keys_by_alias    key_alias → token_id           GetKeyByAlias, uniqueness
//	keys_by_created  order → ∅                      ListKeys without filters
//	keys_by_user     lp(user_id) + order → ∅        ListKeys(user), DeleteUser
//	keys_by_team     lp(team_id) + order → ∅        ListKeys(team), DeleteTeam
//	keys_by_org      lp(org_id) + order → ∅         ListKeys(org), DeleteOrganization
//	keys_by_rotation time(key_rotation_at) + token_id → ∅  KeysDueForRotation (auto_rotate keys only)
//	events           seq → Event JSON               the event outbox, in enqueue order
//	events_by_id     event_id → seq                 uniqueness, MarkEvent*
//	events_due       time(next_attempt_at) + seq → ∅  pending events, for ClaimEvents
//	events_delivered time(delivered_at) + seq → ∅   PurgeEvents
//	teams_by_created, users_by_created, organizations_by_created
//	audit            time(created_at) + seq → AuditEntry JSON (walked backwards: newest first)
//	audit_ids        id → audit key                 uniqueness of audit ids
//	changes          big-endian revision → change set JSON
//	meta             schema_version, head
//	ui_revoked_sessions        session id → {exp, seq}  admin UI sign-outs (created by the first; sessions.go)
//	ui_revoked_sessions_by_seq seq → session id         RevokedSessions after a cursor
//
// order is created_at (seconds with the sign bit flipped, then nanoseconds,
// big-endian, so byte order is time order) followed by the id: listings walk
// an index in creation order, ties by id, and decode only the page unless a
// filter needs the entity. lp(s) is s prefixed with its length, so a prefix
// scan for one owner never sees another. Keys are the only kind that can
// number in the millions and have an index per filter; teams, users and
// organizations are filtered by scanning them (DeleteUser scans teams and
// organizations for memberships). ListModels sorts in memory.
//
// ReadWriteTx is one bbolt write transaction. Each Tx method checks
// existence, uniqueness and encoding before its first write, so a method
// that fails changed nothing and the callback may go on (as with the
// Postgres backend). Every write appends to the transaction's change set
// (a later write of the same entity replaces the earlier image); when the
// callback returns nil and the set is not empty, the next revision (head+1)
// and the change set are written in the same commit. bbolt runs one writer
// at a time, so revisions are gapless and in commit order, and the callback
// runs exactly once. AppendAudit alone writes no change set.
//
// The change log keeps the last DefaultRetention (100,000) change sets
// (WithRetention changes it): each commit deletes the ones that fell out,
// at most 1,000 at a time. A data plane further behind than Oldest needs a
// snapshot. Audit rows are kept forever.
//
// Snapshot is one bbolt read transaction: the head in it is the revision,
// and the view is exactly the state after that revision. Each* decode 1,000
// entities per cursor walk, on every CPU, then call fn outside the walk; on
// Store.Read every batch is a read transaction of its own, on a snapshot or
// a Tx they share the enclosing one. Measured on the 2-core development VM
// (busy): one CreateKey per transaction ≈ 0.8 ms on a small store, 4–8 ms
// at a million keys (fsync of the touched pages and the free list); a
// snapshot of a million keys through EachKey ≈ 6 s of CPU for JSON
// decoding, split over the cores.
//
// The schema version lives in meta. Open applies the pending steps of
// migrations (schema.go) in one transaction and refuses a file whose
// version is newer than the binary knows (ErrSchemaTooNew).
//
// # Thread safety
//
// A Store is safe for concurrent use. Writers queue on bbolt's single
// writer lock; readers never block writers nor each other. A Tx belongs to
// its callback and a snapshot Reader to its fn: both fail (instead of
// touching a finished bbolt transaction) after their callback returns.
// Subscribe channels are signalled after each commit that advanced the
// head, without blocking, and closed when their context ends or the store
// closes.
//
// # Failure modes
//
//   - Another process holds the file: Open waits for the lock for up to 2s
//     (WithLockTimeout) and fails with ErrLocked naming the file.
//   - A file from a newer Tollgate: Open fails with ErrSchemaTooNew. A file
//     that is not a bbolt file, or another program's bbolt file (buckets
//     but no schema version): Open fails without changing it.
//   - Crash: bbolt commits are atomic and fsynced; a transaction either
//     committed with its revision and change set or left no trace.
//   - Closed store: every call returns an error wrapping
//     store.ErrUnavailable; Close waits for running transactions.
//   - A bbolt write that fails inside a Tx method (disk full while
//     growing, key too large) poisons the transaction: every later call in
//     it fails and ReadWriteTx returns the error instead of committing.
//     Ids and indexed fields longer than 8 KiB, and empty ids or key
//     hashes, are rejected before any write.
//   - Long read transactions: the file is mapped with 8 GiB of address
//     space up front (1 GiB on 32-bit and Windows), so while it is smaller
//     than that a writer never waits for a running snapshot (a million keys
//     take about 2 GiB). Beyond it, a commit that must grow the mapping
//     waits until open read transactions end; a Snapshot fn must therefore
//     never wait for a ReadWriteTx to finish. Pages freed while a snapshot
//     is open are reused only after it ends, so the file grows under heavy
//     writes during long snapshots. The file never shrinks by itself
//     (bbolt keeps freed pages for reuse).
package embedded

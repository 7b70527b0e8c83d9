// Package postgres stores the control plane's state in Postgres and numbers
// every committed write with a global, gapless revision.
//
// # Architecture
//
// One table per entity (keys, teams, users, organizations, models,
// settings, audit) holds the whole struct as JSON in doc, next to the typed
// columns that are filtered, ordered and constrained on; team_members
// mirrors Team.Members for the "teams of a user" filter; ui_revoked_sessions
// holds admin UI sign-outs (no revision: they are not synced). The schema comes
// from numbered SQL files embedded in the binary (migrations/), each applied
// once, in its own transaction, under an advisory lock (Migrate, MigrateTo).
//
// ReadWriteTx runs its callback in a REPEATABLE READ transaction. READ
// COMMITTED would let two callbacks that read a key and write it back (spend,
// budgets, rotation) silently overwrite each other; under REPEATABLE READ the
// second writer gets a serialization failure and the callback runs again on
// fresh data, which is what the callback contract ("may be called more than
// once") is for. Write skew across different rows remains possible, as
// under every isolation level short of SERIALIZABLE. Writes that can collide
// on a unique column use ON CONFLICT DO NOTHING or a NOT EXISTS guard rather
// than catching unique_violation, so a conflict reported to the callback does
// not abort its transaction; SAVEPOINTs are avoided on purpose (more than 64
// subtransactions in one transaction slow every snapshot in the cluster).
//
// # Revisions
//
// Each write appends a store.Change to the transaction's change set (a later
// write of the same entity replaces the earlier one). As the last statement
// before COMMIT the set goes into the changes table in one INSERT, with
// tx_id = pg_current_xact_id() and revision NULL. Writers never touch a
// shared row, so concurrent commits do not queue behind each other.
//
// A sequencer numbers them: one replica at a time holds a session advisory
// lock on a dedicated connection (the others retry every failover interval
// and take over when its session ends). In one transaction it locks
// revision_head, gives each committed, unnumbered transaction the next
// revision in the order of its smallest change id (a commit order: see
// assignSQL), sets revision_head, and NOTIFYs tollgate_revision with the new
// head. It runs when a local commit wakes it, when NOTIFY tollgate_changes
// arrives from another replica, and every poll interval; a write's revision
// is typically visible a millisecond or two after its commit.
//
// The wake-up NOTIFY is sent after the writer's commit, outside its
// transaction, coalesced per replica. Postgres takes a database-wide lock at
// the commit of every transaction that issued NOTIFY and holds it through the
// commit's WAL flush, so a NOTIFY inside the writer's transaction would make
// all writers commit one at a time, the bottleneck the sequencer exists to
// avoid. A notification lost to a crash between commit and NOTIFY costs one
// poll interval.
//
// Subscribe is fed by a LISTEN connection per replica (tollgate_revision),
// plus polling of revision_head while anyone subscribes. Snapshot reads
// revision_head and the entities in one REPEATABLE READ READ ONLY
// transaction: every change set up to that revision is in the view. It
// retries for a few tens of milliseconds to get a view without committed but
// not yet numbered writes, and settles for one with them under sustained
// write load (the contract allows it; replaying converges). In a snapshot,
// Each* read through a cursor, one page ahead of fn; EachKeyDocs has
// Postgres drop the fields no proxy needs from each document and send the
// largest strings from their columns (reader.go): rendering jsonb as text
// was most of the server's cost of a million-key snapshot.
//
// # Thread safety
//
// A Store is safe for concurrent use. A Tx belongs to its callback: one
// goroutine, and never after the callback returns (methods then fail).
// Readers from Read use the pool and may be shared.
//
// # Failure modes
//
//   - Database unreachable: operations return errors wrapping
//     store.ErrUnavailable; the sequencer and listener reconnect with backoff.
//     A COMMIT whose connection drops may or may not have committed; it is
//     reported as ErrUnavailable and never retried.
//   - Contention: serialization failures and deadlocks roll back and rerun
//     the callback with jittered backoff, up to WithMaxAttempts, then return
//     an error wrapping store.ErrUnavailable.
//   - Sequencer replica dies: its session ends, the lock is released, a
//     standby takes over within the failover interval; nothing committed is
//     lost, its revisions are assigned late. A network partition that keeps
//     the dead session open on the server delays takeover until TCP keepalive
//     ends it; the revision_head row lock keeps numbering correct meanwhile.
//   - Input the database cannot store (NUL bytes, invalid UTF-8 in text
//     columns) fails with a plain error; callers must reject it first.
//   - Connection poolers in transaction mode break LISTEN and the session
//     lock: connect directly or through session pooling.
package postgres

// Package syncserver streams the control plane's state to data-plane proxies
// over the tollgate.sync.v1 SyncService: a snapshot or the missing deltas
// first, then every committed change set in revision order, with heartbeats.
//
// # Architecture
//
// One Server serves every proxy stream. Its Run loop is the only reader of
// the store's change log: woken by store.Subscribe (and a fallback poll), it
// converts each change set to a Delta, encodes it once, and appends it to a
// shared ring of recent deltas (default 4096 change sets / 64 MiB). Each
// stream runs in its own handler goroutine and copies from the ring; a
// stream that falls behind the ring reads and encodes the change sets it
// needs from the store itself, so a slow proxy never holds up the reader or
// other streams.
//
// The first answer to a proxy's Hello{revision} is authoritative:
//   - revision == head: nothing but a heartbeat (then deltas as they come);
//   - 0 < revision < head and revision >= Oldest-1: the deltas after it;
//   - revision 0, behind the compacted log, or ahead of the head: a snapshot.
//     "Ahead" is decided after waiting up to 2s for the head to reach the
//     proxy's revision: with Postgres another replica may have sequenced
//     further, and this replica's head catches up within milliseconds.
//
// Snapshots are built at most once at a time (concurrent requests share the
// build in flight) and the latest is kept, encoded, and reused while it is
// at most 10000 revisions behind the head and its following deltas are
// still in the log: the proxy receives the slightly older snapshot and then
// the deltas since. After a control-plane restart, N proxies cost one
// snapshot build, not N. Chunks hold at most 5000 entities or ~3 MiB (below
// gRPC's default 4 MiB receive limit), all carry the snapshot revision, and
// the last has last=true; a heartbeat follows at once. Chunks are
// published as they are encoded: streams send a snapshot while it is being
// built (the build reads the store, the proxies install, at the same
// time), and a build that fails midway fails the streams sending it.
//
// Keys, most of a snapshot, are not decoded: store.Reader.EachKeyDocs hands
// over their JSON documents and keyWire (keywire.go) writes each one's
// Entity bytes straight from it, on every CPU, falling back to decoding
// and marshalling for anything its fast path does not reproduce exactly.
//
// Encoded messages are sent as pre-encoded bytes (a ControlMessage whose
// only content is unknown fields), so N streams share one encoding. This
// relies on the default proto codec, which writes unknown fields verbatim.
//
// Membership and rate-limit leases are not this package's: each stream
// joins the deployment's membership through a coord.Coordinator once it is
// current, its LeaseRequests go to it, and it delivers LeaseGrants to this
// server's streams (WithCoordinator; by default coord.Memory, this replica
// alone). A stream that ends leaves, unless this server is stopping: its
// proxy then fails over to another replica keeping its place.
//
// Keys travel as the 32 raw bytes of their SHA-256; plaintext keys never
// exist here. general_settings loses master_key and database_url. Model
// api_key is sent as stored (normally an "os.environ/NAME" reference the
// proxy resolves).
//
// Authentication is "authorization: Bearer <sync token>", compared as
// SHA-256 digests in constant time. A server created with an empty token
// refuses every stream with FailedPrecondition: sync is off rather than open.
//
// With WithRegistry the server exposes its metrics (metrics.go): connected
// streams, head revision and the worst lag a proxy reported, snapshot
// builds, spend batches and records applied (and failed groups), and lease
// grants. No metric is labelled by proxy id, key or team.
//
// # Thread safety
//
// Server methods are safe for concurrent use. Snapshot chunks and ring
// entries are immutable once published and shared by reference (a snapshot
// being built only grows, under its own mutex); the ring and snapshot
// cache are guarded by their own mutexes, never held across a Send or a
// store call. The ring wakes streams by closing a channel, so publishing
// never blocks on a stream.
//
// # Failure modes
//
//   - Store unreachable: Run logs once and retries every poll interval;
//     streams keep heartbeating with the last known head; new streams that
//     need the store get Unavailable and retry.
//   - Revisions compacted away under a lagging stream: the stream ends with
//     Aborted and the proxy reconnects, getting a snapshot.
//   - An entity that cannot be converted (malformed key hash, bad JSON) is
//     left out of snapshots and sent as a tombstone in deltas: the proxies
//     fail closed on it, and the error is logged with kind, id and revision.
//   - A dead peer blocks only its own Send; gRPC keepalive on the server
//     bounds how long. A proxy that announced pings (Hello.ping_interval_ms)
//     and has been silent for 5s (WithProxySilence) is dropped sooner
//     (live.go): its stream is cancelled and it leaves the lease membership
//     at once, even while its handler is stuck in such a Send. Until the
//     first answer starts, such proxies get a liveness-only heartbeat every
//     heartbeat interval, so a slow snapshot build does not trip their 3s
//     stall watchdog. A Delta is one transaction and is never split, so a
//     huge transaction can exceed a client's receive limit: proxies should
//     raise MaxCallRecvMsgSize.
//   - Close (or the end of Run's context) ends every stream with
//     Unavailable; call it before grpc.Server.GracefulStop, which otherwise
//     waits for these endless streams.
package syncserver

import syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

var _ syncv1.SyncServiceServer = (*Server)(nil)

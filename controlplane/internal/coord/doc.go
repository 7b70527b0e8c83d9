// Package coord is the deployment-wide bookkeeping the sync server depends
// on for everything that decides how much a proxy may admit: membership
// (how many proxies the deployment has, on every control-plane replica, and
// each one's index, used for rate-limit shares and budget shares) and
// rate-limit lease pools (DESIGN.md, "Money").
//
// # Architecture
//
// Coordinator is the interface; Pool is the lease algorithm both
// implementations run. Memory is the in-process implementation for the
// embedded store (one replica: the deployment is this process).
// pgcoord.Coord keeps members and pools as rows in Postgres, shared by
// every replica (its package doc says how and why no leader is elected).
// coordtest is the conformance suite both pass.
//
// Every proxy process is a member, named by its id and the random instance
// it sends in Hello, indexed in join order. Each window of each limit is a
// pool: when it opens, every member gets its implicit share
// (shares.Of(limit, members, index), what the proxies assume without
// asking), so allowances add up to the limit; asks are granted from what no
// member holds, then from the unused part of members whose use has been
// still for Settle, which is free only once its holder confirms it enforces
// the lowered allowance (Pool, "Two-phase reclaim"). A member that leaves keeps what it used in rpm/tpm
// windows and frees its parallel slots; one that joins holds 0 in windows
// already open and asks.
//
// # Thread safety
//
// Coordinators are safe for concurrent use. Deliver is called without the
// coordinator's locks held.
//
// # Failure modes
//
// Request never blocks on the network and never fails: a proxy whose report
// is lost reports again when its use changes (and all of it after a
// reconnection). Join fails when the store does; the sync server then ends
// the stream and the proxy reconnects.
package coord

package coord

import (
	"context"
	"time"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// Session is one proxy's sync stream on this replica. Member names the
// proxy process deployment-wide (its id and the random instance it sends in
// Hello): it is stable across reconnections to any replica, so a proxy that
// fails over keeps its index and its allowances. ID is unique per stream.
//
// Members are indexed in the order they joined (ties by name), as a single
// control plane always did: the first proxy holds the remainder of an
// uneven division, and a newcomer does not shift the others.
type Session struct {
	Member string
	ID     string
}

// Deliver sends a grant to one stream of this replica (best effort: a
// stream that is gone ignores it). It must not block for long and must not
// call back into the Coordinator.
type Deliver func(session string, g *syncv1.LeaseGrant)

// Coordinator is the deployment-wide bookkeeping of proxies (how many, each
// one's index) and of rate-limit lease pools. The sync server depends on
// nothing else for what decides how much a proxy may admit.
//
// Contracts (coordtest checks them on every implementation):
//   - Join makes the session's member a member of the deployment and, once
//     done, delivers to every session of every member of this replica whose
//     count or index changed (and to the joining session) a grant with the
//     count, the index (rank in join order among all members; a member
//     that reconnects to another replica keeps its rank) and the
//     member's allowance in every open window. Members on other replicas
//     get theirs from their own replica.
//   - Leave ends a session; when it was the member's only session on this
//     replica and no other replica took the member over, the member leaves:
//     what it used in rpm/tpm windows stays allocated, its parallel slots
//     are freed, and every remaining member learns the new count.
//   - Request records a session's use of its limits and answers its asks.
//     Within one window the allowances of all members add up to at most the
//     limit, whichever replica each member is connected to. A want is
//     granted from what no member holds, then from the unused part (allowance
//     minus reported use) of members whose use has been still for Settle (or
//     that never used the window and have been members for Settle) and whose
//     replica is alive; a grant counts as a change of its holder's use (it is
//     about to be used), so it is not reclaimed within Settle; each member
//     whose allowance changed receives it, with a seq that rises with every
//     change of that member's allowance in the window. What is reclaimed
//     stays held (Inspector.Held) until its holder reports the lowered
//     allowance and its seq (LeaseUse.allowance, allowance_seq); only then
//     is it free, minus what the report shows the holder used beyond the
//     lowered allowance, which stays the holder's. So the allowances a
//     proxy may still be admitting against, plus the units granted to
//     others, never add up to more than the limit.
//     Grants are asynchronous (Deliver), Request never blocks on the network.
//   - A replica that stops (or crashes) loses nothing the deployment
//     granted: a member that reconnects to another replica receives the
//     allowances it held.
type Coordinator interface {
	Join(ctx context.Context, s Session) error
	Leave(ctx context.Context, s Session)
	Request(ctx context.Context, s Session, r *syncv1.LeaseRequest)
	// Pools is how many windows this replica knows to be open (metrics).
	Pools() int
	// Close stops background work. It does not make this replica's members
	// leave: a stopping replica's proxies fail over to another replica
	// keeping their place (they expire after MemberTTL if they do not).
	Close() error
}

// Settle is how long a member's reported use must have been still (or,
// never reported, the window open and the member joined) before its unused
// share may be reclaimed: two proxy report intervals, so a busy proxy's
// share is never taken on a stale report.
const Settle = 400 * time.Millisecond

// MaxScope bounds a scope name; longer ones are ignored.
const MaxScope = 1024

// Inspector reads a pool's allocations (tests and diagnostics): member →
// allowance, empty when the pool is not open.
type Inspector interface {
	Allocations(ctx context.Context, scope string, window int64) (map[string]int64, error)
	// Held is member → what the pool holds for it: its allowance plus
	// what was reclaimed from it and not yet confirmed (Alloc.Transit).
	Held(ctx context.Context, scope string, window int64) (map[string]int64, error)
}

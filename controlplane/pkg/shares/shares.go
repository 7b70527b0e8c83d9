// Package shares is the split of a limit among the proxies of a
// deployment, which both planes must compute alike: the control plane when
// it opens a window (controlplane/internal/coord) and every proxy for its
// implicit share (dataplane/internal/limits).
package shares

// Of is the share of limit held by the proxy at index among n: limit / n,
// the remainder going one unit each to the lowest indexes, so the shares add
// up to limit. With n ≤ 1 it is the whole limit.
func Of(limit, n, index int64) int64 {
	if n <= 1 {
		return limit
	}
	s := limit / n
	if index < limit%n {
		s++
	}
	return s
}

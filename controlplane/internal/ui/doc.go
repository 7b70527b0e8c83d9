// Package ui serves the admin UI: a static single-page application embedded
// in the control-plane binary and served at /ui, with no build step and no
// request to anything but the control plane itself.
//
// # Architecture
//
// The page is plain HTML, CSS and ES modules (assets/), plus uPlot for the
// spend charts, vendored unmodified under assets/vendor/uplot with its
// version and digests in VERSION. The browser never talks to the management
// API directly: it calls /ui/api/<path>, which this package forwards
// in-process to the grpc-gateway handler with the session's credential in
// Authorization. Every decision therefore stays with the API and
// authz.Decide; the UI only hides what the caller could not do anyway.
//
// # Sessions
//
// Sign-in (POST /ui/session) checks the credential (the master key or a
// user's own virtual key) with api.Server.Identify and sets one cookie:
// HttpOnly, SameSite=Strict, Path=/ui, Secure when the request came over TLS
// (directly or, per X-Forwarded-Proto, through a TLS terminator).
// Its value is the credential, a random session id and an expiry sealed
// with AES-256-GCM under a key derived (HKDF-SHA256) from the master key, so
// any control-plane replica with the same master key accepts it and scripts
// on the page cannot read it.
//
// Sign-out records the session id in the store (store.SessionRevocations:
// a Postgres table shared by every replica) before it answers, then clears
// the cookie; if the store cannot record it, the answer is 503 and the
// cookie stays. Every replica keeps the unexpired revoked ids in memory and
// reads the ones recorded since its last read every 250ms (Handler.Run), so
// a sign-out is refused everywhere within about 250ms plus one query, and
// no request waits for a query (choice: a poll with a cursor on an indexed
// column rather than a query per request or the revision feed, which is
// for synced entities). A replica refuses sessions with 503 until its
// first read succeeds (after a restart it cannot know which were signed
// out) and whenever its last successful read is more than 5s old (the
// store unreachable from it while other replicas may record sign-outs).
// Revocations are kept until the session would have expired, then pruned
// by whichever replica gets there. Changing the master key ends every
// session.
//
// # CSRF and content security
//
// Cookies are SameSite=Strict; in addition every state-changing /ui/api call
// and sign-out must carry X-Tollgate-CSRF with the session's token (an HMAC
// of the session id, handed to the page by GET /ui/session), and sign-in
// must carry X-Tollgate-CSRF at all, which a cross-site form cannot send.
// Requests whose Origin or Sec-Fetch-Site name another site are refused.
// Every response carries a Content-Security-Policy without inline script or
// style (default-src 'self'; frame-ancestors 'none'), nosniff and
// no-referrer; API and session answers are not cached.
//
// # Failure modes
//
// A missing, expired, revoked or tampered cookie is 401 in the API's error
// envelope (503 while the sign-out list cannot be read, see Sessions); the page then shows the sign-in form. A credential that stops
// working (blocked, expired or deleted key) fails on the next API call with
// the API's own 401.
package ui

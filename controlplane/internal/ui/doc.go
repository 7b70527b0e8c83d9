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
// any control-plane replica with the same master key accepts it, scripts on
// the page cannot read it, and nothing about it is stored server-side.
// Sign-out revokes the session id in this process (until the session would
// have expired anyway) and clears the cookie; a copy of the cookie taken
// before sign-out stays valid on other replicas until it expires (8 hours).
// Changing the master key ends every session.
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
// envelope; the page then shows the sign-in form. A credential that stops
// working (blocked, expired or deleted key) fails on the next API call with
// the API's own 401.
package ui

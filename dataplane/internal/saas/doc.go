// Package saas serves the team endpoints of the SaaS team API (SaaS
// LiteLLM's /api/* surface, authenticated with the team's virtual key) on
// every proxy.
//
// # Architecture
//
// Authentication, team status, credits and model-group access are decided
// from the proxy's replica (the team's SaaS part is synced with the team),
// so a suspended, paused or credit-less team is refused within the sync
// latency on every proxy, and GET /api/teams/{id}, the balance and the
// credit check are answered locally. Jobs are global: job create, read,
// complete, listings and credit transactions are forwarded to the control
// plane's JobService after the local decision.
//
// An LLM call resolves its model group to the group's models in priority
// order and runs each attempt through the proxy's own OpenAI-compatible
// handler in-process (same key, so every check, budget reservation, rate
// limit, upstream credential and spend record applies). A connection
// error, a 5xx or a timeout moves on to the next model; every attempt is
// recorded on the control plane before the client gets its answer, so a
// completion on another proxy counts it. GroupRouter applies the same
// resolution when a SaaS team's key names one of its groups as the model of
// a plain /chat/completions request.
//
// # Thread safety
//
// Handlers share nothing mutable: each request reads the replica's
// immutable team and key records and writes only its own response.
//
// # Failure modes
//
// Job endpoints need the control plane reachable (503 otherwise); the
// decisions and the read-only team endpoints do not. Errors use SaaS
// LiteLLM's {"detail": "..."} body with its strings.
package saas

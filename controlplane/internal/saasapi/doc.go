// Package saasapi is the control plane's side of the SaaS team API (SaaS
// LiteLLM's /api/* surface): the admin endpoints (organizations, model
// groups, teams, credits) on the REST listener, authenticated with
// X-Admin-Key, and the JobService the proxies call for the global job and
// credit records.
//
// # Architecture
//
// A SaaS team is a store.Team with its SaaS part (status, credits, model
// groups resolved to ordered model names) in Team.SaaS. Every write of that
// part is an ordinary team update, so it reaches every proxy over the sync
// stream within milliseconds and the proxies refuse a suspended, paused or
// credit-less team from memory, on /api/* and /chat/completions alike.
// The team's Models are the union of its groups' models (so its key works on
// /chat/completions for exactly those), and its max_budget follows its
// credits: credits_allocated × the credit rate (default $0.10 per credit,
// Options.CreditRate), enforced by the proxies' leased budgets like any
// team budget.
//
// Jobs, job calls and credit transactions live only in the control plane's
// store. Proxies decide authentication and team status locally and then
// call JobService (sync-token authenticated) to create, read, record calls
// of and complete jobs; JobService builds the JSON body the client gets, so
// every proxy answers alike. Completing a job is one store transaction: the
// job moves to completed or failed exactly once, and a completed job with no
// failed call takes one credit with a transaction row (balance_after).
//
// # Failure modes
//
// Job endpoints need the control plane; decisions (status, credits, model
// access) do not. Bad input is a 4xx {"detail": ...} and changes nothing;
// store failures are a 503 with a generic message (the cause is logged).
package saasapi

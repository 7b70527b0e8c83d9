// Package enforce is the data plane's per-request decision: who is calling,
// may they call this route and model, does the body carry the enforced params,
// is there budget left; all from the synced state in memory.
//
// # Architecture
//
// Authenticate needs only the key and the path; Authorize needs the body,
// which ParseBody reads without encoding/json: it locates the few members the
// decision reads in the raw bytes (see json.go), so the proxy can forward the
// original bytes or rewrite one field in place.
//
// # Thread safety
//
// An Enforcer is safe for concurrent use. Rejections are immutable; the
// package-level ones are shared.
//
// # Failure modes
//
// A key whose team or organization is missing from the state is refused as
// blocked (fail closed). A Settings object whose general_settings cannot be
// decoded enforces only what it could decode.
package enforce

// Package proxy is the data plane's OpenAI-compatible request path: it
// authenticates a virtual key, runs the decision (package enforce) from the
// synced state in memory, and forwards the request to one of the model's
// deployments with the deployment's own credential.
//
// # Architecture
//
// A request is checked in DESIGN.md's order. The header-only checks run
// before the body is read, so an unauthenticated caller cannot make the proxy
// buffer a body. The body is read once, located (not decoded) by
// enforce.ParseBody, and forwarded as the original bytes with at most two
// in-place edits: "model" becomes the upstream model name, and a streaming
// request gets stream_options.include_usage so that usage can be billed. The
// upstream call is an httputil.ReverseProxy with Rewrite: the URL and the
// credential come from the deployment only, and only an allowlist of client
// headers is forwarded.
//
// What differs between providers (the upstream URL, the credential header,
// body edits or a translated body, how usage is read, the client's error
// shape) is behind package provider's seam: each deployment resolves once
// to a provider.Target, whose Plan fills the call's upstream plan. The
// decision, the gate and the spend pipeline never see the provider. One
// pricing function, Cost, prices usage for both the spend record and the
// gate's settlement. Routes whose clients are Anthropic SDKs (/messages)
// get rejections in Anthropic's error shape. GET/DELETE /responses/{id}
// (items.go) reach the deployment that created the response, found in a
// bounded per-proxy map of the ids this proxy relayed. Multipart bodies
// (/audio/transcriptions, multipart.go) are decided from their text fields
// and forwarded with only the model value replaced.
//
// Observability (observe.go, metrics.go): every request gets a request id
// (the client's x-request-id when telemetry.SaneRequestID accepts it, else a
// generated one), echoed in the response, forwarded upstream and put on the
// request's log lines; the provider's own x-request-id reaches the client as
// llm_provider-x-request-id. When tracing is on (telemetry.Tracing), the
// request runs inside a server span whose parent is the client's
// traceparent, and the upstream request carries the span's traceparent;
// when it is off the only cost is one atomic load. Counters are resolved
// once (per route and outcome, and per deployment, route and status class
// in the cached target), so counting never looks up labels.
//
// Usage is read from the response as it passes: from the final usage chunk of
// an SSE stream (hidden from a client that did not ask for it) or from the
// top-level "usage" object of a JSON response, without buffering it.
//
// # Thread safety
//
// The handler is safe for concurrent use. Per-request state lives in one
// call object that is never pooled: the transport may read a request body
// after RoundTrip returns.
//
// # Failure modes
//
// Until the state is ready, LLM routes and /health/readiness answer 503.
// Upstream connection failures are 502, upstream timeouts 504; a stream that
// breaks after its headers were sent is aborted (the client sees a truncated
// stream, never a fake complete one). Options.OnUsage still fires for every
// request that reached the upstream, with Aborted set.
package proxy

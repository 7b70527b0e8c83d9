// Package provider is the seam between the proxy's request path and the LLM
// providers behind it. The path itself (authenticate, decide, gate,
// upstream, usage, spend record) is the same for every provider; a provider
// only builds the upstream request for a client route (URL, credential
// header, body edits or a translated body) and says how usage is read from
// the answer (Wire), or reads it itself while translating the answer back.
//
// # Architecture
//
// Each provider is a package under provider/ that registers a Factory for
// its litellm_params.model prefixes ("openai", "azure", "anthropic", ...)
// in init. The proxy resolves a deployment to a Target once per published
// deployment object and calls Target.Plan once per request; nothing in the
// decision, the gate or the spend pipeline knows which provider served.
//
// # Thread safety
//
// Factories and Targets are immutable after construction and shared by
// concurrent requests. A Plan belongs to one request.
//
// # Failure modes
//
// A deployment whose configuration a provider cannot use (no api_base where
// one is required, an unparsable URL) resolves to an error: its requests
// are refused with a 500 and logged, never sent somewhere else. A route a
// provider does not serve is refused with a 400 before any upstream call.
package provider

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// Usage is what one request used, as the upstream reported it (or, for
// per-unit routes, as the request determined it). The proxy prices it with
// the deployment's prices (see Cost in package proxy).
type Usage struct {
	// PromptTokens counts every input token, cached ones included.
	PromptTokens     int64
	CompletionTokens int64
	TotalTokens      int64
	// CacheCreationTokens and CacheReadTokens are the parts of
	// PromptTokens written to and read from a prompt cache (Anthropic's
	// cache_creation_input_tokens and cache_read_input_tokens, OpenAI's
	// cached_tokens), priced at their own rates when the model has them.
	CacheCreationTokens int64
	CacheReadTokens     int64
	// Per-unit routes: images generated, audio milliseconds transcribed,
	// characters synthesized, rerank queries.
	Images      int64
	AudioMillis int64
	Characters  int64
	Queries     int64
}

// Wire names the shape of an answer's usage.
type Wire uint8

const (
	// WireOpenAI: a top-level usage {prompt_tokens, completion_tokens,
	// total_tokens}; streamed, in the final chunk (stream_options).
	WireOpenAI Wire = iota
	// WireResponses: the Responses API's usage {input_tokens,
	// output_tokens, input_tokens_details.cached_tokens}; streamed, in the
	// response.completed event's response.
	WireResponses
	// WireAnthropic: usage {input_tokens, output_tokens,
	// cache_creation_input_tokens, cache_read_input_tokens}; streamed, in
	// message_start (input) and message_delta (output, cumulative).
	WireAnthropic
	// WireNone: the answer costs nothing by tokens (count_tokens,
	// moderations, GET /responses/{id}) or is priced per unit from the
	// request; a 2xx is billed with the usage the plan set.
	WireNone
)

// Plan is one request's upstream plan. The proxy fills the inputs; Target.Plan
// fills the outputs. Everything upstream-facing comes from the deployment's
// configuration, never from the request.
type Plan struct {
	// Inputs.
	Route  enforce.Route
	Raw    []byte        // the client's body as read
	Body   *enforce.Body // located members of Raw (nil for bodiless routes)
	Header http.Header   // the client's request headers (read only)
	// Credential is the deployment's resolved api_key ("" for none).
	Credential string
	// Suffix is appended to the route's URL (GET /responses/{id}: "/{id}").
	Suffix string

	// Outputs.
	URL *url.URL
	// AuthHeader is the canonical header name that carries Credential
	// ("Authorization" gets the Bearer scheme).
	AuthHeader string
	// Extra are headers to set upstream (after the client's allowlisted
	// ones), e.g. anthropic-version. At most len(Extra) pairs.
	Extra  [4][2]string
	NExtra int
	// Model is the upstream model as a JSON string to put in the body's
	// "model" member; nil keeps the client's.
	Model []byte
	// IncludeUsage asks a streamed OpenAI-wire request for its usage chunk
	// (stream_options.include_usage), hidden from a client that did not
	// ask.
	IncludeUsage bool
	// NewBody replaces the body entirely (a translation); nil forwards Raw
	// with the Model edit.
	NewBody     []byte
	ContentType string // "" : application/json
	// Wire is how the proxy reads usage from the answer when Translate is
	// nil.
	Wire Wire
	// Usage is usage known from the request itself (per-unit routes),
	// billed on a 2xx when the answer reports none.
	Usage Usage
	// Translate, when set, wraps a 2xx answer's body: it converts the
	// upstream's format to the client's and records usage in u as it goes.
	// stream reports a text/event-stream answer.
	Translate func(body io.ReadCloser, stream bool, u *Usage, known *bool) io.ReadCloser
	// TranslateError, when set, rewrites a non-2xx answer's body into the
	// client's error shape.
	TranslateError func(status int, body []byte) []byte
}

// SetExtra adds an upstream header.
func (p *Plan) SetExtra(name, value string) {
	if p.NExtra < len(p.Extra) {
		p.Extra[p.NExtra] = [2]string{name, value}
		p.NExtra++
	}
}

// Target is one deployment as its provider serves it.
type Target interface {
	// Plan fills the outputs of p for p.Route, or returns ErrUnsupported
	// for a route the provider does not serve, or another rejection for a
	// request it cannot translate (a 400; nothing is called).
	Plan(p *Plan) *enforce.Rejection
	// UpstreamModel is the model name the upstream knows.
	UpstreamModel() string
}

// Factory resolves a deployment to a Target. It is called once per
// published deployment object.
type Factory func(d *state.Model) (Target, error)

var (
	mu        sync.RWMutex
	factories = map[string]Factory{}
	fallback  Factory
)

// Register names the Factory for a litellm_params.model prefix (the part
// before the first "/"). Providers call it from init.
func Register(prefix string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	factories[prefix] = f
}

// RegisterDefault names the Factory for models without a registered
// prefix (an OpenAI-compatible upstream at the configured api_base).
func RegisterDefault(f Factory) {
	mu.Lock()
	defer mu.Unlock()
	fallback = f
}

// Resolve returns the Target for a deployment.
func Resolve(d *state.Model) (Target, error) {
	p, _, _ := strings.Cut(d.UpstreamModel, "/")
	mu.RLock()
	f, ok := factories[p]
	if !ok {
		f = fallback
	}
	mu.RUnlock()
	if f == nil {
		return nil, errNoProvider
	}
	return f(d)
}

type constError string

func (e constError) Error() string { return string(e) }

const errNoProvider = constError("no provider registered for this model")

// ErrUnsupported is what Target.Plan returns for a route its provider does
// not serve. The proxy then tries the model's other deployments (a model
// name may be served by several providers) and, when none serves the
// route, answers with Unsupported.
var ErrUnsupported = enforce.New(enforce.BadRequest, http.StatusBadRequest, enforce.TypeInvalid,
	"model does not support this route", "model")

// Unsupported is the refusal of a route that no deployment of the model
// serves.
func Unsupported(route enforce.Route, model string) *enforce.Rejection {
	if len(model) > 128 {
		model = model[:128] + "..."
	}
	return enforce.New(enforce.BadRequest, http.StatusBadRequest, enforce.TypeInvalid,
		"model="+model+" does not support "+route.Path()+" (its provider does not serve this route)", "model")
}

// ParseBase parses an api_base: http or https with a host; query and
// fragment dropped, trailing slashes trimmed.
func ParseBase(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimRight(raw, "/"))
	if err != nil {
		return nil, err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, constError("api_base must be an http(s) URL with a host")
	}
	u.RawQuery, u.Fragment, u.RawPath = "", "", ""
	return u, nil
}

// Join returns base with path appended (a copy).
func Join(base *url.URL, path string) *url.URL {
	u := *base
	u.Path = base.Path + path
	return &u
}

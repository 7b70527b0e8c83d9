// Package openai is the provider for OpenAI and OpenAI-compatible upstreams
// (litellm_params.model "openai/...", "hosted_vllm/...", "groq/...", and any
// model without a known prefix at a configured api_base): the client's
// request goes to <api_base><route> with the deployment's key as a bearer
// token, the body untouched but for the model name.
package openai

import (
	"net/url"
	"strings"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// Bases are the OpenAI-compatible prefixes with their default api_base
// ("" : api_base is required). The prefix is stripped from the model name
// sent upstream.
var Bases = map[string]string{
	"openai":                 "https://api.openai.com/v1",
	"text-completion-openai": "https://api.openai.com/v1",
	"custom_openai":          "",
	"openai_like":            "",
	"hosted_vllm":            "",
	"vllm":                   "",
	"litellm_proxy":          "",
	"lm_studio":              "",
	"groq":                   "https://api.groq.com/openai/v1",
	"together_ai":            "https://api.together.xyz/v1",
	"deepseek":               "https://api.deepseek.com/v1",
	"mistral":                "https://api.mistral.ai/v1",
	"fireworks_ai":           "https://api.fireworks.ai/inference/v1",
	"openrouter":             "https://openrouter.ai/api/v1",
	"xai":                    "https://api.x.ai/v1",
	"deepinfra":              "https://api.deepinfra.com/v1/openai",
	"perplexity":             "https://api.perplexity.ai",
}

func init() {
	for p := range Bases {
		provider.Register(p, New)
	}
	provider.RegisterDefault(New)
}

// Target is an OpenAI-compatible deployment.
type Target struct {
	urls   [enforce.NumRoutes]*url.URL
	model  string
	quoted []byte
}

// ModelName strips a known provider prefix: "openai/gpt-4o-mini" ->
// "gpt-4o-mini", "hosted_vllm/meta-llama/Llama-3" -> "meta-llama/Llama-3".
// A name without a known prefix is sent as configured.
func ModelName(m string) string {
	if p, rest, ok := strings.Cut(m, "/"); ok {
		if _, known := Bases[p]; known {
			return rest
		}
	}
	return m
}

// New resolves a deployment. A configured api_base gets the OpenAI path
// appended with /v1 unless it already ends in a version segment
// ("http://vllm:8000" and "http://vllm:8000/v1" both reach
// http://vllm:8000/v1/chat/completions); a provider's default base is
// complete as it is.
func New(d *state.Model) (provider.Target, error) {
	raw, exact := d.APIBase, false
	if raw == "" {
		p, _, _ := strings.Cut(d.UpstreamModel, "/")
		raw, exact = Bases[p], true
		if raw == "" {
			return nil, errNoBase
		}
	}
	u, err := provider.ParseBase(raw)
	if err != nil {
		return nil, err
	}
	if !exact && !EndsWithVersion(u.Path) {
		u.Path += "/v1"
	}
	name := ModelName(d.UpstreamModel)
	t := &Target{model: name, quoted: enforce.AppendString(nil, name)}
	for r := enforce.Route(1); int(r) < enforce.NumRoutes; r++ {
		path := r.Path()
		if r == enforce.RouteResponseItem {
			path = enforce.RouteResponses.Path()
		}
		t.urls[r] = provider.Join(u, path)
	}
	return t, nil
}

type constError string

func (e constError) Error() string { return string(e) }

const errNoBase = constError("api_base is required for this provider")

// URL is the upstream URL of a route (for tests and tools).
func (t *Target) URL(r enforce.Route) *url.URL { return t.urls[r] }

func (t *Target) UpstreamModel() string { return t.model }

func (t *Target) Plan(p *provider.Plan) *enforce.Rejection {
	if !provider.OpenAIRoute(p) {
		return provider.ErrUnsupported
	}
	p.URL = t.urls[p.Route]
	if p.Suffix != "" {
		p.URL = provider.Join(p.URL, p.Suffix)
	}
	p.AuthHeader = "Authorization"
	if p.Body != nil && (p.Body.Model != t.model || p.Body.Alias != "") {
		p.Model = t.quoted
	}
	return nil
}

// EndsWithVersion reports whether path ends in /v<digits>.
func EndsWithVersion(path string) bool {
	i := strings.LastIndexByte(path, '/')
	seg := path[i+1:]
	if len(seg) < 2 || seg[0] != 'v' {
		return false
	}
	for _, c := range seg[1:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

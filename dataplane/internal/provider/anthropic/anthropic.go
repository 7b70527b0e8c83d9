// Package anthropic is the provider for Anthropic's Messages API
// (litellm_params.model "anthropic/<model>"): /messages and
// /messages/count_tokens pass through natively (the body untouched but for
// the model name; streamed events unchanged), and OpenAI /chat/completions
// requests are translated to Messages and the answers back (translate.go),
// so an OpenAI client can call a Claude model by its public name.
//
// The deployment's key goes upstream as x-api-key with anthropic-version
// (the client's, else 2023-06-01); the client's anthropic-beta is passed on.
package anthropic

import (
	"net/url"
	"strings"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// DefaultBase is Anthropic's API.
const DefaultBase = "https://api.anthropic.com"

// DefaultVersion is sent when the client names no anthropic-version.
const DefaultVersion = "2023-06-01"

func init() { provider.Register("anthropic", New) }

// Target is an Anthropic deployment.
type Target struct {
	messages, countTokens *url.URL
	model                 string
	quoted                []byte
}

// New resolves a deployment: api_base (default DefaultBase), with or
// without a trailing /v1.
func New(d *state.Model) (provider.Target, error) {
	raw := d.APIBase
	if raw == "" {
		raw = DefaultBase
	}
	u, err := provider.ParseBase(raw)
	if err != nil {
		return nil, err
	}
	if !strings.HasSuffix(u.Path, "/v1") {
		u.Path += "/v1"
	}
	_, name, _ := strings.Cut(d.UpstreamModel, "/")
	return &Target{
		messages:    provider.Join(u, "/messages"),
		countTokens: provider.Join(u, "/messages/count_tokens"),
		model:       name,
		quoted:      enforce.AppendString(nil, name),
	}, nil
}

func (t *Target) UpstreamModel() string { return t.model }

func (t *Target) Plan(p *provider.Plan) *enforce.Rejection {
	switch p.Route {
	case enforce.RouteMessages:
		p.URL, p.Wire = t.messages, provider.WireAnthropic
	case enforce.RouteCountTokens:
		p.URL, p.Wire = t.countTokens, provider.WireNone
	case enforce.RouteChat:
		return t.planChat(p)
	default:
		return provider.ErrUnsupported
	}
	t.headers(p)
	if p.Body != nil && (p.Body.Model != t.model || p.Body.Alias != "") {
		p.Model = t.quoted
	}
	return nil
}

// headers sets the credential and the Anthropic headers.
func (t *Target) headers(p *provider.Plan) {
	p.AuthHeader = "X-Api-Key"
	version := DefaultVersion
	if v := p.Header["Anthropic-Version"]; len(v) > 0 && saneHeader(v[0]) {
		version = v[0]
	}
	p.SetExtra("Anthropic-Version", version)
	if v := p.Header["Anthropic-Beta"]; len(v) > 0 && saneHeader(v[0]) {
		p.SetExtra("Anthropic-Beta", strings.Join(v, ","))
	}
}

// saneHeader accepts short printable header values.
func saneHeader(v string) bool {
	if v == "" || len(v) > 512 {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

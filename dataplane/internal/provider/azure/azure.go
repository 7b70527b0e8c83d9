// Package azure is the provider for Azure OpenAI deployments
// (litellm_params.model "azure/<deployment>" with api_base, api_version
// and api_key). Requests go to Azure's deployment URLs,
//
//	<api_base>/openai/deployments/<deployment>/<route>?api-version=<v>
//
// for chat, completions, embeddings, images and audio, and to
// <api_base>/openai/responses?api-version=<v> for the Responses API (the
// deployment named in the body's model). The key goes upstream as api-key.
// The bodies and answers are OpenAI's, so usage is read as for openai/.
package azure

import (
	"net/url"
	"strings"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// DefaultVersion is the api-version used when the deployment names none
// (one that has the Responses API).
const DefaultVersion = "2025-04-01-preview"

func init() { provider.Register("azure", New) }

// Target is an Azure OpenAI deployment.
type Target struct {
	urls       [enforce.NumRoutes]*url.URL
	deployment string
	quoted     []byte
}

type constError string

func (e constError) Error() string { return string(e) }

// New resolves a deployment; api_base is required.
func New(d *state.Model) (provider.Target, error) {
	if d.APIBase == "" {
		return nil, constError("azure deployments need api_base")
	}
	u, err := provider.ParseBase(d.APIBase)
	if err != nil {
		return nil, err
	}
	// An api_base given with /openai (as some SDKs want it) is the same.
	u.Path = strings.TrimSuffix(u.Path, "/openai")
	_, dep, _ := strings.Cut(d.UpstreamModel, "/")
	if dep == "" {
		return nil, constError("azure/<deployment> names no deployment")
	}
	v := d.APIVersion
	if v == "" {
		v = DefaultVersion
	}
	q := url.Values{"api-version": {v}}.Encode()
	t := &Target{deployment: dep, quoted: enforce.AppendString(nil, dep)}
	depPath := "/openai/deployments/" + dep // url.URL escapes Path when it is sent
	for _, r := range []enforce.Route{enforce.RouteChat, enforce.RouteCompletions, enforce.RouteEmbeddings,
		enforce.RouteImages, enforce.RouteSpeech, enforce.RouteTranscriptions} {
		ru := provider.Join(u, depPath+r.Path())
		ru.RawQuery = q
		t.urls[r] = ru
	}
	for _, r := range []enforce.Route{enforce.RouteResponses, enforce.RouteResponseItem} {
		ru := provider.Join(u, "/openai/responses")
		ru.RawQuery = q
		t.urls[r] = ru
	}
	return t, nil
}

func (t *Target) UpstreamModel() string { return t.deployment }

func (t *Target) Plan(p *provider.Plan) *enforce.Rejection {
	if t.urls[p.Route] == nil || !provider.OpenAIRoute(p) {
		return provider.ErrUnsupported
	}
	p.URL = t.urls[p.Route]
	if p.Suffix != "" {
		p.URL = provider.Join(p.URL, p.Suffix)
	}
	p.AuthHeader = "Api-Key"
	if p.Body != nil && (p.Body.Model != t.deployment || p.Body.Alias != "") {
		p.Model = t.quoted
	}
	return nil
}

package anthropic

import (
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
)

// planChat translates an OpenAI chat request (not yet: refused).
func (t *Target) planChat(p *provider.Plan) *enforce.Rejection {
	m := ""
	if p.Body != nil {
		m = p.Body.Model
	}
	return provider.Unsupported(p.Route, m)
}

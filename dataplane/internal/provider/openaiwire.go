package provider

import (
	"unicode/utf8"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
)

// OpenAIRoute fills the parts of a plan shared by providers that speak the
// OpenAI API on a route (openai/, OpenAI-compatible bases, azure/): the
// usage wire, stream_options for streamed chat and completions, and the
// per-unit usage known from the request. It reports whether the OpenAI API
// has the route.
func OpenAIRoute(p *Plan) bool {
	b := p.Body
	switch p.Route {
	case enforce.RouteChat, enforce.RouteCompletions:
		p.Wire = WireOpenAI
		p.IncludeUsage = b != nil && b.Stream
	case enforce.RouteEmbeddings:
		p.Wire = WireOpenAI
	case enforce.RouteResponses:
		p.Wire = WireResponses
	case enforce.RouteResponseItem, enforce.RouteModerations:
		p.Wire = WireNone
	case enforce.RouteImages:
		// gpt-image-1 reports token usage in the Responses shape; DALL·E
		// reports none and is billed per image (n, default 1).
		p.Wire = WireResponses
		p.Usage.Images = 1
		if b != nil {
			if s, ok := b.Lookup("n"); ok {
				if n, ok := enforce.ParseInt(b.Raw(s)); ok && n > 0 {
					p.Usage.Images = n
				}
			}
		}
	case enforce.RouteSpeech:
		p.Wire = WireNone
		if b != nil {
			if s, ok := b.Lookup("input"); ok {
				if in, ok := enforce.StringValue(b.Raw(s)); ok {
					p.Usage.Characters = int64(utf8.RuneCountInString(in))
				}
			}
		}
	case enforce.RouteTranscriptions:
		// {"type":"tokens",...} or {"type":"duration","seconds":n}.
		p.Wire = WireResponses
	case enforce.RouteRerank:
		p.Wire = WireNone
		p.Usage.Queries = 1
	default:
		return false
	}
	return true
}

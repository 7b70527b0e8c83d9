package proxy

import (
	"bytes"
	"io"
	"net/http"
	"strconv"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"

	// The providers register themselves (package provider's seam).
	_ "github.com/tollgate-gw/tollgate/dataplane/internal/provider/anthropic"
	_ "github.com/tollgate-gw/tollgate/dataplane/internal/provider/azure"
	_ "github.com/tollgate-gw/tollgate/dataplane/internal/provider/openai"
)

// maxErrorBody bounds an upstream error body read whole for translation.
const maxErrorBody = 64 << 10

// translateResponse installs the provider's translation of the answer: the
// body of a 2xx (usage is recorded by the translator), or an error body in
// the client's shape. It reports whether it took the response over.
func (h *handler) translateResponse(resp *http.Response, c *call) bool {
	ok := resp.StatusCode >= 200 && resp.StatusCode < 300
	switch {
	case ok && c.pl.Translate != nil:
		stream := isEventStream(resp.Header.Get("Content-Type"))
		resp.Body = c.pl.Translate(&countingBody{src: resp.Body, c: c}, stream, &c.usage, &c.usageKnown)
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
		if stream {
			resp.Header["Content-Type"] = []string{"text/event-stream"}
		} else {
			resp.Header["Content-Type"] = jsonCT
		}
		return true
	case !ok && c.pl.TranslateError != nil:
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		c.respBytes += int64(len(b))
		if err != nil {
			b = nil
		}
		out := c.pl.TranslateError(resp.StatusCode, b)
		resp.Body = io.NopCloser(bytes.NewReader(out))
		resp.ContentLength = int64(len(out))
		resp.Header["Content-Length"] = []string{strconv.Itoa(len(out))}
		resp.Header["Content-Type"] = jsonCT
		return true
	}
	return false
}

// countingBody counts the upstream bytes a translator reads.
type countingBody struct {
	src io.ReadCloser
	c   *call
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.src.Read(p)
	b.c.respBytes += int64(n)
	return n, err
}

func (b *countingBody) Close() error { return b.src.Close() }

// anthropicRoute reports whether a route's clients expect Anthropic's error
// shape.
func anthropicRoute(r enforce.Route) bool {
	return r == enforce.RouteMessages || r == enforce.RouteCountTokens
}

// anthropicErrorType maps a status to Anthropic's error types (the SDKs
// pick their exception class by status; the type is for humans and logs).
func anthropicErrorType(status int) string {
	switch status {
	case 400, 405, 415:
		return "invalid_request_error"
	case 401:
		return "authentication_error"
	case 403:
		return "permission_error"
	case 404:
		return "not_found_error"
	case 413:
		return "request_too_large"
	case 429:
		return "rate_limit_error"
	case 529, 503:
		return "overloaded_error"
	case 504:
		return "timeout_error"
	}
	return "api_error"
}

// anthropicEnvelope is a rejection in Anthropic's error shape:
// {"type":"error","error":{"type":"...","message":"..."}}.
func anthropicEnvelope(rej *enforce.Rejection) []byte {
	b := make([]byte, 0, 64+len(rej.Message))
	b = append(b, `{"type":"error","error":{"type":`...)
	b = enforce.AppendString(b, anthropicErrorType(rej.Status))
	b = append(b, `,"message":`...)
	b = enforce.AppendString(b, rej.Message)
	return append(b, "}}"...)
}

// unitRoute reports whether a route is billed per unit known from the
// request (Plan.Usage) when the answer reports no usage.
func unitUsage(c *call) {
	u := &c.pl.Usage
	if c.pl.Wire == provider.WireNone {
		c.usageKnown = true
	}
	if u.Images|u.Characters|u.Queries == 0 {
		return
	}
	c.usage.Images, c.usage.Characters, c.usage.Queries = u.Images, u.Characters, u.Queries
	c.usageKnown = true
}

// messagesEndUser makes an Anthropic request's metadata.user_id its end
// user (what "user" is on OpenAI routes), so end-user budgets, blocks and
// spend apply to /messages too.
func messagesEndUser(b *enforce.Body) {
	ms, ok := b.Lookup("metadata")
	if !ok {
		return
	}
	raw := b.Raw(ms)
	if len(raw) == 0 || raw[0] != '{' {
		return
	}
	var m enforce.Object
	if m.Parse(raw) != nil {
		return
	}
	if u, ok := m.Lookup("user_id"); ok && m.Raw(u)[0] == '"' {
		b.User = enforce.Span{Start: ms.Start + u.Start, End: ms.Start + u.End}
	}
}

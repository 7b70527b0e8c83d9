package anthropic

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
)

// The chat translation follows the two APIs' published references:
// OpenAI's chat completions (messages with system/developer, user,
// assistant with tool_calls, and tool roles; content as a string or parts;
// tools and tool_choice; stop; max_tokens / max_completion_tokens) and
// Anthropic's Messages (a top-level system, alternating user/assistant
// messages of content blocks, tool_use and tool_result blocks, a required
// max_tokens, stop_sequences). It is written against the raw bytes
// (enforce.Object, enforce.Array, append-only output) rather than
// encoding/json, to stay within a few microseconds per request and well
// under one per streamed event (BenchmarkTranslate*).
//
// What has no counterpart is dropped: n, logprobs, penalties, seed,
// response_format, parallel_tool_calls. A request max_tokens is required
// by Anthropic; without one, DefaultMaxTokens is sent.

// DefaultMaxTokens is sent when an OpenAI request sets no max_tokens.
const DefaultMaxTokens = 4096

func badRequest(msg, param string) *enforce.Rejection {
	return enforce.New(enforce.BadRequest, http.StatusBadRequest, enforce.TypeInvalid, msg, param)
}

var (
	rejMessages = badRequest("messages must be a non-empty array of message objects", "messages")
	rejContent  = badRequest("unsupported message content for an Anthropic model (text, image_url, tool calls and tool results are translated)", "messages")
)

// planChat translates an OpenAI chat request to a Messages request.
func (t *Target) planChat(p *provider.Plan) *enforce.Rejection {
	body, rej := translateRequest(p.Body, t.quoted)
	if rej != nil {
		return rej
	}
	p.URL, p.Wire, p.NewBody = t.messages, provider.WireAnthropic, body
	t.headers(p)
	includeUsage := p.Body.IncludeUsage
	p.Translate = func(src io.ReadCloser, stream bool, u *provider.Usage, known *bool) io.ReadCloser {
		if stream {
			return NewStreamTranslator(src, u, known, includeUsage)
		}
		return translateWhole(src, u, known)
	}
	p.TranslateError = TranslateError
	return nil
}

// translateRequest builds the Messages body from a located chat body.
func translateRequest(b *enforce.Body, model []byte) ([]byte, *enforce.Rejection) {
	ms, ok := b.Lookup("messages")
	if !ok || !enforce.IsArray(b.Raw(ms)) {
		return nil, rejMessages
	}
	out := make([]byte, 0, b.Size()+256)
	out = append(out, `{"model":`...)
	out = append(out, model...)
	out = append(out, `,"max_tokens":`...)
	mt, ok := b.Lookup("max_tokens")
	if !ok || string(b.Raw(mt)) == "null" {
		mt, ok = b.Lookup("max_completion_tokens")
	}
	if n, isInt := enforce.ParseInt(b.Raw(mt)); ok && isInt && n > 0 {
		out = append(out, b.Raw(mt)...)
	} else {
		out = strconv.AppendInt(out, DefaultMaxTokens, 10)
	}

	// System text goes to the top-level "system"; the rest to "messages",
	// consecutive messages of one role merged (Anthropic alternates roles;
	// tool results are user turns).
	sysStart := len(out)
	out = append(out, `,"system":[`...)
	nsys := 0
	msgs := make([]byte, 0, len(b.Raw(ms))+64) // the blocks are about as long as the messages
	msgs = append(msgs, `,"messages":[`...)
	role := ""
	nblocks := 0
	open := func(r string) {
		if r == role {
			return
		}
		if role != "" {
			msgs = append(msgs, "]}"...)
			msgs = append(msgs, ',')
		}
		role, nblocks = r, 0
		msgs = append(msgs, `{"role":"`...)
		msgs = append(msgs, r...)
		msgs = append(msgs, `","content":[`...)
	}
	block := func() {
		if nblocks > 0 {
			msgs = append(msgs, ',')
		}
		nblocks++
	}
	arr := enforce.NewArray(b.Raw(ms))
	n := 0
	for raw, ok := arr.Next(); ok; raw, ok = arr.Next() {
		n++
		var m enforce.Object
		if len(raw) == 0 || raw[0] != '{' || m.Parse(raw) != nil {
			return nil, rejMessages
		}
		rs, _ := m.Lookup("role")
		content, hasContent := m.Lookup("content")
		switch string(m.Raw(rs)) {
		case `"system"`, `"developer"`:
			if !hasContent {
				continue
			}
			var rej *enforce.Rejection
			out, nsys, rej = appendTextBlocks(out, m.Raw(content), nsys)
			if rej != nil {
				return nil, rej
			}
		case `"user"`:
			open("user")
			var rej *enforce.Rejection
			if msgs, nblocks, rej = appendUserContent(msgs, m.Raw(content), nblocks); rej != nil {
				return nil, rej
			}
		case `"assistant"`:
			open("assistant")
			if hasContent {
				var rej *enforce.Rejection
				if msgs, nblocks, rej = appendUserContent(msgs, m.Raw(content), nblocks); rej != nil {
					return nil, rej
				}
			}
			if tc, ok := m.Lookup("tool_calls"); ok && enforce.IsArray(m.Raw(tc)) {
				calls := enforce.NewArray(m.Raw(tc))
				for c, ok := calls.Next(); ok; c, ok = calls.Next() {
					var call, fn enforce.Object
					if call.Parse(c) != nil {
						return nil, rejContent
					}
					id, _ := call.Lookup("id")
					f, _ := call.Lookup("function")
					if fn.Parse(call.Raw(f)) != nil {
						return nil, rejContent
					}
					name, _ := fn.Lookup("name")
					block()
					msgs = append(msgs, `{"type":"tool_use","id":`...)
					msgs = appendRawString(msgs, call.Raw(id))
					msgs = append(msgs, `,"name":`...)
					msgs = appendRawString(msgs, fn.Raw(name))
					msgs = append(msgs, `,"input":`...)
					args, _ := fn.Lookup("arguments")
					msgs = appendArguments(msgs, fn.Raw(args))
					msgs = append(msgs, '}')
				}
			}
		case `"tool"`, `"function"`:
			open("user")
			id, _ := m.Lookup("tool_call_id")
			block()
			msgs = append(msgs, `{"type":"tool_result","tool_use_id":`...)
			msgs = appendRawString(msgs, m.Raw(id))
			if hasContent {
				msgs = append(msgs, `,"content":[`...)
				var rej *enforce.Rejection
				if msgs, _, rej = appendTextBlocks(msgs, m.Raw(content), 0); rej != nil {
					return nil, rej
				}
				msgs = append(msgs, ']')
			}
			msgs = append(msgs, '}')
		default:
			return nil, badRequest("unsupported message role for an Anthropic model", "messages")
		}
	}
	if arr.Err != nil || n == 0 || role == "" {
		return nil, rejMessages
	}
	msgs = append(msgs, "]}]"...)
	if nsys == 0 {
		out = out[:sysStart]
	} else {
		out = append(out, ']')
	}
	out = append(out, msgs...)

	if s, ok := b.Lookup("stop"); ok {
		switch v := b.Raw(s); {
		case len(v) > 0 && v[0] == '"':
			out = append(out, `,"stop_sequences":[`...)
			out = append(out, v...)
			out = append(out, ']')
		case enforce.IsArray(v):
			out = append(out, `,"stop_sequences":`...)
			out = append(out, v...)
		}
	}
	for _, name := range [...]string{"temperature", "top_p"} {
		if s, ok := b.Lookup(name); ok && string(b.Raw(s)) != "null" {
			out = append(out, ',', '"')
			out = append(out, name...)
			out = append(out, `":`...)
			out = append(out, b.Raw(s)...)
		}
	}
	if b.Stream {
		out = append(out, `,"stream":true`...)
	}
	if s, ok := b.Lookup("tools"); ok && enforce.IsArray(b.Raw(s)) {
		var rej *enforce.Rejection
		if out, rej = appendTools(out, b.Raw(s)); rej != nil {
			return nil, rej
		}
	}
	if s, ok := b.Lookup("tool_choice"); ok {
		out = appendToolChoice(out, b.Raw(s))
	}
	if b.User.Present() && b.Raw(b.User)[0] == '"' {
		out = append(out, `,"metadata":{"user_id":`...)
		out = append(out, b.Raw(b.User)...)
		out = append(out, '}')
	}
	return append(out, '}'), nil
}

// appendRawString appends a raw JSON string value, or "" for anything else.
func appendRawString(dst, raw []byte) []byte {
	if len(raw) >= 2 && raw[0] == '"' {
		return append(dst, raw...)
	}
	return append(dst, `""`...)
}

// appendArguments turns OpenAI's function arguments (a JSON string holding
// JSON) into Anthropic's tool input (an object).
func appendArguments(dst, raw []byte) []byte {
	s, ok := enforce.StringValue(raw)
	if !ok || s == "" {
		return append(dst, "{}"...)
	}
	var o enforce.Object
	if o.Parse([]byte(s)) != nil {
		return append(dst, "{}"...)
	}
	return append(dst, s...)
}

// appendTextBlocks appends text content (a string, or parts of which text
// ones are kept) as text blocks.
func appendTextBlocks(dst, content []byte, n int) ([]byte, int, *enforce.Rejection) {
	if len(content) == 0 || string(content) == "null" {
		return dst, n, nil
	}
	if content[0] == '"' {
		if len(content) == 2 {
			return dst, n, nil
		}
		if n > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"type":"text","text":`...)
		dst = append(dst, content...)
		return append(dst, '}'), n + 1, nil
	}
	if !enforce.IsArray(content) {
		return dst, n, rejContent
	}
	parts := enforce.NewArray(content)
	for raw, ok := parts.Next(); ok; raw, ok = parts.Next() {
		var p enforce.Object
		if p.Parse(raw) != nil {
			return dst, n, rejContent
		}
		if t, _ := p.Lookup("type"); string(p.Raw(t)) == `"text"` {
			dst, n = appendTextPart(dst, &p, n)
		}
	}
	return dst, n, nil
}

// appendTextPart appends a {"type":"text"} part as a text block (empty
// text is dropped: Anthropic refuses empty text blocks).
func appendTextPart(dst []byte, p *enforce.Object, n int) ([]byte, int) {
	tx, _ := p.Lookup("text")
	v := p.Raw(tx)
	if len(v) <= 2 || v[0] != '"' {
		return dst, n
	}
	if n > 0 {
		dst = append(dst, ',')
	}
	dst = append(dst, `{"type":"text","text":`...)
	dst = append(dst, v...)
	return append(dst, '}'), n + 1
}

var base64Marker = []byte(";base64,")

// appendUserContent appends a user or assistant message's content: text
// and images (data: URLs as base64 sources, others as url sources).
func appendUserContent(dst, content []byte, n int) ([]byte, int, *enforce.Rejection) {
	if len(content) == 0 || content[0] != '[' {
		return appendTextBlocks(dst, content, n)
	}
	parts := enforce.NewArray(content)
	for raw, ok := parts.Next(); ok; raw, ok = parts.Next() {
		var p enforce.Object
		if p.Parse(raw) != nil {
			return dst, n, rejContent
		}
		t, _ := p.Lookup("type")
		switch string(p.Raw(t)) {
		case `"text"`:
			dst, n = appendTextPart(dst, &p, n)
		case `"image_url"`:
			iu, _ := p.Lookup("image_url")
			u := p.Raw(iu)
			if len(u) > 0 && u[0] == '{' {
				var o enforce.Object
				if o.Parse(u) != nil {
					return dst, n, rejContent
				}
				s, _ := o.Lookup("url")
				u = o.Raw(s)
			}
			if len(u) < 2 || u[0] != '"' {
				return dst, n, rejContent
			}
			if n > 0 {
				dst = append(dst, ',')
			}
			n++
			if bytes.HasPrefix(u, []byte(`"data:`)) {
				i := bytes.Index(u, base64Marker)
				if i < 0 {
					return dst, n, rejContent
				}
				dst = append(dst, `{"type":"image","source":{"type":"base64","media_type":"`...)
				dst = append(dst, u[6:i]...)
				dst = append(dst, `","data":"`...)
				dst = append(dst, u[i+len(base64Marker):]...)
				dst = append(dst, "}}"...)
			} else {
				dst = append(dst, `{"type":"image","source":{"type":"url","url":`...)
				dst = append(dst, u...)
				dst = append(dst, "}}"...)
			}
		default:
			return dst, n, rejContent
		}
	}
	if parts.Err != nil {
		return dst, n, rejContent
	}
	return dst, n, nil
}

// appendTools translates OpenAI function tools to Anthropic tools.
func appendTools(dst, tools []byte) ([]byte, *enforce.Rejection) {
	dst = append(dst, `,"tools":[`...)
	arr := enforce.NewArray(tools)
	n := 0
	for raw, ok := arr.Next(); ok; raw, ok = arr.Next() {
		var t, f enforce.Object
		if t.Parse(raw) != nil {
			return dst, badRequest("tools must be function tools", "tools")
		}
		fs, ok := t.Lookup("function")
		if !ok || f.Parse(t.Raw(fs)) != nil {
			return dst, badRequest("tools must be function tools", "tools")
		}
		if n > 0 {
			dst = append(dst, ',')
		}
		n++
		name, _ := f.Lookup("name")
		dst = append(dst, `{"name":`...)
		dst = appendRawString(dst, f.Raw(name))
		if d, ok := f.Lookup("description"); ok && f.Raw(d)[0] == '"' {
			dst = append(dst, `,"description":`...)
			dst = append(dst, f.Raw(d)...)
		}
		dst = append(dst, `,"input_schema":`...)
		if ps, ok := f.Lookup("parameters"); ok && f.Raw(ps)[0] == '{' {
			dst = append(dst, f.Raw(ps)...)
		} else {
			dst = append(dst, `{"type":"object","properties":{}}`...)
		}
		dst = append(dst, '}')
	}
	return append(dst, ']'), nil
}

func appendToolChoice(dst, raw []byte) []byte {
	switch string(raw) {
	case `"auto"`:
		return append(dst, `,"tool_choice":{"type":"auto"}`...)
	case `"required"`:
		return append(dst, `,"tool_choice":{"type":"any"}`...)
	case `"none"`:
		return append(dst, `,"tool_choice":{"type":"none"}`...)
	}
	var o, f enforce.Object
	if len(raw) == 0 || raw[0] != '{' || o.Parse(raw) != nil {
		return dst
	}
	fs, ok := o.Lookup("function")
	if !ok || f.Parse(o.Raw(fs)) != nil {
		return dst
	}
	name, _ := f.Lookup("name")
	dst = append(dst, `,"tool_choice":{"type":"tool","name":`...)
	dst = appendRawString(dst, f.Raw(name))
	return append(dst, '}')
}

// finishReason maps Anthropic's stop_reason to OpenAI's finish_reason.
func finishReason(stop []byte) string {
	switch string(stop) {
	case `"max_tokens"`:
		return "length"
	case `"tool_use"`:
		return "tool_calls"
	case `"refusal"`:
		return "content_filter"
	}
	return "stop"
}

// maxWhole bounds a non-streamed answer read whole for translation.
const maxWhole = 32 << 20

// translateWhole converts a Messages answer to a chat completion.
func translateWhole(src io.ReadCloser, u *provider.Usage, known *bool) io.ReadCloser {
	in, err := io.ReadAll(io.LimitReader(src, maxWhole))
	src.Close()
	if err != nil {
		return io.NopCloser(&errReader{err})
	}
	out, ok := TranslateMessage(in, u, time.Now().Unix())
	if !ok {
		return io.NopCloser(&errReader{io.ErrUnexpectedEOF})
	}
	*known = true
	return io.NopCloser(bytes.NewReader(out))
}

type errReader struct{ err error }

func (r *errReader) Read([]byte) (int, error) { return 0, r.err }

// TranslateMessage converts a Messages answer to a chat completion and
// reads its usage into u.
func TranslateMessage(in []byte, u *provider.Usage, created int64) ([]byte, bool) {
	var m enforce.Object
	if m.Parse(in) != nil {
		return nil, false
	}
	id, _ := m.Lookup("id")
	model, _ := m.Lookup("model")
	stop, _ := m.Lookup("stop_reason")
	if us, ok := m.Lookup("usage"); ok {
		provider.ParseUsage(provider.WireAnthropic, m.Raw(us), u)
	}
	out := make([]byte, 0, len(in)+256)
	out = append(out, `{"id":`...)
	out = appendRawString(out, m.Raw(id))
	out = append(out, `,"object":"chat.completion","created":`...)
	out = strconv.AppendInt(out, created, 10)
	out = append(out, `,"model":`...)
	out = appendRawString(out, m.Raw(model))
	out = append(out, `,"choices":[{"index":0,"message":{"role":"assistant","content":`...)
	var text []byte // concatenated text, unescaped when there are several blocks
	ntext := 0
	var tools []byte
	ntools := 0
	if cs, ok := m.Lookup("content"); ok {
		arr := enforce.NewArray(m.Raw(cs))
		for raw, ok := arr.Next(); ok; raw, ok = arr.Next() {
			var c enforce.Object
			if c.Parse(raw) != nil {
				continue
			}
			t, _ := c.Lookup("type")
			switch string(c.Raw(t)) {
			case `"text"`:
				tx, _ := c.Lookup("text")
				s, _ := enforce.StringValue(c.Raw(tx))
				text = append(text, s...)
				ntext++
			case `"tool_use"`:
				if ntools > 0 {
					tools = append(tools, ',')
				}
				tid, _ := c.Lookup("id")
				name, _ := c.Lookup("name")
				input, _ := c.Lookup("input")
				tools = append(tools, `{"id":`...)
				tools = appendRawString(tools, c.Raw(tid))
				tools = append(tools, `,"type":"function","function":{"name":`...)
				tools = appendRawString(tools, c.Raw(name))
				tools = append(tools, `,"arguments":`...)
				tools = enforce.AppendString(tools, string(c.Raw(input)))
				tools = append(tools, "}}"...)
				ntools++
			}
		}
	}
	if ntext == 0 {
		out = append(out, "null"...)
	} else {
		out = enforce.AppendString(out, string(text))
	}
	if ntools > 0 {
		out = append(out, `,"tool_calls":[`...)
		out = append(out, tools...)
		out = append(out, ']')
	}
	out = append(out, `},"finish_reason":"`...)
	out = append(out, finishReason(m.Raw(stop))...)
	out = append(out, `"}],"usage":`...)
	out = appendUsage(out, u)
	return append(out, '}'), true
}

// appendUsage writes usage as OpenAI reports it (cached prompt tokens in
// prompt_tokens_details).
func appendUsage(dst []byte, u *provider.Usage) []byte {
	dst = append(dst, `{"prompt_tokens":`...)
	dst = strconv.AppendInt(dst, u.PromptTokens, 10)
	dst = append(dst, `,"completion_tokens":`...)
	dst = strconv.AppendInt(dst, u.CompletionTokens, 10)
	dst = append(dst, `,"total_tokens":`...)
	dst = strconv.AppendInt(dst, u.PromptTokens+u.CompletionTokens, 10)
	dst = append(dst, `,"prompt_tokens_details":{"cached_tokens":`...)
	dst = strconv.AppendInt(dst, u.CacheReadTokens, 10)
	dst = append(dst, `}}`...)
	return dst
}

// TranslateError converts an Anthropic error body to the OpenAI envelope
// (the status is kept).
func TranslateError(status int, body []byte) []byte {
	msg, typ := "Upstream error", "upstream_error"
	var o, e enforce.Object
	if o.Parse(body) == nil {
		if es, ok := o.Lookup("error"); ok && e.Parse(o.Raw(es)) == nil {
			if s, ok := e.Lookup("message"); ok {
				if v, ok := enforce.StringValue(e.Raw(s)); ok {
					msg = v
				}
			}
			if s, ok := e.Lookup("type"); ok {
				if v, ok := enforce.StringValue(e.Raw(s)); ok {
					typ = v
				}
			}
		}
	}
	return enforce.New(enforce.OK, status, typ, msg, "").Envelope()
}

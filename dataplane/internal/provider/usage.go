package provider

import (
	"bytes"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
)

// ParseUsage reads a raw "usage" object of wire w into u. Members present in
// raw replace what u holds (Anthropic streams report input and output in
// different events). It reports whether raw was a usage object.
func ParseUsage(w Wire, raw []byte, u *Usage) bool {
	if w == WireNone {
		return false
	}
	var o enforce.Object
	if len(raw) == 0 || raw[0] != '{' || o.Parse(raw) != nil {
		return false
	}
	num := func(name string) (int64, bool) {
		s, ok := o.Lookup(name)
		if !ok {
			return 0, false
		}
		return enforce.ParseInt(o.Raw(s))
	}
	switch w {
	case WireResponses:
		in, _ := num("input_tokens")
		out, _ := num("output_tokens")
		u.PromptTokens, u.CompletionTokens = in, out
		if t, ok := num("total_tokens"); ok {
			u.TotalTokens = t
		} else {
			u.TotalTokens = in + out
		}
		u.CacheReadTokens = 0
		if s, ok := o.Lookup("input_tokens_details"); ok {
			u.CacheReadTokens = nested(o.Raw(s), "cached_tokens")
		}
		// Transcriptions (gpt-4o-transcribe) report {"type":"duration","seconds":n}.
		if s, ok := o.Lookup("seconds"); ok {
			u.AudioMillis = seconds(o.Raw(s))
		}
	case WireAnthropic:
		// input_tokens excludes the cached parts; PromptTokens counts all.
		in, inOK := num("input_tokens")
		cc, ccOK := num("cache_creation_input_tokens")
		cr, crOK := num("cache_read_input_tokens")
		if inOK || ccOK || crOK {
			if !inOK {
				in = u.PromptTokens - u.CacheCreationTokens - u.CacheReadTokens
			}
			if !ccOK {
				cc = u.CacheCreationTokens
			}
			if !crOK {
				cr = u.CacheReadTokens
			}
			u.PromptTokens, u.CacheCreationTokens, u.CacheReadTokens = in+cc+cr, cc, cr
		}
		if out, ok := num("output_tokens"); ok {
			u.CompletionTokens = out
		}
		u.TotalTokens = u.PromptTokens + u.CompletionTokens
	default:
		u.PromptTokens, _ = num("prompt_tokens")
		u.CompletionTokens, _ = num("completion_tokens")
		if t, ok := num("total_tokens"); ok {
			u.TotalTokens = t
		} else {
			u.TotalTokens = u.PromptTokens + u.CompletionTokens
		}
		u.CacheReadTokens = 0
		if s, ok := o.Lookup("prompt_tokens_details"); ok {
			u.CacheReadTokens = nested(o.Raw(s), "cached_tokens")
		}
		if u.CacheReadTokens > u.PromptTokens {
			u.CacheReadTokens = u.PromptTokens
		}
	}
	return true
}

// nested reads an integer member of a raw object (0 when absent).
func nested(raw []byte, name string) int64 {
	var o enforce.Object
	if len(raw) == 0 || raw[0] != '{' || o.Parse(raw) != nil {
		return 0
	}
	s, ok := o.Lookup(name)
	if !ok {
		return 0
	}
	n, _ := enforce.ParseInt(o.Raw(s))
	return n
}

// seconds reads a JSON number of seconds as milliseconds, rounded up.
func seconds(raw []byte) int64 {
	var whole, frac, scale int64 = 0, 0, 1
	i := 0
	for ; i < len(raw) && raw[i] >= '0' && raw[i] <= '9'; i++ {
		whole = whole*10 + int64(raw[i]-'0')
		if whole > 1<<40 {
			return 0
		}
	}
	if i < len(raw) && raw[i] == '.' {
		for i++; i < len(raw) && raw[i] >= '0' && raw[i] <= '9' && scale < 1_000_000; i++ {
			frac = frac*10 + int64(raw[i]-'0')
			scale *= 10
		}
	}
	return whole*1000 + (frac*1000+scale-1)/scale
}

// Event is what EventUsage found in one SSE event.
type Event struct {
	// Found: the event carried usage (merged into the Usage).
	Found bool
	// UsageOnly: an OpenAI usage chunk with "choices": [] (hideable).
	UsageOnly bool
	// ID is the response id an event names (Responses: response.created;
	// Anthropic: message_start), nil when none.
	ID []byte
}

var (
	usageKey      = []byte(`"usage"`)
	responseKey   = []byte(`"response"`)
	messageStart  = []byte(`"message_start"`)
	responseEvent = []byte(`"response.`)
)

// EventUsage reads usage from one SSE event's data (the JSON after
// "data:") of wire w into u.
func EventUsage(w Wire, data []byte, u *Usage) (ev Event) {
	switch w {
	case WireOpenAI:
		if !bytes.Contains(data, usageKey) {
			return ev
		}
		var o enforce.Object
		if o.Parse(data) != nil {
			return ev
		}
		s, ok := o.Lookup("usage")
		if !ok || !ParseUsage(w, o.Raw(s), u) {
			return ev
		}
		ev.Found = true
		if id, ok := o.Lookup("id"); ok { // chatcmpl-...: the spend log's request_id
			ev.ID = o.Raw(id)
		}
		ch, ok := o.Lookup("choices")
		ev.UsageOnly = ok && isEmptyArray(o.Raw(ch))
	case WireResponses:
		// response.created / in_progress / completed / incomplete /
		// failed carry the whole response; only the terminal ones have
		// usage.
		if !bytes.Contains(data, responseEvent) || !bytes.Contains(data, responseKey) {
			return ev
		}
		var o enforce.Object
		if o.Parse(data) != nil {
			return ev
		}
		s, ok := o.Lookup("response")
		if !ok {
			return ev
		}
		var r enforce.Object
		if raw := o.Raw(s); len(raw) == 0 || raw[0] != '{' || r.Parse(raw) != nil {
			return ev
		}
		if id, ok := r.Lookup("id"); ok {
			ev.ID = r.Raw(id)
		}
		if us, ok := r.Lookup("usage"); ok {
			ev.Found = ParseUsage(w, r.Raw(us), u)
		}
	case WireAnthropic:
		if !bytes.Contains(data, usageKey) {
			return ev
		}
		var o enforce.Object
		if o.Parse(data) != nil {
			return ev
		}
		if bytes.Contains(data, messageStart) {
			if s, ok := o.Lookup("message"); ok {
				var m enforce.Object
				if raw := o.Raw(s); len(raw) > 0 && raw[0] == '{' && m.Parse(raw) == nil {
					if id, ok := m.Lookup("id"); ok {
						ev.ID = m.Raw(id)
					}
					if us, ok := m.Lookup("usage"); ok {
						ev.Found = ParseUsage(w, m.Raw(us), u)
					}
					return ev
				}
			}
		}
		if s, ok := o.Lookup("usage"); ok {
			ev.Found = ParseUsage(w, o.Raw(s), u)
		}
	}
	return ev
}

func isEmptyArray(b []byte) bool {
	b = bytes.TrimSpace(b)
	if len(b) < 2 || b[0] != '[' || b[len(b)-1] != ']' {
		return false
	}
	return len(bytes.TrimSpace(b[1:len(b)-1])) == 0
}

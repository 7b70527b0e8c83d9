package enforce

import "bytes"

// Body is what the decision reads of an LLM request body, located in the raw
// bytes so that the proxy can forward them untouched or rewrite one field.
type Body struct {
	Object
	// Model is the requested public model name.
	Model string
	// ModelValue is the raw "model" value (with its quotes).
	ModelValue Span
	// Stream is true when "stream" is the literal true.
	Stream bool
	// StreamOptions is the raw "stream_options" value; empty when absent.
	StreamOptions Span
	// IncludeUsage is true when stream_options.include_usage is the literal
	// true: the client asked for the usage chunk itself.
	IncludeUsage bool
	// IncludeUsageValue is the raw stream_options.include_usage value; empty
	// when absent.
	IncludeUsageValue Span
	// User is the raw "user" value (the end user); empty when absent.
	User Span
	// Alias is the model name the client sent when it was a team model
	// alias (Authorize then set Model to the model it stands for); "" when
	// not. The upstream body's model is then always rewritten.
	Alias string
}

// ParseBody reads raw, an LLM request body, into b. It rejects what is not one
// JSON object, a missing or non-string model, and duplicated fields that
// Tollgate reads or rewrites: with two "model" members the upstream could
// see another model than the one authorized.
func ParseBody(raw []byte, b *Body) *Rejection {
	// Field by field: clearing the inline member array would cost more
	// than the rest of the parse of a small body.
	b.Model, b.ModelValue, b.Stream, b.StreamOptions = "", Span{}, false, Span{}
	b.IncludeUsage, b.IncludeUsageValue, b.User, b.Alias = false, Span{}, Span{}, ""
	if err := b.Object.Parse(raw); err != nil {
		if err == errNotObject {
			return rejNotObject
		}
		return rejBadJSON
	}
	var seenModel, seenStream, seenOpts, seenUser bool
	for i := 0; i < b.n; i++ {
		m := b.at(i)
		v := Span{int(m.vs), int(m.ve)}
		switch string(b.key(m)) {
		case "model":
			if seenModel {
				return rejDuplicate("model")
			}
			seenModel = true
			b.ModelValue = v
		case "stream":
			if seenStream {
				return rejDuplicate("stream")
			}
			seenStream = true
			b.Stream = string(raw[v.Start:v.End]) == "true"
		case "stream_options":
			if seenOpts {
				return rejDuplicate("stream_options")
			}
			seenOpts = true
			b.StreamOptions = v
		case "user":
			if seenUser {
				return rejDuplicate("user")
			}
			seenUser = true
			b.User = v
		}
	}
	if !seenModel {
		return rejMissingModel
	}
	model, ok := StringValue(raw[b.ModelValue.Start:b.ModelValue.End])
	if !ok || model == "" {
		return rejModelNotString
	}
	b.Model = model
	if b.StreamOptions.Present() {
		opts := raw[b.StreamOptions.Start:b.StreamOptions.End]
		switch {
		case opts[0] == '{':
			var o Object
			if o.Parse(opts) != nil {
				return rejBadJSON // unreachable: validated above
			}
			// A duplicate here would let the client and the upstream
			// disagree on whether the usage chunk was asked for.
			count := 0
			for i := 0; i < o.n; i++ {
				if o.keyIs(o.at(i), "include_usage") {
					count++
				}
			}
			if count > 1 {
				return rejDuplicate("stream_options.include_usage")
			}
			if s, ok := o.Lookup("include_usage"); ok {
				b.IncludeUsageValue = Span{b.StreamOptions.Start + s.Start, b.StreamOptions.Start + s.End}
				b.IncludeUsage = bytes.Equal(raw[b.IncludeUsageValue.Start:b.IncludeUsageValue.End], []byte("true"))
			}
		case string(opts) == "null":
		default:
			return rejStreamOptions
		}
	}
	return nil
}

// EndUser decodes the "user" member when it is a string ("" otherwise).
func (b *Body) EndUser() string {
	if !b.User.Present() {
		return ""
	}
	s, _ := StringValue(b.raw[b.User.Start:b.User.End])
	return s
}

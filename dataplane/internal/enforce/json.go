package enforce

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"math/bits"
)

// The request decision reads a handful of top-level fields of a body that is
// mostly chat messages. encoding/json into a struct was ~60% of a 5 µs
// decision, so this file locates members in the raw bytes instead: one
// validating pass that records where each top-level member's key and value
// are, and skips everything else with SIMD-backed byte searches.

// ErrSyntax reports bytes that are not one well-formed JSON object.
var ErrSyntax = errors.New("invalid JSON")

// errNotObject reports well-formed-looking input whose top level is not an
// object.
var errNotObject = errors.New("JSON body must be an object")

// maxDepth bounds nesting; the skip is recursive.
const maxDepth = 256

// Span is a half-open byte range [Start, End) of a raw document. The zero
// Span is empty and means absent.
type Span struct{ Start, End int }

// Present reports whether the span covers anything.
func (s Span) Present() bool { return s.End > s.Start }

type member struct {
	ks, ke, vs, ve int32 // key content (without quotes), value
	esc            bool  // key contains a backslash escape
}

// inlineMembers top-level members fit without allocating; chat bodies have
// fewer than a dozen.
const inlineMembers = 24

// Object is a JSON object's top-level members located in its raw bytes. The
// zero value is empty; Parse fills it. It keeps a reference to the parsed
// bytes, which must not change while the Object is used.
type Object struct {
	raw    []byte
	n      int
	inline [inlineMembers]member
	extra  []member
}

// Parse validates that b is exactly one JSON object (surrounding whitespace
// allowed) and records its top-level members.
func (o *Object) Parse(b []byte) error {
	o.raw, o.n, o.extra = b, 0, o.extra[:0]
	if len(b) >= math.MaxInt32 {
		return ErrSyntax
	}
	i := skipWS(b, 0)
	if i >= len(b) {
		return ErrSyntax
	}
	if b[i] != '{' {
		// Tell "not an object" apart from garbage for a better message.
		if _, err := skipValue(b, i, 0); err == nil {
			return errNotObject
		}
		return ErrSyntax
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		i++
	} else {
		for {
			if i >= len(b) || b[i] != '"' {
				return ErrSyntax
			}
			ks := i + 1
			ke, esc, err := scanString(b, ks)
			if err != nil {
				return err
			}
			i = skipWS(b, ke+1)
			if i >= len(b) || b[i] != ':' {
				return ErrSyntax
			}
			vs := skipWS(b, i+1)
			ve, err := skipValue(b, vs, 1)
			if err != nil {
				return err
			}
			o.add(member{int32(ks), int32(ke), int32(vs), int32(ve), esc})
			i = skipWS(b, ve)
			if i >= len(b) {
				return ErrSyntax
			}
			if b[i] == ',' {
				i = skipWS(b, i+1)
				continue
			}
			if b[i] == '}' {
				i++
				break
			}
			return ErrSyntax
		}
	}
	if skipWS(b, i) != len(b) {
		return ErrSyntax
	}
	return nil
}

func (o *Object) add(m member) {
	if o.n < inlineMembers {
		o.inline[o.n] = m
	} else {
		o.extra = append(o.extra, m)
	}
	o.n++
}

func (o *Object) at(i int) *member {
	if i < inlineMembers {
		return &o.inline[i]
	}
	return &o.extra[i-inlineMembers]
}

// Len is the number of top-level members (duplicates counted).
func (o *Object) Len() int { return o.n }

// keyIs reports whether member m's key equals name, decoding escapes (a
// rare, allocating path) when the key has any.
func (o *Object) keyIs(m *member, name string) bool {
	k := o.raw[m.ks:m.ke]
	if !m.esc {
		return string(k) == name
	}
	return unescapeKey(o.raw[m.ks-1:m.ke+1]) == name
}

// key returns member m's key; it allocates only for escaped keys.
func (o *Object) key(m *member) (k []byte) {
	if !m.esc {
		return o.raw[m.ks:m.ke]
	}
	return []byte(unescapeKey(o.raw[m.ks-1 : m.ke+1]))
}

func unescapeKey(quoted []byte) string {
	var s string
	if json.Unmarshal(quoted, &s) != nil {
		return "\x00invalid" // cannot equal a real name
	}
	return s
}

// Lookup returns the raw value of the last member named name (the member a
// last-wins parser like Python's or Go's would see).
func (o *Object) Lookup(name string) (Span, bool) {
	for i := o.n - 1; i >= 0; i-- {
		m := o.at(i)
		if o.keyIs(m, name) {
			return Span{int(m.vs), int(m.ve)}, true
		}
	}
	return Span{}, false
}

// Raw returns the bytes of s in the parsed document.
func (o *Object) Raw(s Span) []byte { return o.raw[s.Start:s.End] }

// Size is the length of the parsed raw bytes.
func (o *Object) Size() int { return len(o.raw) }

// End is the offset just after the last member's value: where a new member
// can be inserted as ","+member. It is 0 when the object has no member.
func (o *Object) End() int {
	if o.n == 0 {
		return 0
	}
	return int(o.at(o.n - 1).ve)
}

// HasPath reports whether the dotted path names a member: "user" a top-level
// member, "metadata.generation_name" a member of the object in the top-level
// member "metadata". A JSON null counts as present, as in LiteLLM's
// `param in request_body`.
func (o *Object) HasPath(path string) bool {
	name, rest, nested := cut(path)
	v, ok := o.Lookup(name)
	if !ok {
		return false
	}
	if !nested {
		return true
	}
	raw := o.raw[v.Start:v.End]
	if len(raw) == 0 || raw[0] != '{' {
		return false
	}
	var sub Object
	if sub.Parse(raw) != nil {
		return false
	}
	return sub.HasPath(rest)
}

func cut(path string) (head, rest string, ok bool) {
	for i := 0; i < len(path); i++ {
		if path[i] == '.' {
			return path[:i], path[i+1:], true
		}
	}
	return path, "", false
}

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// scanString scans string content starting just after the opening quote and
// returns the index of the closing quote. Control characters inside strings
// are not rejected here: every upstream parser rejects them, so they cannot
// make Tollgate and the upstream disagree about the structure.
func scanString(b []byte, i int) (end int, esc bool, err error) {
	// Keys and most values are short: eight bytes at a time (SWAR) beats
	// two IndexByte calls until the string proves long.
	for lim := min(i+64, len(b)); i+8 <= lim; {
		x := binary.LittleEndian.Uint64(b[i:])
		m := hasZeroByte(x^quotes) | hasZeroByte(x^backslashes)
		if m == 0 {
			i += 8
			continue
		}
		i += bits.TrailingZeros64(m) >> 3
		if b[i] == '"' {
			return i, esc, nil
		}
		esc = true
		if i, err = skipEscape(b, i+1); err != nil {
			return 0, false, err
		}
	}
	for {
		q := bytes.IndexByte(b[i:], '"')
		if q < 0 {
			return 0, false, ErrSyntax
		}
		bs := bytes.IndexByte(b[i:i+q], '\\')
		if bs < 0 {
			return i + q, esc, nil
		}
		esc = true
		if i, err = skipEscape(b, i+bs+1); err != nil {
			return 0, false, err
		}
	}
}

const (
	lsbs        = 0x0101010101010101
	msbs        = 0x8080808080808080
	quotes      = lsbs * '"'
	backslashes = lsbs * '\\'
)

// hasZeroByte has the high bit set in (at least) the lowest zero byte of x;
// bits above the first zero byte may be spurious, so only the lowest counts.
func hasZeroByte(x uint64) uint64 { return (x - lsbs) &^ x & msbs }

// skipEscape validates the escape whose character is at b[j] and returns
// the offset after it.
func skipEscape(b []byte, j int) (int, error) {
	if j >= len(b) {
		return 0, ErrSyntax
	}
	switch b[j] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return j + 1, nil
	case 'u':
		if j+5 > len(b) {
			return 0, ErrSyntax
		}
		for _, h := range b[j+1 : j+5] {
			if !isHex(h) {
				return 0, ErrSyntax
			}
		}
		return j + 5, nil
	}
	return 0, ErrSyntax
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// skipValue validates the value at b[i:] and returns the offset after it.
func skipValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return 0, ErrSyntax
	}
	switch c := b[i]; c {
	case '"':
		end, _, err := scanString(b, i+1)
		return end + 1, err
	case '{':
		if depth >= maxDepth {
			return 0, ErrSyntax
		}
		i = skipWS(b, i+1)
		if i < len(b) && b[i] == '}' {
			return i + 1, nil
		}
		for {
			if i >= len(b) || b[i] != '"' {
				return 0, ErrSyntax
			}
			end, _, err := scanString(b, i+1)
			if err != nil {
				return 0, err
			}
			i = skipWS(b, end+1)
			if i >= len(b) || b[i] != ':' {
				return 0, ErrSyntax
			}
			if i, err = skipValue(b, skipWS(b, i+1), depth+1); err != nil {
				return 0, err
			}
			i = skipWS(b, i)
			if i >= len(b) {
				return 0, ErrSyntax
			}
			if b[i] == '}' {
				return i + 1, nil
			}
			if b[i] != ',' {
				return 0, ErrSyntax
			}
			i = skipWS(b, i+1)
		}
	case '[':
		if depth >= maxDepth {
			return 0, ErrSyntax
		}
		i = skipWS(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1, nil
		}
		for {
			var err error
			if i, err = skipValue(b, i, depth+1); err != nil {
				return 0, err
			}
			i = skipWS(b, i)
			if i >= len(b) {
				return 0, ErrSyntax
			}
			if b[i] == ']' {
				return i + 1, nil
			}
			if b[i] != ',' {
				return 0, ErrSyntax
			}
			i = skipWS(b, i+1)
		}
	case 't':
		return literal(b, i, "true")
	case 'f':
		return literal(b, i, "false")
	case 'n':
		return literal(b, i, "null")
	default:
		if c == '-' || c >= '0' && c <= '9' {
			return number(b, i)
		}
		return 0, ErrSyntax
	}
}

func literal(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, ErrSyntax
	}
	return i + len(lit), nil
}

// number validates -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func number(b []byte, i int) (int, error) {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i)
	default:
		return 0, ErrSyntax
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return 0, ErrSyntax
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return 0, ErrSyntax
		}
		i = j
	}
	return i, nil
}

func digits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// ParseInt reads a JSON integer value (as token counts are); ok is false for
// anything else, including fractions, exponents and overflow.
func ParseInt(raw []byte) (int64, bool) {
	if len(raw) == 0 || len(raw) > 19 {
		return 0, false
	}
	var n int64
	for _, c := range raw {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// StringValue decodes a raw JSON string value; ok is false when raw is not a
// string. It allocates once (twice for strings with escapes).
func StringValue(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

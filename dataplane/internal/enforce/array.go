package enforce

import "errors"

var errNotArray = errors.New("JSON value is not an array")

// Array iterates the elements of a raw JSON array without decoding them
// (the providers' translations walk message lists with it).
type Array struct {
	raw   []byte
	i     int
	done  bool
	Err   error
	first bool
}

// NewArray starts iterating raw, which must be one JSON array.
func NewArray(raw []byte) Array {
	i := skipWS(raw, 0)
	if i >= len(raw) || raw[i] != '[' {
		return Array{done: true, Err: errNotArray}
	}
	return Array{raw: raw, i: skipWS(raw, i+1), first: true}
}

// IsArray reports whether raw is a JSON array (by its first byte).
func IsArray(raw []byte) bool {
	i := skipWS(raw, 0)
	return i < len(raw) && raw[i] == '['
}

// Next returns the next element's raw bytes; ok is false at the end or on
// a syntax error (Err).
func (a *Array) Next() (elem []byte, ok bool) {
	if a.done {
		return nil, false
	}
	if !a.first {
		if a.i >= len(a.raw) {
			a.done, a.Err = true, ErrSyntax
			return nil, false
		}
		switch a.raw[a.i] {
		case ',':
			a.i = skipWS(a.raw, a.i+1)
		case ']':
			a.done = true
			return nil, false
		default:
			a.done, a.Err = true, ErrSyntax
			return nil, false
		}
	} else if a.i < len(a.raw) && a.raw[a.i] == ']' {
		a.done = true
		return nil, false
	}
	a.first = false
	end, err := skipValue(a.raw, a.i, 1)
	if err != nil {
		a.done, a.Err = true, err
		return nil, false
	}
	elem = a.raw[a.i:end]
	a.i = skipWS(a.raw, end)
	return elem, true
}

package store

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Key decoding is on the path of every snapshot: a million-key snapshot
// decodes a million key documents, and encoding/json spends ~4 µs on each
// (reflection, a string per field). UnmarshalJSON below reads the documents
// the backends actually hold — json.Marshal output, or the same re-spaced
// and re-ordered by Postgres jsonb — with a small hand-written parser, and
// hands everything else to encoding/json. The result, error or not, is
// always the one encoding/json gives (keyjson_test.go checks this
// differentially).

// keyJSON has Key's fields and tags but not its methods: the fallback.
type keyJSON Key

// UnmarshalJSON decodes k like encoding/json would. The fast path takes a
// JSON object of known fields, none null, with ASCII strings without
// escapes and integers without fraction or exponent; the rarer fields
// (per-model limits, previous hashes) are decoded by encoding/json one by
// one. Anything else, or a k whose pointer, slice or map fields are already
// set (encoding/json would reuse them), takes the fallback.
//
// Call it directly where speed matters: json.Unmarshal scans a document
// twice before it calls an UnmarshalJSON method, which costs about as much
// as decoding it the slow way.
func (k *Key) UnmarshalJSON(b []byte) error {
	if k.fastOK() {
		orig := *k
		if fastKey(b, k) {
			return nil
		}
		*k = orig // the fast path only assigned fields
	}
	return json.Unmarshal(b, (*keyJSON)(k))
}

// fastOK reports whether every field the fast path would allocate is still
// nil, so that allocating matches encoding/json (which reuses what is set).
func (k *Key) fastOK() bool {
	return k.Models == nil && k.MaxBudget == nil && k.SoftBudget == nil && k.BudgetResetAt == nil &&
		k.RPMLimit == nil && k.TPMLimit == nil && k.MaxParallelRequests == nil &&
		k.ModelMaxBudget == nil && k.ModelRPMLimit == nil && k.ModelTPMLimit == nil &&
		k.Metadata == nil && k.Permissions == nil && k.Guardrails == nil && k.Tags == nil &&
		k.EnforcedParams == nil && k.AllowedRoutes == nil && k.Expires == nil &&
		k.KeyRotationAt == nil && k.LastRotationAt == nil && k.PreviousHashes == nil
}

// keyJSONFields maps each JSON name of Key's fields (Limits flattened) to
// its index path, for the fields the fast path hands to encoding/json by
// reflection: those without a case in field, such as a field added to Key
// later.
var keyJSONFields = func() map[string]keyField {
	m := map[string]keyField{}
	var walk func(t reflect.Type, prefix []int)
	walk = func(t reflect.Type, prefix []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			idx := append(append([]int(nil), prefix...), i)
			if f.Anonymous && f.Type.Kind() == reflect.Struct {
				walk(f.Type, idx)
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "" && name != "-" && f.IsExported() {
				m[name] = keyField{index: idx}
			}
		}
	}
	walk(reflect.TypeFor[Key](), nil)
	return m
}()

type keyField struct{ index []int }

// fastKey decodes b into k (whose fields fastOK checked) and reports
// whether it could; on false, k may be partly written.
func fastKey(b []byte, k *Key) bool {
	// One string holds every string field (substrings share it): one
	// allocation instead of one per field.
	d := kdec{b: b, s: string(b)}
	d.ws()
	if !d.eat('{') {
		return false
	}
	d.ws()
	if d.eat('}') {
		return d.end()
	}
	for {
		d.ws()
		name, ok := d.str()
		if !ok {
			return false
		}
		d.ws()
		if !d.eat(':') {
			return false
		}
		d.ws()
		if d.i >= len(b) || b[d.i] == 'n' { // null: let encoding/json decide
			return false
		}
		if !d.field(name, k) {
			return false
		}
		d.ws()
		if d.eat(',') {
			continue
		}
		if d.eat('}') {
			return d.end()
		}
		return false
	}
}

// field decodes the value of the named field into k.
func (d *kdec) field(name string, k *Key) (ok bool) {
	switch name {
	case "token_id":
		k.TokenID, ok = d.str()
		return ok
	case "key_hash":
		k.KeyHash, ok = d.str()
		return ok
	case "key_name":
		k.KeyName, ok = d.str()
		return ok
	case "key_alias":
		k.KeyAlias, ok = d.str()
		return ok
	case "user_id":
		k.UserID, ok = d.str()
		return ok
	case "team_id":
		k.TeamID, ok = d.str()
		return ok
	case "organization_id":
		k.OrganizationID, ok = d.str()
		return ok
	case "service_account":
		k.ServiceAccount, ok = d.boolean()
		return ok
	case "budget_id":
		k.BudgetID, ok = d.str()
		return ok
	case "models":
		k.Models, ok = d.strList()
		return ok
	case "max_budget":
		k.MaxBudget, ok = d.intPtr()
		return ok
	case "soft_budget":
		k.SoftBudget, ok = d.intPtr()
		return ok
	case "budget_duration":
		k.BudgetDuration, ok = d.str()
		return ok
	case "budget_reset_at":
		k.BudgetResetAt, ok = d.timePtr()
		return ok
	case "rpm_limit":
		k.RPMLimit, ok = d.intPtr()
		return ok
	case "tpm_limit":
		k.TPMLimit, ok = d.intPtr()
		return ok
	case "max_parallel_requests":
		k.MaxParallelRequests, ok = d.intPtr()
		return ok
	case "model_max_budget":
		return d.std(&k.ModelMaxBudget)
	case "model_rpm_limit":
		return d.std(&k.ModelRPMLimit)
	case "model_tpm_limit":
		return d.std(&k.ModelTPMLimit)
	case "metadata":
		k.Metadata, ok = d.raw()
		return ok
	case "permissions":
		k.Permissions, ok = d.raw()
		return ok
	case "guardrails":
		k.Guardrails, ok = d.strList()
		return ok
	case "tags":
		k.Tags, ok = d.strList()
		return ok
	case "enforced_params":
		k.EnforcedParams, ok = d.strList()
		return ok
	case "allowed_routes":
		k.AllowedRoutes, ok = d.strList()
		return ok
	case "blocked":
		k.Blocked, ok = d.boolean()
		return ok
	case "expires":
		k.Expires, ok = d.timePtr()
		return ok
	case "auto_rotate":
		k.AutoRotate, ok = d.boolean()
		return ok
	case "rotation_interval":
		k.RotationInterval, ok = d.str()
		return ok
	case "key_rotation_at":
		k.KeyRotationAt, ok = d.timePtr()
		return ok
	case "last_rotation_at":
		k.LastRotationAt, ok = d.timePtr()
		return ok
	case "rotation_count":
		k.RotationCount, ok = d.int()
		return ok
	case "previous_hashes":
		return d.std(&k.PreviousHashes)
	case "spend":
		k.Spend, ok = d.int()
		return ok
	case "created_at":
		k.CreatedAt, ok = d.time()
		return ok
	case "updated_at":
		k.UpdatedAt, ok = d.time()
		return ok
	case "created_by":
		k.CreatedBy, ok = d.str()
		return ok
	case "updated_by":
		k.UpdatedBy, ok = d.str()
		return ok
	}
	// A field without a case here (added to Key later): encoding/json,
	// through reflection, into the field if it is still zero (else
	// encoding/json might reuse what it holds). Unknown names, or case
	// variants encoding/json would match to a field: the fallback.
	f, known := keyJSONFields[name]
	if !known {
		return false
	}
	v := reflect.ValueOf(k).Elem().FieldByIndex(f.index)
	return v.IsZero() && d.std(v.Addr().Interface())
}

// kdec is a cursor over a JSON document; s is the same bytes as a string.
type kdec struct {
	b []byte
	s string
	i int
}

func (d *kdec) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *kdec) eat(c byte) bool {
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

// end accepts only trailing whitespace.
func (d *kdec) end() bool {
	d.ws()
	return d.i == len(d.b)
}

// delim reports whether a scalar ended at d.i (what may follow a value).
func (d *kdec) delim() bool {
	if d.i == len(d.b) {
		return true
	}
	switch d.b[d.i] {
	case ',', '}', ']', ' ', '\t', '\n', '\r':
		return true
	}
	return false
}

// plain marks the bytes a fast-path string may hold unescaped: printable
// ASCII but the quote and the backslash.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// PlainLen returns the length of the longest prefix of b made of bytes
// that a JSON string holds as they are and that need no UTF-8 check: ASCII
// from the space up, but the quote and the backslash. That is where a
// string ends or needs a closer look. (Reading 8 bytes at a time measured
// no faster on the short strings of a key.)
func PlainLen(b []byte) int {
	i := 0
	for i < len(b) && plain[b[i]] {
		i++
	}
	return i
}

// quoted returns the bounds of a string of printable ASCII without
// escapes (anything else: false), quotes included.
func (d *kdec) quoted() (start, end int, ok bool) {
	if !d.eat('"') {
		return 0, 0, false
	}
	start = d.i - 1
	i, b := d.i, d.b
	i += PlainLen(b[i:])
	if i == len(b) || b[i] != '"' {
		return 0, 0, false
	}
	d.i = i + 1
	return start, d.i, true
}

func (d *kdec) str() (string, bool) {
	s, e, ok := d.quoted()
	if !ok {
		return "", false
	}
	return d.s[s+1 : e-1], true
}

func (d *kdec) strList() ([]string, bool) {
	if !d.eat('[') {
		return nil, false
	}
	out := []string{} // encoding/json: [] is an empty, non-nil slice
	d.ws()
	if d.eat(']') {
		return out, true
	}
	for {
		d.ws()
		s, ok := d.str()
		if !ok {
			return nil, false
		}
		out = append(out, s)
		d.ws()
		if d.eat(',') {
			continue
		}
		if d.eat(']') {
			return out, true
		}
		return nil, false
	}
}

func (d *kdec) boolean() (bool, bool) {
	switch {
	case len(d.b)-d.i >= 4 && d.s[d.i:d.i+4] == "true":
		d.i += 4
		return true, d.delim()
	case len(d.b)-d.i >= 5 && d.s[d.i:d.i+5] == "false":
		d.i += 5
		return false, d.delim()
	}
	return false, false
}

// int reads an integer literal: -?(0|[1-9][0-9]*) that fits an int64.
func (d *kdec) int() (int64, bool) {
	start := d.i
	d.eat('-')
	digits := d.i
	for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
		d.i++
	}
	if d.i == digits || (d.b[digits] == '0' && d.i-digits > 1) || !d.delim() {
		return 0, false
	}
	v, err := strconv.ParseInt(d.s[start:d.i], 10, 64)
	return v, err == nil
}

func (d *kdec) intPtr() (*int64, bool) {
	v, ok := d.int()
	if !ok {
		return nil, false
	}
	return &v, true
}

// time decodes a timestamp with time.Time's own UnmarshalJSON, as
// encoding/json does.
func (d *kdec) time() (time.Time, bool) {
	var t time.Time
	s, e, ok := d.quoted()
	if !ok {
		return t, false
	}
	return t, t.UnmarshalJSON(d.b[s:e]) == nil
}

func (d *kdec) timePtr() (*time.Time, bool) {
	t, ok := d.time()
	if !ok {
		return nil, false
	}
	return &t, true
}

// value returns the extent of the JSON value at d.i (without the
// whitespace after it) without decoding it. It only finds the end; callers
// validate what they use.
func (d *kdec) value() ([]byte, bool) {
	v, ok := d.scan()
	for len(v) > 0 {
		switch v[len(v)-1] {
		case ' ', '\t', '\n', '\r':
			v = v[:len(v)-1]
			continue
		}
		break
	}
	return v, ok && len(v) > 0
}

func (d *kdec) scan() ([]byte, bool) {
	start := d.i
	depth := 0
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch c {
		case '"':
			d.i++
			for d.i < len(d.b) && d.b[d.i] != '"' {
				if d.b[d.i] == '\\' {
					d.i++
				}
				d.i++
			}
			if d.i >= len(d.b) {
				return nil, false
			}
			d.i++
		case '{', '[':
			depth++
			d.i++
		case '}', ']':
			if depth == 0 {
				return d.b[start:d.i], d.i > start
			}
			depth--
			d.i++
		case ',':
			if depth == 0 {
				return d.b[start:d.i], d.i > start
			}
			d.i++
		default:
			d.i++
		}
		if depth == 0 && (c == '"' || c == '}' || c == ']') {
			return d.b[start:d.i], true
		}
	}
	return d.b[start:d.i], depth == 0 && d.i > start
}

// raw copies a json.RawMessage value (encoding/json keeps its bytes as
// given) after checking it is valid JSON.
func (d *kdec) raw() (json.RawMessage, bool) {
	v, ok := d.value()
	if !ok || !json.Valid(v) {
		return nil, false
	}
	return append(json.RawMessage(nil), v...), true
}

// std decodes a rarer field with encoding/json.
func (d *kdec) std(dst any) bool {
	v, ok := d.value()
	return ok && json.Unmarshal(v, dst) == nil
}

// DecodeJSON is json.Unmarshal(b, v), except that when v has its own
// UnmarshalJSON (a *Key) that method is called directly: json.Unmarshal
// would first validate and rescan b, tripling the cost of a key. Backends
// decode stored documents with it.
func DecodeJSON(b []byte, v any) error {
	if u, ok := v.(json.Unmarshaler); ok {
		return u.UnmarshalJSON(b)
	}
	return json.Unmarshal(b, v)
}

package syncserver

import (
	"encoding/hex"
	"encoding/json"
	"math"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// A million-key snapshot converts a million key documents. Decoding each
// into a store.Key, converting that into syncv1 messages and marshalling
// them cost ~2 µs a key and most of the control plane's share of a cold
// start. keyWire transcodes a stored key document (store.Reader.EachKeyDocs)
// straight into the bytes of its Entity message, without either step.
//
// The fast path reads the documents the backends hold (json.Marshal output
// of a Key, or the same re-spaced and re-ordered by Postgres jsonb) and
// takes only what it can reproduce exactly: known fields, none null or
// repeated, ASCII strings without escapes, integer literals. Anything else
// (per-model limits, previous hashes, an unusual document) goes the old
// way: store.DecodeJSON, keyScratch.fill, proto.Marshal. Either way the
// result is the one the old way gives (keywire_test.go checks this
// differentially), with fields in field-number order as proto.Marshal
// writes them.

// keyWire transcodes key documents; one per goroutine (it keeps scratch
// buffers).
type keyWire struct {
	body  []byte // the Key message being built
	lim   []byte // its Limits message
	hash  [32]byte
	slow  keyScratch
	slowK store.Key
}

// errKeyDecode marks a document that does not decode into a Key at all:
// EachKey would fail on it, so the snapshot build fails too.
type errKeyDecode struct{ err error }

func (e errKeyDecode) Error() string { return "decode key: " + e.err.Error() }
func (e errKeyDecode) Unwrap() error { return e.err }

// appendEntity appends the encoded Entity of doc to dst. A key that cannot
// be converted (a malformed hash) returns dst unchanged and an
// errBadEntity error: it is left out, as the old way did. A document that
// does not decode returns an errKeyDecode.
func (w *keyWire) appendEntity(dst, doc []byte) ([]byte, error) {
	if out, ok := w.fast(dst, doc); ok {
		return out, nil
	}
	return w.slowEntity(dst, doc)
}

// slowEntity is the old way, for any document.
func (w *keyWire) slowEntity(dst, doc []byte) ([]byte, error) {
	w.slowK = store.Key{}
	if err := store.DecodeJSON(doc, &w.slowK); err != nil {
		return dst, errKeyDecode{err}
	}
	e, err := w.slow.fill(&w.slowK)
	if err != nil {
		return dst, err
	}
	out, err := proto.MarshalOptions{}.MarshalAppend(dst, e)
	if err != nil {
		return dst, err
	}
	return out, nil
}

// keyDoc holds what the fast path read from one document: spans of it.
type keyDoc struct {
	tokenID, keyHash, keyAlias, userID, teamID, orgID []byte
	serviceAccount, blocked                           bool
	models, enforcedParams, allowedRoutes, tags       []byte // the JSON arrays, validated
	// Limits: the value, and whether the field was there (nil in a Key).
	maxBudget, softBudget, rpm, tpm, parallel                int64
	hasMaxBudget, hasSoftBudget, hasRPM, hasTPM, hasParallel bool
	budgetDuration                                           []byte
	budgetResetAt, expires                                   int64
	hasBudgetResetAt, hasExpires                             bool
	spend                                                    int64
	metadata                                                 []byte
}

// Field bits, to refuse a repeated field (encoding/json keeps the last
// one; the fast path does not bother).
const (
	fTokenID = 1 << iota
	fKeyHash
	fKeyName
	fKeyAlias
	fUserID
	fTeamID
	fOrgID
	fServiceAccount
	fBudgetID
	fModels
	fMaxBudget
	fSoftBudget
	fBudgetDuration
	fBudgetResetAt
	fRPM
	fTPM
	fParallel
	fMetadata
	fPermissions
	fGuardrails
	fTags
	fEnforcedParams
	fAllowedRoutes
	fBlocked
	fExpires
	fAutoRotate
	fRotationInterval
	fKeyRotationAt
	fLastRotationAt
	fRotationCount
	fSpend
	fModelSpend
	fCreatedAt
	fUpdatedAt
	fCreatedBy
	fUpdatedBy
)

// fast is appendEntity's fast path; false means "take the old way" (dst
// may then hold garbage past its length, never before).
func (w *keyWire) fast(dst, doc []byte) ([]byte, bool) {
	var k keyDoc
	d := jdec{b: doc}
	d.ws()
	if !d.eat('{') {
		return nil, false
	}
	var seen uint64
	d.ws()
	if !d.eat('}') {
		for {
			d.ws()
			name, ok := d.str()
			if !ok {
				return nil, false
			}
			d.ws()
			if !d.eat(':') {
				return nil, false
			}
			d.ws()
			bit, ok := d.field(string(name), &k)
			if !ok || seen&bit != 0 {
				return nil, false
			}
			seen |= bit
			d.ws()
			if d.eat(',') {
				continue
			}
			if d.eat('}') {
				break
			}
			return nil, false
		}
	}
	if !d.end() {
		return nil, false
	}
	if len(k.keyHash) != 64 {
		return nil, false // the old way reports it
	}
	if _, err := hex.Decode(w.hash[:], k.keyHash); err != nil {
		return nil, false
	}
	return w.encode(dst, &k), true
}

// field decodes the named field's value into k and returns its bit; false
// for a name or a value the fast path does not take.
func (d *jdec) field(name string, k *keyDoc) (bit uint64, ok bool) {
	if d.i < len(d.b) && d.b[d.i] == 'n' {
		return 0, false // null
	}
	switch name {
	case "token_id":
		k.tokenID, ok = d.str()
		return fTokenID, ok
	case "key_hash":
		k.keyHash, ok = d.str()
		return fKeyHash, ok
	case "key_name":
		_, ok = d.str()
		return fKeyName, ok
	case "key_alias":
		k.keyAlias, ok = d.str()
		return fKeyAlias, ok
	case "user_id":
		k.userID, ok = d.str()
		return fUserID, ok
	case "team_id":
		k.teamID, ok = d.str()
		return fTeamID, ok
	case "organization_id":
		k.orgID, ok = d.str()
		return fOrgID, ok
	case "service_account":
		k.serviceAccount, ok = d.boolean()
		return fServiceAccount, ok
	case "budget_id":
		_, ok = d.str()
		return fBudgetID, ok
	case "models":
		k.models, ok = d.strList()
		return fModels, ok
	case "max_budget":
		k.maxBudget, ok = d.int()
		k.hasMaxBudget = true
		return fMaxBudget, ok
	case "soft_budget":
		k.softBudget, ok = d.int()
		k.hasSoftBudget = true
		return fSoftBudget, ok
	case "budget_duration":
		k.budgetDuration, ok = d.str()
		return fBudgetDuration, ok
	case "budget_reset_at":
		k.budgetResetAt, ok = d.time()
		k.hasBudgetResetAt = true
		return fBudgetResetAt, ok
	case "rpm_limit":
		k.rpm, ok = d.int()
		k.hasRPM = true
		return fRPM, ok
	case "tpm_limit":
		k.tpm, ok = d.int()
		k.hasTPM = true
		return fTPM, ok
	case "max_parallel_requests":
		k.parallel, ok = d.int()
		k.hasParallel = true
		return fParallel, ok
	case "metadata":
		k.metadata, ok = d.raw()
		return fMetadata, ok
	case "permissions":
		_, ok = d.raw()
		return fPermissions, ok
	case "guardrails":
		_, ok = d.strList()
		return fGuardrails, ok
	case "tags":
		k.tags, ok = d.strList()
		return fTags, ok
	case "enforced_params":
		k.enforcedParams, ok = d.strList()
		return fEnforcedParams, ok
	case "allowed_routes":
		k.allowedRoutes, ok = d.strList()
		return fAllowedRoutes, ok
	case "blocked":
		k.blocked, ok = d.boolean()
		return fBlocked, ok
	case "expires":
		k.expires, ok = d.time()
		k.hasExpires = true
		return fExpires, ok
	case "auto_rotate":
		_, ok = d.boolean()
		return fAutoRotate, ok
	case "rotation_interval":
		_, ok = d.str()
		return fRotationInterval, ok
	case "key_rotation_at":
		_, ok = d.time()
		return fKeyRotationAt, ok
	case "last_rotation_at":
		_, ok = d.time()
		return fLastRotationAt, ok
	case "rotation_count":
		_, ok = d.int()
		return fRotationCount, ok
	case "spend":
		k.spend, ok = d.int()
		return fSpend, ok
	case "model_spend":
		// Sent only for the models of model_max_budget, which the fast
		// path leaves to the old way: checked, not kept.
		return fModelSpend, d.intMap()
	case "created_at":
		_, ok = d.time()
		return fCreatedAt, ok
	case "updated_at":
		_, ok = d.time()
		return fUpdatedAt, ok
	case "created_by":
		_, ok = d.str()
		return fCreatedBy, ok
	case "updated_by":
		_, ok = d.str()
		return fUpdatedBy, ok
	}
	// model_max_budget, model_rpm_limit, model_tpm_limit,
	// previous_hashes, any field added to Key later, unknown names: the
	// old way.
	return 0, false
}

// encode appends the Entity of k (whose hash is in w.hash), as
// keyScratch.fill and proto.Marshal would produce it.
func (w *keyWire) encode(dst []byte, k *keyDoc) []byte {
	lim := w.lim[:0]
	lim = appendLimit(lim, 1, k.maxBudget, k.hasMaxBudget)
	lim = appendLimit(lim, 2, k.softBudget, k.hasSoftBudget)
	lim = appendBytes(lim, 3, k.budgetDuration)
	if k.hasBudgetResetAt {
		lim = appendInt(lim, 4, k.budgetResetAt)
	}
	lim = appendLimit(lim, 5, k.rpm, k.hasRPM)
	lim = appendLimit(lim, 6, k.tpm, k.hasTPM)
	lim = appendLimit(lim, 7, k.parallel, k.hasParallel)
	w.lim = lim

	b := w.body[:0]
	b = appendBytes(b, 1, k.tokenID)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, w.hash[:])
	b = appendBytes(b, 3, k.keyAlias)
	b = appendBytes(b, 4, k.userID)
	b = appendBytes(b, 5, k.teamID)
	b = appendBytes(b, 6, k.orgID)
	if k.serviceAccount {
		b = appendInt(b, 7, 1)
	}
	b = appendStrList(b, 8, k.models)
	b = protowire.AppendTag(b, 9, protowire.BytesType)
	b = protowire.AppendBytes(b, lim)
	b = appendStrList(b, 13, k.enforcedParams)
	b = appendStrList(b, 14, k.allowedRoutes)
	if k.blocked {
		b = appendInt(b, 15, 1)
	}
	if k.hasExpires {
		b = appendInt(b, 16, max(k.expires, 1)) // expiresUnix
	}
	b = appendInt(b, 18, k.spend)
	b = appendStrList(b, 19, k.tags)
	b = appendBytes(b, 20, metadataBytes(k.metadata))
	w.body = b

	dst = appendBytes(dst, 1, []byte(store.KindKey))
	dst = appendBytes(dst, 2, k.tokenID)
	dst = protowire.AppendTag(dst, 10, protowire.BytesType)
	return protowire.AppendBytes(dst, b)
}

// appendLimit appends a Limits field (numbers below 16) with orNone's
// mapping: a missing limit is -1, whose ten varint bytes are a constant.
func appendLimit(b []byte, num protowire.Number, v int64, set bool) []byte {
	if !set {
		return append(append(b, byte(num)<<3|byte(protowire.VarintType)), noLimit[:]...)
	}
	return appendInt(b, num, max(v, 0))
}

// noLimit is the varint of -1.
var noLimit = [10]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}

// metadataBytes is jsonObject for a raw value the fast path read (never
// null: nulls take the old way).
func metadataBytes(raw []byte) []byte {
	return jsonObject(json.RawMessage(raw))
}

// appendInt appends a proto3 integer field, omitted when 0.
func appendInt(b []byte, num protowire.Number, v int64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

// appendBytes appends a proto3 string or bytes field, omitted when empty.
func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// appendStrList appends a repeated string field from a JSON array that
// jdec.strList validated (plain strings, no escapes).
func appendStrList(b []byte, num protowire.Number, arr []byte) []byte {
	for i := 0; i < len(arr); i++ {
		if arr[i] != '"' {
			continue
		}
		j := i + 1
		for arr[j] != '"' {
			j++
		}
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendBytes(b, arr[i+1:j]) // empty strings too, as repeated fields are
		i = j
	}
	return b
}

// jdec is a cursor over a JSON document.
type jdec struct {
	b []byte
	i int
}

func (d *jdec) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *jdec) eat(c byte) bool {
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

func (d *jdec) end() bool {
	d.ws()
	return d.i == len(d.b)
}

// delim reports whether a scalar ended at d.i.
func (d *jdec) delim() bool {
	if d.i == len(d.b) {
		return true
	}
	switch d.b[d.i] {
	case ',', '}', ']', ' ', '\t', '\n', '\r':
		return true
	}
	return false
}

// str returns the contents of a string of plain ASCII (store.PlainLen:
// no escapes, always valid UTF-8).
func (d *jdec) str() ([]byte, bool) {
	if !d.eat('"') {
		return nil, false
	}
	start, b := d.i, d.b
	i := start + store.PlainLen(b[start:])
	if i == len(b) || b[i] != '"' {
		return nil, false
	}
	d.i = i + 1
	return b[start:i], true
}

// strList returns the extent of an array of plain ASCII strings.
func (d *jdec) strList() ([]byte, bool) {
	start := d.i
	if !d.eat('[') {
		return nil, false
	}
	d.ws()
	if d.eat(']') {
		return d.b[start:d.i], true
	}
	for {
		d.ws()
		if _, ok := d.str(); !ok {
			return nil, false
		}
		d.ws()
		if d.eat(',') {
			continue
		}
		if d.eat(']') {
			return d.b[start:d.i], true
		}
		return nil, false
	}
}

func (d *jdec) boolean() (bool, bool) {
	rest := d.b[d.i:]
	switch {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		d.i += 4
		return true, d.delim()
	case len(rest) >= 5 && string(rest[:5]) == "false":
		d.i += 5
		return false, d.delim()
	}
	return false, false
}

// int reads an integer literal -?(0|[1-9][0-9]*) that fits an int64.
func (d *jdec) int() (int64, bool) {
	neg := d.eat('-')
	start := d.i
	var u uint64
	for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
		if d.i-start >= 19 {
			return 0, false // 20 digits or more: never an int64
		}
		u = u*10 + uint64(d.b[d.i]-'0')
		d.i++
	}
	n := d.i - start
	if n == 0 || (d.b[start] == '0' && n > 1) || !d.delim() {
		return 0, false
	}
	if neg {
		if u > 1<<63 {
			return 0, false
		}
		return -int64(u), true
	}
	if u > math.MaxInt64 {
		return 0, false
	}
	return int64(u), true
}

// intMap checks an object of plain ASCII names to integers.
func (d *jdec) intMap() bool {
	if !d.eat('{') {
		return false
	}
	d.ws()
	if d.eat('}') {
		return true
	}
	for {
		d.ws()
		if _, ok := d.str(); !ok {
			return false
		}
		d.ws()
		if !d.eat(':') {
			return false
		}
		d.ws()
		if _, ok := d.int(); !ok {
			return false
		}
		d.ws()
		if d.eat(',') {
			continue
		}
		return d.eat('}')
	}
}

// time reads a timestamp as Unix seconds (time.Time.Unix). The common
// shape, "YYYY-MM-DDTHH:MM:SS[.fraction]Z", is read here; any other goes
// through time.Time's own UnmarshalJSON, as encoding/json does.
func (d *jdec) time() (int64, bool) {
	start := d.i
	s, ok := d.str()
	if !ok {
		return 0, false
	}
	if u, ok := unixRFC3339Z(s); ok {
		return u, true
	}
	var t time.Time
	if err := t.UnmarshalJSON(d.b[start:d.i]); err != nil {
		return 0, false
	}
	return t.Unix(), true
}

// unixRFC3339Z parses "YYYY-MM-DDTHH:MM:SS[.d{1,9}]Z", with every field in
// range, into Unix seconds; false for anything else (which time.Parse may
// or may not accept).
func unixRFC3339Z(s []byte) (int64, bool) {
	if len(s) < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[len(s)-1] != 'Z' {
		return 0, false
	}
	num := func(lo, hi int) (int, bool) {
		v := 0
		for _, c := range s[lo:hi] {
			if c < '0' || c > '9' {
				return 0, false
			}
			v = v*10 + int(c-'0')
		}
		return v, true
	}
	year, ok1 := num(0, 4)
	month, ok2 := num(5, 7)
	day, ok3 := num(8, 10)
	hour, ok4 := num(11, 13)
	minute, ok5 := num(14, 16)
	sec, ok6 := num(17, 19)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) {
		return 0, false
	}
	if frac := s[19 : len(s)-1]; len(frac) > 0 {
		if len(frac) < 2 || len(frac) > 10 || frac[0] != '.' {
			return 0, false
		}
		if _, ok := num(20, len(s)-1); !ok {
			return 0, false
		}
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 59 {
		return 0, false
	}
	return daysFromCivil(year, month, day)*86400 + int64(hour*3600+minute*60+sec), true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil is the number of days from 1970-01-01 to y-m-d in the
// proleptic Gregorian calendar (Howard Hinnant's algorithm).
func daysFromCivil(y, m, d int) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 && y%400 != 0 {
		era--
	}
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return int64(era)*146097 + int64(doe) - 719468
}

// raw returns the extent of the JSON value at d.i, checked with
// json.Valid (as encoding/json checks a json.RawMessage).
func (d *jdec) raw() ([]byte, bool) {
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
		case '{', '[':
			depth++
		case '}', ']':
			depth--
		case ',':
			if depth == 0 {
				return d.rawEnd(start)
			}
		}
		if depth < 0 {
			return d.rawEnd(start)
		}
		d.i++
		if depth == 0 && (c == '"' || c == '}' || c == ']') {
			return d.rawEnd(start)
		}
	}
	return d.rawEnd(start)
}

func (d *jdec) rawEnd(start int) ([]byte, bool) {
	v := d.b[start:d.i]
	for len(v) > 0 {
		switch v[len(v)-1] {
		case ' ', '\t', '\n', '\r':
			v = v[:len(v)-1]
			continue
		}
		break
	}
	if len(v) == 0 || !json.Valid(v) {
		return nil, false
	}
	return v, true
}

package enforce

import (
	"net/http"
	"strconv"
	"unicode/utf8"
)

// Outcome names why a request ended; it is the "outcome" metric label, so
// the set is fixed and small.
type Outcome uint8

// Outcomes of the decision. OK means every check passed.
const (
	OK Outcome = iota
	NotReady
	MissingKey
	MalformedKey
	InvalidKey // unknown; never says whether a key exists
	KeyBlocked
	KeyExpired
	TeamBlocked
	UserBlocked
	OrgBlocked
	RouteForbidden
	ModelForbidden
	ModelUnknown
	MissingParam
	RateLimited // reserved for the rate-limit gate
	BudgetExceeded
	BadRequest
	TooLarge
	UnsupportedMedia
	NotFound
	MethodNotAllowed
	EndUserBlocked
	// Held: the gate refused only because amounts are held (budget in
	// flight or not yet synced, a rate-limit allowance on loan to another
	// proxy) after waiting its bound for them; the limit itself has room.
	Held
	numDecisionOutcomes
)

var outcomeNames = [...]string{
	OK:               "ok",
	NotReady:         "not_ready",
	MissingKey:       "missing_key",
	MalformedKey:     "malformed_key",
	InvalidKey:       "invalid_key",
	KeyBlocked:       "key_blocked",
	KeyExpired:       "key_expired",
	TeamBlocked:      "team_blocked",
	UserBlocked:      "user_blocked",
	OrgBlocked:       "org_blocked",
	RouteForbidden:   "route_forbidden",
	ModelForbidden:   "model_forbidden",
	ModelUnknown:     "model_unknown",
	MissingParam:     "missing_param",
	RateLimited:      "rate_limited",
	BudgetExceeded:   "budget_exceeded",
	BadRequest:       "bad_request",
	TooLarge:         "too_large",
	UnsupportedMedia: "unsupported_media_type",
	NotFound:         "not_found",
	MethodNotAllowed: "method_not_allowed",
	EndUserBlocked:   "end_user_blocked",
	Held:             "held",
}

// NumOutcomes is the number of decision outcomes, for label tables.
const NumOutcomes = int(numDecisionOutcomes)

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "unknown"
}

// Rejection is a refused request: the status and the error envelope the
// client gets. Rejections are immutable; the static ones are shared.
type Rejection struct {
	Outcome Outcome
	Status  int
	Type    string
	Message string
	// Param is the envelope's param; "" encodes as null.
	Param string
	// Header is extra response headers (Retry-After, x-ratelimit-* from the
	// rate-limit gate); nil for the decision's own rejections.
	Header http.Header

	body []byte // prebuilt envelope for static rejections
}

// Envelope is the JSON body:
// {"error":{"message":"...","type":"...","param":...,"code":"<status>"}}.
// Field order and escaping are fixed so that the service-account example from
// the LiteLLM docs comes back byte for byte.
func (r *Rejection) Envelope() []byte {
	if r.body != nil {
		return r.body
	}
	return r.appendEnvelope(make([]byte, 0, 96+len(r.Message)))
}

func (r *Rejection) appendEnvelope(dst []byte) []byte {
	dst = append(dst, `{"error":{"message":`...)
	dst = AppendString(dst, r.Message)
	dst = append(dst, `,"type":`...)
	dst = AppendString(dst, r.Type)
	dst = append(dst, `,"param":`...)
	if r.Param == "" {
		dst = append(dst, "null"...)
	} else {
		dst = AppendString(dst, r.Param)
	}
	dst = append(dst, `,"code":"`...)
	dst = strconv.AppendInt(dst, int64(r.Status), 10)
	return append(dst, `"}}`...)
}

// static builds a shared rejection with its envelope encoded once.
func static(o Outcome, status int, typ, msg, param string) *Rejection {
	r := &Rejection{Outcome: o, Status: status, Type: typ, Message: msg, Param: param}
	r.body = r.appendEnvelope(nil)
	return r
}

// New builds a rejection (for callers outside the decision, such as the
// proxy's transport errors).
func New(o Outcome, status int, typ, msg, param string) *Rejection {
	return &Rejection{Outcome: o, Status: status, Type: typ, Message: msg, Param: param}
}

// AppendString appends s as a JSON string the way Python's json.dumps with
// ensure_ascii=False does: only quote, backslash and control characters are
// escaped (not <, > and & as encoding/json does). Invalid UTF-8 becomes
// U+FFFD so the output is always valid JSON.
func AppendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, "\ufffd"...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// Types follow LiteLLM's ProxyErrorTypes where one exists.
const (
	TypeAuth       = "auth_error"
	TypeBadRequest = "bad_request_error"
	TypeInvalid    = "invalid_request_error"
	TypeBudget     = "budget_exceeded"
	// TypeBudgetHeld: budget remains, but it is held by requests in flight
	// or not yet synced (a retryable 429 with Retry-After; never
	// budget_exceeded).
	TypeBudgetHeld = "budget_held"
	// TypeRateLimitHeld: this proxy's rate-limit allowance is on loan and
	// the grant did not arrive within the wait (retryable).
	TypeRateLimitHeld = "rate_limit_held"
	TypeKeyModel      = "key_model_access_denied"
	TypeTeamModel     = "team_model_access_denied"
	TypeUserModel     = "user_model_access_denied"
	TypeOrgModel      = "org_model_access_denied"
	TypeExpired       = "expired_key"
	TypeNotFound      = "not_found_error"
	TypeUnavailable   = "service_unavailable"
	TypeUpstream      = "upstream_error"
	TypeTimeout       = "timeout_error"
	TypeInternal      = "internal_server_error"
	TypeRateLimit     = "rate_limit_error"
	TypeTooLarge      = "request_too_large"
	TypeUnsupported   = "unsupported_media_type"
	TypeMethodInvalid = "method_not_allowed"
)

// Shared rejections. None carries request data, so none can echo a key.
var (
	RejNotReady = static(NotReady, http.StatusServiceUnavailable, TypeUnavailable,
		"Proxy is not ready: no configuration snapshot loaded yet", "")
	RejMissingKey = static(MissingKey, http.StatusUnauthorized, TypeAuth,
		"Authentication Error, No api key passed in.", "")
	RejMalformedKey = static(MalformedKey, http.StatusUnauthorized, TypeAuth,
		"Authentication Error, Malformed API Key passed in. Ensure Key has `Bearer ` prefix and starts with `sk-`.", "")
	RejInvalidKey = static(InvalidKey, http.StatusUnauthorized, TypeAuth,
		"Authentication Error, Invalid proxy server token passed.", "")
	RejKeyBlocked = static(KeyBlocked, http.StatusUnauthorized, TypeAuth,
		"Authentication Error, Key is blocked. Update via `/key/unblock` if you're admin.", "")
	RejKeyExpired = static(KeyExpired, http.StatusUnauthorized, TypeExpired,
		"Authentication Error - Expired Key.", "")
	RejTeamBlocked = static(TeamBlocked, http.StatusUnauthorized, TypeAuth,
		"Authentication Error, Team is blocked or no longer exists. Update via `/team/unblock` if you're admin.", "")
	// RejTeamSuspended refuses a SaaS team that is suspended, paused or out
	// of credits (SaaS LiteLLM's message, in Tollgate's envelope).
	RejTeamSuspended = static(TeamBlocked, http.StatusForbidden, TypeAuth,
		"Team suspended or insufficient credits", "")
	RejUserBlocked = static(UserBlocked, http.StatusUnauthorized, TypeAuth,
		"Authentication Error, User is blocked.", "")
	RejOrgBlocked = static(OrgBlocked, http.StatusUnauthorized, TypeAuth,
		"Authentication Error, Organization is blocked or no longer exists.", "")
	RejRouteForbidden = static(RouteForbidden, http.StatusUnauthorized, TypeAuth,
		"Authentication Error, Virtual key is not allowed to call this route.", "")
	RejTooLarge = static(TooLarge, http.StatusRequestEntityTooLarge, TypeTooLarge,
		"Request body too large", "")
	RejUnsupportedMedia = static(UnsupportedMedia, http.StatusUnsupportedMediaType, TypeUnsupported,
		"Request body must be uncompressed JSON", "")
	RejNotFound = static(NotFound, http.StatusNotFound, TypeNotFound,
		"Not Found", "")
	RejMethodNotAllowed = static(MethodNotAllowed, http.StatusMethodNotAllowed, TypeMethodInvalid,
		"Method Not Allowed", "")
	RejBodyRead = static(BadRequest, http.StatusBadRequest, TypeInvalid,
		"Could not read the request body", "")

	rejBadJSON = static(BadRequest, http.StatusBadRequest, TypeInvalid,
		"Invalid JSON in request body", "")
	rejNotObject = static(BadRequest, http.StatusBadRequest, TypeInvalid,
		"Request body must be a JSON object", "")
	rejMissingModel = static(BadRequest, http.StatusBadRequest, TypeInvalid,
		"model is a required param", "model")
	rejModelNotString = static(BadRequest, http.StatusBadRequest, TypeInvalid,
		"model must be a non-empty string", "model")
	rejStreamOptions = static(BadRequest, http.StatusBadRequest, TypeInvalid,
		"stream_options must be an object", "stream_options")
)

func rejDuplicate(param string) *Rejection {
	return New(BadRequest, http.StatusBadRequest, TypeInvalid,
		"Duplicate field in request body: "+param, param)
}

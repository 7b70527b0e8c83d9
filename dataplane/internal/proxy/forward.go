package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/telemetry"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// NewTransport is the default upstream transport: many idle connections per
// host (one LLM provider takes most of the traffic) and bounded connection
// setup. Whole-call time is bounded by Options.UpstreamTimeout.
func NewTransport() *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           2048,
		MaxIdleConnsPerHost:    512,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 1 << 20,
		ReadBufferSize:         32 << 10,
		WriteBufferSize:        32 << 10,
	}
}

type callKey struct{}

// call is one LLM request's state, from the decision to the usage hook.
type call struct {
	route     enforce.Route
	method    string
	path      string
	start     time.Time
	principal enforce.Principal
	body      enforce.Body
	dep       *state.Model
	tg        *target
	reqID     string
	key       string // as presented; only ever logged as keys.DisplayName

	// The upstream request.
	pl        provider.Plan
	url       *url.URL
	auth      string // the credential header's value, "" for none
	segs      [5][]byte
	nseg      int
	length    int64
	stream    bool
	hideUsage bool // include_usage was added by Tollgate, not asked for

	// Filled while the response passes.
	clientCtx  context.Context
	upCtx      context.Context
	upStart    time.Time
	status     int
	usage      Usage
	usageKnown bool
	respID     string // the upstream response's id (chatcmpl-..., resp_...): the spend log's request_id; the Responses API's routing
	respBytes  int64  // response bytes read from the upstream
	aborted    bool
	outcome    int
	errOutcome bool
	gateDone   func(Outcome)
	adm        Admission // what the gate sees (inline: no allocation)
	h          *handler  // for Refresh
}

// Refresh implements Refresher: the header and body checks again, from the
// current state, into c.principal (the deployment already chosen stays).
func (c *call) Refresh() *enforce.Rejection {
	if rej := c.h.authenticate(c, c.key); rej != nil {
		return rej
	}
	_, rej := c.h.enf.Authorize(&c.principal, &c.body)
	return rej
}

// Proxy-level outcomes follow the decision's in the metric label table.
const (
	outUpstream4xx = enforce.NumOutcomes + iota
	outUpstream5xx
	outUnreachable
	outTimeout
	outClientClosed
	outAborted
	outMisconfigured
	numOutcomes
)

var proxyOutcomeNames = [...]string{
	outUpstream4xx - enforce.NumOutcomes:   "upstream_4xx",
	outUpstream5xx - enforce.NumOutcomes:   "upstream_5xx",
	outUnreachable - enforce.NumOutcomes:   "upstream_unreachable",
	outTimeout - enforce.NumOutcomes:       "upstream_timeout",
	outClientClosed - enforce.NumOutcomes:  "client_closed",
	outAborted - enforce.NumOutcomes:       "aborted",
	outMisconfigured - enforce.NumOutcomes: "misconfigured",
}

func outcomeName(o int) string {
	if o < enforce.NumOutcomes {
		return enforce.Outcome(o).String()
	}
	return proxyOutcomeNames[o-enforce.NumOutcomes]
}

var rejMisconfigured = enforce.New(enforce.OK, http.StatusInternalServerError, enforce.TypeInternal,
	"The model's deployment has no usable api_base configured", "")

func (h *handler) serveLLM(w http.ResponseWriter, r *http.Request, route enforce.Route, rid string) {
	start := time.Now()
	if r.Method != http.MethodPost {
		w.Header()["Allow"] = allowPOST
		h.reject(w, route, enforce.RejMethodNotAllowed)
		return
	}
	if !h.st.Ready() {
		h.reject(w, route, enforce.RejNotReady)
		return
	}
	c := newCall(route, r.URL.Path, start)
	c.reqID, c.key = rid, presentedKey(r)
	c.pl.Header = r.Header
	if rej := h.authenticate(c, c.key); rej != nil {
		h.reject(w, route, rej)
		c.release()
		return
	}
	authDone := time.Now()
	raw, readRej := readBody(w, r, h.maxBody)
	if readRej != nil {
		h.reject(w, route, readRej)
		c.release()
		return
	}
	bodyStart := time.Now()
	var rej *enforce.Rejection
	if ct := r.Header.Get("Content-Type"); route == enforce.RouteTranscriptions && strings.HasPrefix(ct, "multipart/") {
		rej = h.decideMultipart(c, raw, ct)
	} else {
		rej = h.decide(c, raw)
	}
	if rej != nil {
		if rej == rejMisconfigured {
			h.m.count(route, outMisconfigured)
			noteOutcome(w, outMisconfigured, c.body.Model)
			writeRouteRejection(w, route, rej)
		} else {
			h.reject(w, route, rej)
		}
		c.release()
		return
	}
	h.m.decision.Observe((authDone.Sub(start) + time.Since(bodyStart)).Seconds())

	if h.gate != nil {
		c.h = h
		c.adm = Admission{Route: route, Principal: &c.principal, Body: &c.body, Deployment: c.dep, Header: w.Header(), Refresh: c}
		done, rej := h.gate.Admit(r.Context(), &c.adm)
		if rej != nil {
			h.reject(w, route, rej)
			c.tg.count(route, rej.Status)
			noteOutcome(w, int(rej.Outcome), c.body.Model)
			h.logRequest(r.Context(), c, rej.Status, int(rej.Outcome))
			c.release()
			return
		}
		c.gateDone = done
	}
	h.forward(w, r, c)
}

// Calls are pooled: at ~1.3 KB (the located body members are inline) the
// allocation and the garbage it makes were a third of the decision. A call
// is released only once nothing can reach it any more: after the handler is
// done with it, never after an aborted response, and nothing handed to the
// transport (body segments) points into it.
var calls = sync.Pool{New: func() any { return new(call) }}

func newCall(route enforce.Route, path string, start time.Time) *call {
	c := calls.Get().(*call)
	c.route, c.path, c.start = route, path, start
	return c
}

func (c *call) release() {
	*c = call{} // drops references: a pooled call must not pin a body
	calls.Put(c)
}

// authenticate runs the header-only checks.
func (h *handler) authenticate(c *call, key string) *enforce.Rejection {
	return h.enf.Authenticate(key, c.path, h.now().UnixMilli(), &c.principal)
}

// decide runs the body checks and plans the upstream request: everything
// between "the body has been read" and "call upstream X with body B".
func (h *handler) decide(c *call, raw []byte) *enforce.Rejection {
	if rej := enforce.ParseBody(raw, &c.body); rej != nil {
		return rej
	}
	if c.route == enforce.RouteMessages && !c.body.User.Present() {
		messagesEndUser(&c.body)
	}
	deps, rej := h.enf.Authorize(&c.principal, &c.body)
	if rej != nil {
		return rej
	}
	// Round robin over the deployments, skipping those whose provider
	// does not serve the route (a model name may be served by several
	// providers) or that are misconfigured.
	first := 0
	if len(deps) > 1 {
		first = int(h.rr.Add(1) % uint64(len(deps)))
		if c.route == enforce.RouteResponses {
			first = h.previousResponseDeployment(c, deps, first)
		}
	}
	var last *enforce.Rejection
	hdr := c.pl.Header
	for k := range deps {
		dep := deps[(first+k)%len(deps)]
		tg := h.target(dep)
		if tg.pt == nil {
			h.log.Error("model deployment is misconfigured", "model", dep.ModelName, "deployment", dep.ID, "err", tg.err, "request_id", c.reqID)
			last = rejMisconfigured
			continue
		}
		c.dep, c.tg = dep, tg
		rej := h.planUpstream(c, raw, &c.body)
		if rej != provider.ErrUnsupported {
			return rej
		}
		c.pl = provider.Plan{Header: hdr}
		if last == nil {
			last = provider.Unsupported(c.route, c.body.Model)
		}
	}
	return last
}

// planUpstream asks the deployment's provider for the upstream request and
// lays out its body.
func (h *handler) planUpstream(c *call, raw []byte, b *enforce.Body) *enforce.Rejection {
	pl := &c.pl
	pl.Route, pl.Raw, pl.Body = c.route, raw, b
	pl.Credential = h.credential(c.dep.APIKey)
	if rej := c.tg.pt.Plan(pl); rej != nil {
		return rej
	}
	c.url = pl.URL
	if pl.Credential != "" {
		if pl.AuthHeader == "Authorization" {
			c.auth = "Bearer " + pl.Credential
		} else {
			c.auth = pl.Credential
		}
	}
	c.plan(raw)
	return nil
}

// target is what a deployment resolves to, computed once per published
// deployment object (they are immutable, so the pointer is the key).
type target struct {
	pt     provider.Target // nil: the deployment is misconfigured (err)
	err    error
	counts *modelCounters
}

func (t *target) count(route enforce.Route, status int) {
	if t != nil && t.counts != nil {
		t.counts.count(route, status)
	}
}

// maxTargets bounds the cache; models replaced by config changes leave stale
// entries behind, so it is dropped wholesale when full.
const maxTargets = 4096

func (h *handler) target(m *state.Model) *target {
	if v, ok := h.targets.Load(m); ok {
		return v.(*target)
	}
	pt, err := provider.Resolve(m)
	t := &target{pt: pt, err: err, counts: h.m.modelCounters(m.ModelName)}
	if h.nTargets.Add(1) > maxTargets {
		h.targets.Clear()
		h.nTargets.Store(1)
	}
	h.targets.Store(m, t)
	return t
}

// plan lays out the upstream body as segments of the original bytes and at
// most two replacements (the provider's model name, stream_options), so
// nothing is copied; or the provider's translated body.
func (c *call) plan(raw []byte) {
	b := c.pl.Body
	c.nseg, c.length = 0, 0
	if b == nil || c.pl.NewBody != nil {
		c.stream = b != nil && b.Stream
		c.addSeg(c.pl.NewBody)
		return
	}
	type edit struct {
		at, end int
		with    []byte
	}
	var edits [2]edit
	n := 0
	// Segments must never point into reused memory (the call is pooled
	// and the transport may read a body after the request is over): the
	// replacements are the target's immutable bytes or constants.
	if c.pl.Model != nil {
		edits[n] = edit{b.ModelValue.Start, b.ModelValue.End, c.pl.Model}
		n++
	}
	c.stream = b.Stream
	if c.pl.IncludeUsage && !b.IncludeUsage {
		c.hideUsage = true
		switch {
		case !b.StreamOptions.Present():
			edits[n] = edit{b.End(), b.End(), addStreamOptions}
		case b.IncludeUsageValue.Present():
			edits[n] = edit{b.IncludeUsageValue.Start, b.IncludeUsageValue.End, litTrue}
		case raw[b.StreamOptions.Start] == 'n': // null
			edits[n] = edit{b.StreamOptions.Start, b.StreamOptions.End, streamOptionsObj}
		default: // an object without include_usage
			at := b.StreamOptions.Start + 1
			with := includeUsageMember
			if !emptyObject(raw[b.StreamOptions.Start:b.StreamOptions.End]) {
				with = includeUsageMemberComma
			}
			edits[n] = edit{at, at, with}
		}
		n++
	}
	if n == 2 && edits[1].at < edits[0].at {
		edits[0], edits[1] = edits[1], edits[0]
	}
	pos := 0
	for _, e := range edits[:n] {
		c.addSeg(raw[pos:e.at])
		c.addSeg(e.with)
		pos = e.end
	}
	c.addSeg(raw[pos:])
}

func (c *call) addSeg(b []byte) {
	if len(b) == 0 {
		return
	}
	c.segs[c.nseg] = b
	c.nseg++
	c.length += int64(len(b))
}

var (
	addStreamOptions        = []byte(`,"stream_options":{"include_usage":true}`)
	streamOptionsObj        = []byte(`{"include_usage":true}`)
	includeUsageMember      = []byte(`"include_usage":true`)
	includeUsageMemberComma = []byte(`"include_usage":true,`)
	litTrue                 = []byte(`true`)
)

func emptyObject(b []byte) bool {
	for _, c := range b[1 : len(b)-1] {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return false
		}
	}
	return true
}

// credential resolves a deployment's api_key: "os.environ/NAME" is read from
// the proxy's environment, anything else is the literal credential.
func (h *handler) credential(ref string) string {
	if name, ok := strings.CutPrefix(ref, "os.environ/"); ok {
		return h.getenv(name)
	}
	return ref
}

// forward calls the upstream and relays the response.
func (h *handler) forward(w http.ResponseWriter, r *http.Request, c *call) {
	c.clientCtx = r.Context()
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	c.upCtx = ctx
	out := r.WithContext(context.WithValue(ctx, callKey{}, c))
	// The body is already read; Rewrite installs the planned one. A zero
	// ContentLength keeps ReverseProxy from wrapping the spent body.
	out.Body, out.ContentLength = http.NoBody, 0
	defer func() {
		v := recover()
		if v != nil {
			c.aborted = true
		} else {
			// The response goes out before the bookkeeping (spend
			// record, gate, metrics): a body with a length would
			// otherwise wait in the server's buffer until the handler
			// returns. (SSE and chunked bodies are flushed already.)
			_ = http.NewResponseController(w).Flush()
		}
		h.finish(c)
		noteOutcome(w, c.outcome, c.body.Model)
		h.logRequest(r.Context(), c, c.status, c.outcome)
		if v != nil {
			panic(v)
		}
		c.release()
	}()
	h.rp.ServeHTTP(w, out)
}

// forwardedHeaders are the client headers an upstream may see. Everything
// else, credentials above all (Authorization, api-key, x-api-key, cookies)
// and headers that choose an account (OpenAI-Organization, OpenAI-Project),
// stays here.
var forwardedHeaders = map[string]bool{
	"Accept":          true,
	"Accept-Language": true,
	"User-Agent":      true,
	"X-Request-Id":    true,
	"Traceparent":     true,
	"Tracestate":      true,
}

func (h *handler) rewrite(pr *httputil.ProxyRequest) {
	c := pr.In.Context().Value(callKey{}).(*call)
	u := *c.url
	pr.Out.URL = &u
	pr.Out.Host = ""
	hdr := pr.Out.Header
	for k := range hdr {
		if !forwardedHeaders[k] {
			delete(hdr, k)
		}
	}
	if c.pl.ContentType != "" {
		hdr["Content-Type"] = []string{c.pl.ContentType}
	} else if c.nseg > 0 {
		hdr["Content-Type"] = jsonCT
	}
	if c.auth != "" {
		hdr[c.pl.AuthHeader] = []string{c.auth}
	}
	for _, kv := range c.pl.Extra[:c.pl.NExtra] {
		hdr[kv[0]] = []string{kv[1]}
	}
	if telemetry.Tracing() {
		injectTrace(pr.In.Context(), hdr)
	}
	pr.Out.Body, pr.Out.GetBody = c.upstreamBody()
	pr.Out.ContentLength = c.length
	c.upStart = time.Now()
}

// joinMax is the largest planned body joined into one slice.
const joinMax = 64 << 10

// upstreamBody is the planned body for the transport. A body the transport
// knows is in memory (a bytes.Reader) goes out in the same write as the
// headers; any other reader gets the headers flushed first, a second write
// and often a second wake-up of the upstream for every call. So a body of
// one segment is handed over as it is, and a small body of several segments
// (a replaced model name, an added stream_options) is joined: a copy of a
// few kilobytes costs less than the syscall it saves.
func (c *call) upstreamBody() (io.ReadCloser, func() (io.ReadCloser, error)) {
	var one []byte
	switch {
	case c.nseg == 0:
		return http.NoBody, func() (io.ReadCloser, error) { return http.NoBody, nil }
	case c.nseg == 1:
		one = c.segs[0]
	case c.length <= joinMax:
		one = make([]byte, 0, c.length)
		for _, s := range c.segs[:c.nseg] {
			one = append(one, s...)
		}
	default:
		segs, nseg := c.segs, c.nseg
		return newSegReader(segs, nseg), func() (io.ReadCloser, error) { return newSegReader(segs, nseg), nil }
	}
	return io.NopCloser(bytes.NewReader(one)), func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(one)), nil }
}

// responseHeaderDrops are upstream response headers the client must not see:
// cookies of the provider's edge and the identity of Tollgate's account.
var responseHeaderDrops = []string{"Set-Cookie", "Openai-Organization", "Openai-Project"}

func (h *handler) modifyResponse(resp *http.Response) error {
	c := resp.Request.Context().Value(callKey{}).(*call)
	c.status = resp.StatusCode
	h.m.upstream[c.route].Observe(time.Since(c.upStart).Seconds())
	for _, k := range responseHeaderDrops {
		delete(resp.Header, k)
	}
	// x-request-id is Tollgate's (set before the call); the provider's own
	// goes on under LiteLLM's prefix for provider headers.
	if v, ok := resp.Header["X-Request-Id"]; ok {
		delete(resp.Header, "X-Request-Id")
		resp.Header["Llm_provider-X-Request-Id"] = v
	}
	// The upstream account's rate limits are not the caller's; LiteLLM
	// passes them on under this prefix, and Tollgate's own x-ratelimit-*
	// headers belong to its rate limiter.
	for k, v := range resp.Header {
		if len(k) > 12 && strings.EqualFold(k[:12], "X-Ratelimit-") {
			delete(resp.Header, k)
			resp.Header["Llm_provider-"+k] = v
		}
	}
	// The deployment that served, under LiteLLM's header name (the SaaS
	// team API prices a job's calls with it).
	if c.dep != nil {
		resp.Header["X-Litellm-Model-Id"] = []string{c.dep.ID}
	}
	if c.pl.Translate != nil || c.pl.TranslateError != nil {
		if translated := h.translateResponse(resp, c); translated {
			return nil
		}
	}
	if c.pl.Wire == provider.WireNone {
		// Nothing to read: billed per unit or not at all (audio bytes,
		// moderations, a stored response).
		return nil
	}
	if isEventStream(resp.Header.Get("Content-Type")) {
		resp.Body = newSSEFilter(resp.Body, c)
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
		return nil
	}
	resp.Body = newUsageSniffer(resp.Body, c)
	return nil
}

func isEventStream(ct string) bool {
	return strings.HasPrefix(strings.TrimSpace(strings.ToLower(ct)), "text/event-stream")
}

var (
	rejUpstreamDown = enforce.New(enforce.OK, http.StatusBadGateway, enforce.TypeUpstream,
		"Upstream connection failed", "")
	rejUpstreamTimeout = enforce.New(enforce.OK, http.StatusGatewayTimeout, enforce.TypeTimeout,
		"Upstream request timed out", "")
)

func (h *handler) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	c := r.Context().Value(callKey{}).(*call)
	c.errOutcome = true
	switch {
	case c.clientCtx.Err() != nil:
		// The client left; nobody reads an answer. 499 as nginx logs it.
		c.outcome, c.status = outClientClosed, 499
		return
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		c.outcome = outTimeout
		c.status = rejUpstreamTimeout.Status
		writeRouteRejection(w, c.route, rejUpstreamTimeout)
	default:
		c.outcome = outUnreachable
		c.status = rejUpstreamDown.Status
		writeRouteRejection(w, c.route, rejUpstreamDown)
	}
	h.log.WarnContext(r.Context(), "upstream call failed", "request_id", c.reqID, "route", c.route.Path(), "model", c.body.Model,
		"deployment", c.dep.ID, "status", c.status, "err", err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// finish counts the request and reports its outcome.
func (h *handler) finish(c *call) {
	switch {
	case c.errOutcome:
	case c.aborted && c.clientCtx.Err() != nil:
		c.outcome = outClientClosed
	case c.aborted && c.upCtx.Err() == context.DeadlineExceeded:
		c.outcome = outTimeout
	case c.aborted:
		c.outcome = outAborted
	case c.status >= 500:
		c.outcome = outUpstream5xx
	case c.status >= 400:
		c.outcome = outUpstream4xx
	default:
		c.outcome = int(enforce.OK)
	}
	h.m.count(c.route, c.outcome)
	c.tg.count(c.route, c.status)
	if c.status >= 200 && c.status < 300 && !c.aborted {
		unitUsage(c)
	}
	h.responseDone(c)
	if h.onUsage == nil && c.gateDone == nil {
		return
	}
	k := &c.principal.Key
	o := Outcome{
		TokenID:        k.TokenID,
		TeamID:         k.TeamID,
		UserID:         k.UserID,
		OrganizationID: k.OrganizationID,
		EndUser:        c.body.EndUser(),
		Model:          c.body.Model,
		DeploymentID:   c.dep.ID,
		UpstreamModel:  c.dep.UpstreamModel,
		Route:          c.route,
		Status:         c.status,
		Streamed:       c.stream,
		UsageKnown:     c.usageKnown,
		Usage:          c.usage,
		ResponseID:     c.respID,
		Aborted:        c.aborted,
		Start:          c.start,
		Duration:       time.Since(c.start),
	}
	if o.OrganizationID == "" && c.principal.Org != nil {
		o.OrganizationID = c.principal.Org.OrganizationID
	}
	if !c.usageKnown && c.status >= 200 && c.status < 300 {
		// No usage reported (an abandoned or broken stream, an upstream
		// that ignores include_usage): bill an estimate from what was
		// sent and streamed, ~4 bytes a token (the response's bytes
		// include its JSON/SSE framing, so this errs high).
		o.Usage = Usage{PromptTokens: int64(c.body.Size())/4 + 1, CompletionTokens: c.respBytes / 4}
		o.Usage.TotalTokens = o.Usage.PromptTokens + o.Usage.CompletionTokens
		o.UsageEstimated = true
	}
	// The spend record first, then the gate: a gate that learns the
	// outbox is fully acked can then drop what it still counts as unsynced.
	if h.onUsage != nil {
		h.onUsage(o)
	}
	if c.gateDone != nil {
		c.gateDone(o)
	}
}

// logRequest logs a request that passed the decision, at debug level, with
// its request id and the key in display form only (sk-...abcd).
func (h *handler) logRequest(ctx context.Context, c *call, status, outcome int) {
	if !h.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	h.log.LogAttrs(ctx, slog.LevelDebug, "proxy request",
		slog.String("request_id", c.reqID),
		slog.String("route", c.route.Path()),
		slog.String("model", c.body.Model),
		slog.Int("status", status),
		slog.String("outcome", outcomeName(outcome)),
		slog.String("key", keys.DisplayName(c.key)),
		slog.String("token_id", c.principal.Key.TokenID),
		slog.Duration("dur", time.Since(c.start)))
}

// segReader reads the planned body segments in order.
type segReader struct {
	segs [5][]byte
	n, i int
}

func newSegReader(segs [5][]byte, n int) *segReader { return &segReader{segs: segs, n: n} }

func (s *segReader) Read(p []byte) (int, error) {
	total := 0
	for s.i < s.n && len(p) > 0 {
		k := copy(p, s.segs[s.i])
		s.segs[s.i] = s.segs[s.i][k:]
		p = p[k:]
		total += k
		if len(s.segs[s.i]) == 0 {
			s.i++
		}
	}
	if s.i >= s.n {
		return total, io.EOF
	}
	return total, nil
}

func (s *segReader) Close() error { return nil }

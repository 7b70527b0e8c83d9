package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/telemetry"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/provider"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// Options configures New. Only State is required.
type Options struct {
	State state.Reader
	// Registry receives the proxy's metrics and is served on /metrics.
	// nil: a private registry.
	Registry *prometheus.Registry
	// Transport makes upstream calls. nil: a tuned *http.Transport.
	Transport http.RoundTripper
	// Now is the clock for key expiry. nil: time.Now.
	Now func() time.Time
	// Getenv resolves "os.environ/NAME" model credentials. nil: os.Getenv.
	Getenv func(string) string
	// Logger nil: slog.Default().
	Logger *slog.Logger
	// MaxBodyBytes bounds a request body. 0: 10 MiB.
	MaxBodyBytes int64
	// UpstreamTimeout bounds a whole upstream call, streaming included.
	// 0: 10 minutes (LiteLLM's default request_timeout).
	UpstreamTimeout time.Duration
	// OnUsage, when set, is called once for every request that reached the
	// upstream (not for rejected ones), after the response has been sent,
	// on the request's goroutine: keep it fast (hand off to a queue).
	OnUsage func(Outcome)
	// Gate, when set, admits each request that passed the decision, just
	// before the upstream call. nil: admit everything.
	Gate Gate
	// MasterKey, when set, holds the control plane's master key hash (from
	// the sync stream): the master key is accepted on the LLM routes.
	MasterKey *enforce.MasterHash
}

// Gate is the seam for rate limits (rpm, tpm, parallel) and leased budgets,
// which come after the decision's checks (DESIGN.md, "Order of checks").
// Admit either refuses (the rejection is sent, e.g. a 429 with Retry-After
// in Rejection.Header) or admits and returns done, which the proxy calls
// exactly once with the outcome so that a reservation can be settled against
// the actual usage.
type Gate interface {
	Admit(ctx context.Context, a *Admission) (done func(Outcome), rej *enforce.Rejection)
}

// Admission is what a Gate sees. It is valid only during Admit.
type Admission struct {
	Route      enforce.Route
	Principal  *enforce.Principal
	Body       *enforce.Body
	Deployment *state.Model
	// Header is the response's header map: an admitting gate may add
	// headers (x-ratelimit-*); the upstream's are added after them.
	Header http.Header
	// Refresh, when set, decides the request again from the current state
	// into Principal (the key, its objects, their synced spend): a gate
	// that waits for held amounts calls it before deciding again. A
	// rejection (the key was blocked, a budget is now spent) ends the wait.
	Refresh Refresher
}

// Refresher decides a request again (Admission.Refresh).
type Refresher interface {
	Refresh() *enforce.Rejection
}

// Usage is what a request used, as the upstream reported it (provider.Usage).
type Usage = provider.Usage

// Outcome describes one request that reached the upstream, for billing.
type Outcome struct {
	TokenID        string
	TeamID         string
	UserID         string
	OrganizationID string
	// EndUser is the request body's "user" (a string), "" when absent.
	EndUser string
	// Model is the public model name; DeploymentID and UpstreamModel the
	// deployment that served it.
	Model         string
	DeploymentID  string
	UpstreamModel string
	Route         enforce.Route
	// Status is the status the client got (the upstream's, or 502/504).
	Status   int
	Streamed bool
	// UsageKnown is false when the response carried no usage (errors, an
	// aborted stream, an upstream that ignores include_usage).
	UsageKnown bool
	Usage      Usage
	// ResponseID is the upstream response's top-level "id" (chatcmpl-...;
	// in a stream, the usage chunk's), "" when it had none or it was not a
	// short printable token. LiteLLM keys spend logs by it.
	ResponseID string
	// UsageEstimated is set when a 2xx response reported no usage: Usage
	// then holds an estimate from the request and response sizes, which
	// the spend record bills (marked estimated) and budgets count.
	UsageEstimated bool
	// Aborted is set when the response broke after its headers were sent.
	Aborted bool
	// Start is when the request arrived; Duration runs until the response
	// was sent.
	Start    time.Time
	Duration time.Duration
}

type handler struct {
	st       state.Reader
	enf      *enforce.Enforcer
	rp       *httputil.ReverseProxy
	now      func() time.Time
	getenv   func(string) string
	log      *slog.Logger
	maxBody  int64
	timeout  time.Duration
	onUsage  func(Outcome)
	gate     Gate
	m        *metrics
	metricsH http.Handler
	rr       atomic.Uint64
	items    responseIDs
	targets  sync.Map // *state.Model -> *target
	nTargets atomic.Int64
}

// New returns the data plane's HTTP handler: the OpenAI-compatible routes,
// /health/liveliness, /health/readiness and /metrics.
func New(o Options) http.Handler {
	if o.State == nil {
		panic("proxy: Options.State is required")
	}
	h := &handler{
		st:      o.State,
		enf:     &enforce.Enforcer{State: o.State, Master: o.MasterKey},
		now:     o.Now,
		getenv:  o.Getenv,
		log:     o.Logger,
		maxBody: o.MaxBodyBytes,
		timeout: o.UpstreamTimeout,
		onUsage: o.OnUsage,
		gate:    o.Gate,
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.getenv == nil {
		h.getenv = os.Getenv
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.maxBody <= 0 {
		h.maxBody = 10 << 20
	}
	if h.timeout <= 0 {
		h.timeout = 10 * time.Minute
	}
	reg := o.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	h.m = newMetrics(reg)
	h.metricsH = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	tr := o.Transport
	if tr == nil {
		tr = NewTransport()
	}
	h.rp = &httputil.ReverseProxy{
		Rewrite:        h.rewrite,
		Transport:      tr,
		FlushInterval:  0, // ReverseProxy flushes SSE and unknown-length bodies at once itself; a JSON body with a length goes out in one write
		ModifyResponse: h.modifyResponse,
		ErrorHandler:   h.upstreamError,
		ErrorLog:       slog.NewLogLogger(h.log.Handler(), slog.LevelDebug),
		BufferPool:     bufferPool{},
	}
	return h
}

var (
	jsonCT    = []string{"application/json"}
	allowPOST = []string{"POST"}
	allowGET  = []string{"GET, HEAD"}
	aliveBody = []byte(`"I'm alive!"`)
	noSniff   = []string{"nosniff"}
)

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/health/liveliness", "/health/liveness":
		if !h.methodGET(w, r) {
			return
		}
		w.Header()["Content-Type"] = jsonCT
		w.Write(aliveBody)
		return
	case "/health/readiness":
		if !h.methodGET(w, r) {
			return
		}
		h.readiness(w)
		return
	case "/metrics":
		if !h.methodGET(w, r) {
			return
		}
		h.metricsH.ServeHTTP(w, r)
		return
	}
	route := enforce.RouteOf(r.URL.Path)
	rid := requestID(w, r)
	if telemetry.Tracing() {
		h.serveTraced(w, r, route, rid)
		return
	}
	h.serveRoute(w, r, route, rid)
}

func (h *handler) serveRoute(w http.ResponseWriter, r *http.Request, route enforce.Route, rid string) {
	switch route {
	case 0:
		// The path is not logged: a confused client may put a key in it.
		h.reject(w, 0, enforce.RejNotFound)
	case enforce.RouteModels:
		h.serveModels(w, r)
	case enforce.RouteResponseItem:
		h.serveResponseItem(w, r, rid)
	default:
		h.serveLLM(w, r, route, rid)
	}
}

func (h *handler) methodGET(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header()["Allow"] = allowGET
	writeRejection(w, enforce.RejMethodNotAllowed)
	return false
}

func (h *handler) readiness(w http.ResponseWriter) {
	if !h.st.Ready() {
		writeRejection(w, enforce.RejNotReady)
		return
	}
	b := make([]byte, 0, 64)
	b = append(b, `{"status":"healthy","revision":`...)
	b = strconv.AppendInt(b, h.st.Revision(), 10)
	b = append(b, '}')
	w.Header()["Content-Type"] = jsonCT
	w.Write(b)
}

// reject sends a rejection and counts it.
func (h *handler) reject(w http.ResponseWriter, route enforce.Route, rej *enforce.Rejection) {
	h.m.count(route, int(rej.Outcome))
	noteOutcome(w, int(rej.Outcome), "")
	writeRouteRejection(w, route, rej)
}

// writeRouteRejection writes rej in the shape the route's clients expect:
// Anthropic's on /messages, the envelope everywhere else.
func writeRouteRejection(w http.ResponseWriter, route enforce.Route, rej *enforce.Rejection) {
	if !anthropicRoute(route) {
		writeRejection(w, rej)
		return
	}
	hdr := w.Header()
	for k, v := range rej.Header {
		hdr[k] = v
	}
	hdr["Content-Type"] = jsonCT
	hdr["X-Content-Type-Options"] = noSniff
	w.WriteHeader(rej.Status)
	w.Write(anthropicEnvelope(rej))
}

func writeRejection(w http.ResponseWriter, rej *enforce.Rejection) {
	hdr := w.Header()
	for k, v := range rej.Header {
		hdr[k] = v
	}
	hdr["Content-Type"] = jsonCT
	hdr["X-Content-Type-Options"] = noSniff
	w.WriteHeader(rej.Status)
	w.Write(rej.Envelope())
}

// presentedKey returns the virtual key from Authorization: Bearer (LiteLLM
// also accepts the Azure-style api-key and Anthropic-style x-api-key).
func presentedKey(r *http.Request) string {
	if v := r.Header["Authorization"]; len(v) > 0 {
		a := v[0]
		if len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
			return strings.TrimSpace(a[7:])
		}
		// Not a bearer token: malformed. Returned as is so the format
		// check refuses it (and it is never echoed).
		return strings.TrimSpace(a)
	}
	if v := r.Header["Api-Key"]; len(v) > 0 {
		return strings.TrimSpace(v[0])
	}
	if v := r.Header["X-Api-Key"]; len(v) > 0 {
		return strings.TrimSpace(v[0])
	}
	return ""
}

func (h *handler) serveModels(w http.ResponseWriter, r *http.Request) {
	const route = enforce.RouteModels
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header()["Allow"] = allowGET
		h.reject(w, route, enforce.RejMethodNotAllowed)
		return
	}
	if !h.st.Ready() {
		h.reject(w, route, enforce.RejNotReady)
		return
	}
	var p enforce.Principal
	if rej := h.enf.Authenticate(presentedKey(r), r.URL.Path, h.now().UnixMilli(), &p); rej != nil {
		h.reject(w, route, rej)
		return
	}
	b := make([]byte, 0, 1024)
	b = append(b, `{"object":"list","data":[`...)
	n := 0
	for _, name := range h.st.ModelNames() {
		if !h.enf.ModelAllowed(&p, name) {
			continue
		}
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = append(b, `{"id":`...)
		b = enforce.AppendString(b, name)
		b = append(b, `,"object":"model","created":0,"owned_by":"tollgate"}`...)
	}
	b = append(b, "]}"...)
	h.m.count(route, int(enforce.OK))
	noteOutcome(w, int(enforce.OK), "")
	w.Header()["Content-Type"] = jsonCT
	w.Write(b)
}

// bufferPool recycles ReverseProxy's copy buffers.
type bufferPool struct{}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *copyBufs.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBufs.Put(&b) }

// readBody reads the request body within the limit.
func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, *enforce.Rejection) {
	if r.ContentLength > max {
		return nil, enforce.RejTooLarge
	}
	if ce := r.Header["Content-Encoding"]; len(ce) > 0 && !(len(ce) == 1 && strings.EqualFold(ce[0], "identity")) {
		return nil, enforce.RejUnsupportedMedia
	}
	body := http.MaxBytesReader(w, r.Body, max)
	if r.ContentLength >= 0 {
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(body, buf); err != nil {
			return nil, enforce.RejBodyRead
		}
		return buf, nil
	}
	buf, err := io.ReadAll(body)
	if err != nil {
		if _, ok := err.(*http.MaxBytesError); ok {
			return nil, enforce.RejTooLarge
		}
		return nil, enforce.RejBodyRead
	}
	return buf, nil
}

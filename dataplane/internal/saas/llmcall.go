package saas

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	saasv1 "github.com/tollgate-gw/tollgate/gen/tollgate/saas/v1"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
)

// llmRequest is the body of /api/jobs/{id}/llm-call(-stream).
type llmRequest struct {
	ModelGroup     string          `json:"model_group"`
	Messages       json.RawMessage `json:"messages"`
	Purpose        string          `json:"purpose"`
	Temperature    *float64        `json:"temperature"`
	MaxTokens      *int64          `json:"max_tokens"`
	ResponseFormat json.RawMessage `json:"response_format,omitempty"`
}

// upstreamBody is the OpenAI request one attempt sends for model.
func (q *llmRequest) upstreamBody(model string, stream bool) []byte {
	m := map[string]any{"model": model, "messages": q.Messages}
	if q.Temperature != nil {
		m["temperature"] = *q.Temperature
	}
	if q.MaxTokens != nil {
		m["max_tokens"] = *q.MaxTokens
	}
	if len(q.ResponseFormat) > 0 && string(q.ResponseFormat) != "null" {
		m["response_format"] = q.ResponseFormat
	}
	if stream {
		// The final chunk carries the usage (SaaS LiteLLM's clients read
		// it there; the call's record needs it).
		m["stream"] = true
		m["stream_options"] = map[string]any{"include_usage": true}
	}
	b, _ := json.Marshal(m)
	return b
}

// attempt is the outcome of one model.
type attempt struct {
	status     int
	body       []byte // the response (non-streaming), or the refusal
	deployment string
	usage      usage
	latency    time.Duration
	committed  bool // streaming: the response went to the client
	aborted    bool // the response broke after it started (http.ErrAbortHandler)
	header     http.Header
}

type usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

// retryable is a failure the next model may not have: connection error
// (502), timeout (504) or any 5xx.
func (a *attempt) retryable() bool { return a.aborted || a.status >= 500 || a.status == 0 }

func (h *handler) llmCall(stream bool) func(w http.ResponseWriter, r *http.Request, c *caller) {
	return func(w http.ResponseWriter, r *http.Request, c *caller) {
		var q llmRequest
		if !readJSON(w, r, &q) {
			return
		}
		var msgs []json.RawMessage
		if q.ModelGroup == "" || json.Unmarshal(q.Messages, &msgs) != nil || len(msgs) == 0 {
			writeDetail(w, http.StatusUnprocessableEntity, "model_group and a non-empty messages list are required")
			return
		}
		if len(q.Purpose) > 256 {
			writeDetail(w, http.StatusUnprocessableEntity, "purpose is at most 256 bytes")
			return
		}
		g, ok := c.team.SaaS.Group(q.ModelGroup)
		if !ok || len(g.Models) == 0 {
			writeDetail(w, http.StatusForbidden, detailNoModelAccess)
			return
		}
		jobID := r.PathValue("id")
		ctx, cancel := h.rpcCtx(r)
		_, err := h.o.Jobs.StartCall(ctx, &saasv1.StartCallRequest{TeamId: c.team.TeamID, JobId: jobID, ModelGroup: q.ModelGroup})
		cancel()
		if err != nil {
			h.rpcError(w, err)
			return
		}
		callID := newID()
		for i, model := range g.Models {
			a := h.attempt(r, c, q.ModelGroup, q.upstreamBody(model, stream), w, stream)
			errText := ""
			switch {
			case a.aborted:
				errText = "the response broke after it started"
			case a.status >= 200 && a.status < 300:
			case a.retryable():
				errText = "upstream failed with status " + strconv.Itoa(a.status)
			default:
				errText = "refused with status " + strconv.Itoa(a.status)
			}
			rec := &saasv1.RecordCallRequest{
				TeamId: c.team.TeamID, JobId: jobID, CallId: callID, Attempt: int32(i + 1), ModelGroup: q.ModelGroup,
				Model: model, DeploymentId: a.deployment, Purpose: q.Purpose, ProxyId: h.o.ProxyID,
				PromptTokens: a.usage.PromptTokens, CompletionTokens: a.usage.CompletionTokens, TotalTokens: a.usage.TotalTokens,
				Cost: h.cost(model, a), LatencyMs: a.latency.Milliseconds(), Status: int32(a.status), Error: errText,
			}
			recErr := h.record(r, rec)
			if a.aborted && a.committed {
				// Recorded as failed (so a completed job with it costs no
				// credit); now break the client's response as the proxy
				// would have.
				if recErr != nil {
					h.o.Logger.Warn("saas: broken call not recorded", "job_id", jobID, "err", recErr)
				}
				panic(http.ErrAbortHandler)
			}
			if a.committed {
				// The stream went out; its record is written before the
				// response ends (the handler returns after this).
				if recErr != nil {
					h.o.Logger.Warn("saas: streamed call not recorded", "job_id", jobID, "err", recErr)
				}
				return
			}
			if recErr != nil {
				h.rpcError(w, recErr)
				return
			}
			if errText == "" {
				h.answer(w, callID, q.ModelGroup, a)
				return
			}
			if !a.retryable() {
				h.refusal(w, a)
				return
			}
		}
		writeDetail(w, http.StatusBadGateway, "LLM call failed: every model of the group failed")
	}
}

// record stores an attempt on the control plane, retrying once; it
// outlives a client that went away.
func (h *handler) record(r *http.Request, rec *saasv1.RecordCallRequest) error {
	var err error
	for range 2 {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.o.RPCTimeout)
		_, err = h.o.Jobs.RecordCall(ctx, rec)
		cancel()
		if err == nil {
			return nil
		}
	}
	return err
}

// cost prices an attempt with the deployment that served it.
func (h *handler) cost(model string, a *attempt) int64 {
	for _, d := range h.o.State.Deployments(model) {
		if d.ID == a.deployment {
			return money.RequestCost(a.usage.PromptTokens, d.InputCost, a.usage.CompletionTokens, d.OutputCost)
		}
	}
	return 0
}

// attempt runs one model of an llm-call through the proxy's own handler
// with the team's key.
func (h *handler) attempt(r *http.Request, c *caller, group string, body []byte, w http.ResponseWriter, stream bool) *attempt {
	hdr := http.Header{"Authorization": {"Bearer " + c.raw}, "Content-Type": {"application/json"}}
	return h.forward(r, "/chat/completions", hdr, body, w, stream, group)
}

// forward runs body through the proxy's handler at path with hdr. A
// streamed 2xx goes to w as it comes (chunks naming group instead of the
// model when group is set, with every proxy header otherwise); anything
// else is buffered in the attempt.
func (h *handler) forward(r *http.Request, path string, hdr http.Header, body []byte, w http.ResponseWriter, stream bool, group string) *attempt {
	// AttemptTimeout bounds the wait for the answer to start; a stream
	// that has started may run as long as the proxy lets it.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	var started atomic.Bool
	timer := time.AfterFunc(h.o.AttemptTimeout, func() {
		if !started.Load() {
			cancel()
		}
	})
	defer timer.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, path, bytes.NewReader(body))
	if err != nil {
		return &attempt{status: 0}
	}
	req.Header = hdr
	req.Header.Del("Content-Length")
	req.RemoteAddr = r.RemoteAddr
	start := time.Now()
	rw := &captureWriter{hdr: http.Header{}, out: w, stream: stream, group: group, started: &started}
	aborted := false
	func() {
		// The proxy aborts a response that broke after its headers with
		// http.ErrAbortHandler; catch it so the attempt is recorded first.
		defer func() {
			if v := recover(); v != nil {
				if v != http.ErrAbortHandler {
					panic(v)
				}
				aborted = true
			}
		}()
		h.o.Proxy.ServeHTTP(rw, req)
	}()
	if !aborted {
		rw.finish()
	}
	a := &attempt{status: rw.status, latency: time.Since(start), deployment: rw.hdr.Get("X-Litellm-Model-Id"),
		committed: rw.committed, header: rw.hdr, aborted: aborted}
	if a.status == 0 {
		a.status = http.StatusOK
	}
	if rw.committed {
		a.usage = rw.usage
		if a.usage.TotalTokens == 0 {
			a.usage.TotalTokens = a.usage.PromptTokens + a.usage.CompletionTokens
		}
		return a
	}
	a.body = rw.buf.Bytes()
	if a.status >= 200 && a.status < 300 {
		var resp struct {
			Usage usage `json:"usage"`
		}
		_ = json.Unmarshal(a.body, &resp)
		a.usage = resp.Usage
	}
	if a.usage.TotalTokens == 0 {
		a.usage.TotalTokens = a.usage.PromptTokens + a.usage.CompletionTokens
	}
	return a
}

// answer writes SaaS LiteLLM's llm-call response: content, finish reason
// and tokens, never the model or the price.
func (h *handler) answer(w http.ResponseWriter, callID, group string, a *attempt) {
	var resp struct {
		Choices []struct {
			Message struct {
				Content json.RawMessage `json:"content"`
			} `json:"message"`
			FinishReason json.RawMessage `json:"finish_reason"`
		} `json:"choices"`
	}
	_ = json.Unmarshal(a.body, &resp)
	content, finish := json.RawMessage(`null`), json.RawMessage(`null`)
	if len(resp.Choices) > 0 {
		if len(resp.Choices[0].Message.Content) > 0 {
			content = resp.Choices[0].Message.Content
		}
		if len(resp.Choices[0].FinishReason) > 0 {
			finish = resp.Choices[0].FinishReason
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"call_id":  callID,
		"response": map[string]any{"content": content, "finish_reason": finish},
		"metadata": map[string]any{"tokens_used": a.usage.TotalTokens, "latency_ms": a.latency.Milliseconds(), "model_group": group},
	})
}

// refusal turns the proxy's refusal of an attempt (budget, rate limit,
// status) into SaaS LiteLLM's shape.
func (h *handler) refusal(w http.ResponseWriter, a *attempt) {
	var env struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	_ = json.Unmarshal(a.body, &env)
	switch {
	case env.Error.Message == detailRefused:
		writeDetail(w, http.StatusForbidden, detailRefused)
	case a.status == http.StatusForbidden:
		writeDetail(w, http.StatusForbidden, detailNoModelAccess)
	case a.status == http.StatusUnauthorized:
		writeDetail(w, http.StatusUnauthorized, detailInvalidKey)
	default:
		msg := env.Error.Message
		if msg == "" {
			msg = http.StatusText(a.status)
		}
		// A 429 keeps its Retry-After and rate-limit headers (DESIGN.md).
		for k, v := range a.header {
			if k == "Retry-After" || strings.HasPrefix(k, "X-Ratelimit-") {
				w.Header()[k] = v
			}
		}
		writeDetail(w, a.status, msg)
	}
}

// captureWriter receives one attempt's response. A non-streaming response
// is buffered. A streaming one is held back until its status is known: a
// 2xx goes to the client as it comes (chunk by chunk, usage sniffed from the
// final chunk), anything else is buffered so that the next model can be
// tried. Streamed chunks name the model group, not the model.
type captureWriter struct {
	hdr       http.Header
	out       http.ResponseWriter
	stream    bool
	status    int
	committed bool
	buf       bytes.Buffer
	line      []byte
	usage     usage
	group     string       // replaces the model in streamed chunks
	started   *atomic.Bool // set once a streamed 2xx is committed to the client
}

func (c *captureWriter) Header() http.Header { return c.hdr }

func (c *captureWriter) WriteHeader(code int) {
	if c.status != 0 {
		return
	}
	c.status = code
	if c.stream && code >= 200 && code < 300 {
		c.committed = true
		if c.started != nil {
			c.started.Store(true)
		}
		h := c.out.Header()
		if c.group == "" {
			// An OpenAI route: the proxy's headers as they are.
			for k, v := range c.hdr {
				h[k] = v
			}
		} else {
			// llm-call-stream: nothing that names the deployment.
			h.Set("Content-Type", c.hdr.Get("Content-Type"))
			h.Set("Cache-Control", "no-cache")
			h.Set("X-Accel-Buffering", "no")
		}
		c.out.WriteHeader(code)
	}
}

const maxBuffered = 8 << 20

func (c *captureWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.WriteHeader(http.StatusOK)
	}
	if !c.committed {
		if c.buf.Len()+len(p) > maxBuffered {
			return 0, http.ErrContentLength
		}
		return c.buf.Write(p)
	}
	if c.group == "" {
		return c.out.Write(p)
	}
	if err := c.relayLines(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// relayLines sends the complete SSE lines of p (the rest waits for its
// newline): each data chunk with its model replaced by the model group,
// and its usage noted.
func (c *captureWriter) relayLines(p []byte) error {
	c.line = append(c.line, p...)
	consumed := 0
	var out []byte
	for {
		i := bytes.IndexByte(c.line[consumed:], '\n')
		if i < 0 {
			break
		}
		ln := c.line[consumed : consumed+i+1]
		consumed += i + 1
		out = append(out, c.rewrite(ln)...)
	}
	c.line = append(c.line[:0], c.line[consumed:]...)
	if len(c.line) > 1<<20 {
		// Not SSE as we know it: pass it on untouched.
		out = append(out, c.line...)
		c.line = c.line[:0]
	}
	if len(out) == 0 {
		return nil
	}
	_, err := c.out.Write(out)
	return err
}

// rewrite returns one SSE line as the client gets it.
func (c *captureWriter) rewrite(ln []byte) []byte {
	d, ok := bytes.CutPrefix(bytes.TrimRight(ln, "\r\n"), []byte("data:"))
	d = bytes.TrimSpace(d)
	if !ok || len(d) == 0 || d[0] != '{' {
		return ln
	}
	var chunk map[string]json.RawMessage
	if json.Unmarshal(d, &chunk) != nil {
		return ln
	}
	if u, ok := chunk["usage"]; ok {
		var us usage
		if json.Unmarshal(u, &us) == nil && (us.TotalTokens > 0 || us.PromptTokens > 0 || us.CompletionTokens > 0) {
			c.usage = us
		}
	}
	if _, ok := chunk["model"]; !ok {
		return ln
	}
	chunk["model"], _ = json.Marshal(c.group)
	b, err := json.Marshal(chunk)
	if err != nil {
		return ln
	}
	return append(append([]byte("data: "), b...), '\n')
}

// finish sends a last line that had no newline.
func (c *captureWriter) finish() {
	if c.committed && len(c.line) > 0 {
		_, _ = c.out.Write(c.rewrite(c.line))
		c.line = c.line[:0]
	}
}

func (c *captureWriter) Flush() {
	if f, ok := c.out.(http.Flusher); ok && c.committed {
		f.Flush()
	}
}

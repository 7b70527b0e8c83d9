package saas

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"strings"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// GroupRouter lets a SaaS team's key name one of its model groups as the
// model of an OpenAI chat completion: the group's models are tried in
// priority order with the same fallback as llm-call. Requests of other
// keys, or naming a model, are left to the proxy untouched (it returns
// false without reading the body).
type GroupRouter struct{ h *handler }

// NewGroupRouter returns the router (Options as for New; Jobs is unused).
func NewGroupRouter(o Options) *GroupRouter {
	return &GroupRouter{h: newHandler(o)}
}

// maxGroupBody bounds the body read to find the model (the proxy's own
// limit applies to what it forwards).
const maxGroupBody = 10 << 20

// Serve handles r and returns true when its model is a model group of the
// caller's SaaS team; otherwise it returns false with r as it came (its
// body restored when it had to be read).
func (g *GroupRouter) Serve(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodPost {
		return false
	}
	t := g.saasTeam(r)
	if t == nil || len(t.SaaS.ModelGroups) == 0 {
		return false
	}
	orig := r.Body
	raw, err := io.ReadAll(io.LimitReader(orig, maxGroupBody+1))
	if err != nil || len(raw) > maxGroupBody {
		// Too large to look at: the proxy gets the body whole (what was
		// read, then the rest) and applies its own limit.
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(raw), orig), orig}
		return false
	}
	orig.Close()
	r.Body = io.NopCloser(bytes.NewReader(raw))
	r.ContentLength = int64(len(raw))
	var body map[string]json.RawMessage
	if json.Unmarshal(raw, &body) != nil {
		return false
	}
	var model string
	if json.Unmarshal(body["model"], &model) != nil {
		return false
	}
	grp, ok := t.SaaS.Group(model)
	if !ok || len(grp.Models) == 0 {
		return false
	}
	var stream bool
	_ = json.Unmarshal(body["stream"], &stream)
	path := r.URL.Path
	for _, m := range grp.Models {
		body["model"], _ = json.Marshal(m)
		b, _ := json.Marshal(body)
		a := g.h.forward(r, path, r.Header.Clone(), b, w, stream, "")
		if a.committed {
			return true
		}
		if !a.retryable() {
			g.replay(w, a)
			return true
		}
	}
	writeOpenAIError(w, http.StatusBadGateway, "every model of the model group failed")
	return true
}

// saasTeam returns the SaaS team of the request's bearer key, nil when
// none (never an error: the proxy then decides as usual).
func (g *GroupRouter) saasTeam(r *http.Request) *state.Team {
	a := r.Header.Get("Authorization")
	if len(a) <= 7 || !strings.EqualFold(a[:7], "bearer ") {
		return nil
	}
	key := strings.TrimSpace(a[7:])
	if keys.Validate(key) != nil {
		return nil
	}
	sum := sha256.Sum256([]byte(key))
	k, ok := g.h.o.State.LookupKey(&sum, g.h.o.Now().UnixMilli())
	if !ok || k.TeamID == "" {
		return nil
	}
	t, ok := g.h.o.State.Team(k.TeamID)
	if !ok || t.SaaS == nil {
		return nil
	}
	return t
}

// replay sends a buffered attempt's response as the proxy made it.
func (g *GroupRouter) replay(w http.ResponseWriter, a *attempt) {
	for k, v := range a.header {
		w.Header()[k] = v
	}
	w.WriteHeader(a.status)
	_, _ = w.Write(a.body)
}

func writeOpenAIError(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": "upstream_error", "param": nil, "code": "502"}})
	writeRaw(w, code, b)
}

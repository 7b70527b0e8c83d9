package proxy

import (
	"net/http"
	"strings"
	"sync"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// maxResponseIDs bounds the remembered Responses API ids per proxy (~100 B
// each); the oldest are forgotten first.
const maxResponseIDs = 1 << 16

// responseOwner is who created a stored response, and where.
type responseOwner struct {
	tokenID, model, depID string
}

// responseIDs remembers which key and deployment created each response id
// this proxy has relayed, so that GET/DELETE /responses/{id} reach the
// upstream that holds it, and only for the key that created it. It is per
// proxy: behind a load balancer, a retrieval must reach the proxy that
// relayed the creation (sticky sessions), else it is a 404.
type responseIDs struct {
	mu   sync.Mutex
	m    map[string]responseOwner
	ring []string
	next int
}

func (s *responseIDs) remember(id string, o responseOwner) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]responseOwner)
		s.ring = make([]string, maxResponseIDs)
	}
	if _, ok := s.m[id]; ok {
		s.m[id] = o
		return
	}
	if old := s.ring[s.next]; old != "" {
		delete(s.m, old)
	}
	s.ring[s.next] = id
	s.next = (s.next + 1) % len(s.ring)
	s.m[id] = o
}

func (s *responseIDs) lookup(id string) (responseOwner, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.m[id]
	return o, ok
}

func (s *responseIDs) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id) // its ring slot is reused in turn
}

// responseDone remembers a created response's id and forgets a deleted
// one.
func (h *handler) responseDone(c *call) {
	if c.status < 200 || c.status >= 300 {
		return
	}
	switch c.route {
	case enforce.RouteResponses:
		if c.respID != "" {
			h.items.remember(c.respID, responseOwner{tokenID: c.principal.Key.TokenID, model: c.body.Model, depID: c.dep.ID})
		}
	case enforce.RouteResponseItem:
		if c.method == http.MethodDelete {
			h.items.forget(enforce.ResponseID(c.path))
		}
	}
}

var (
	allowItem       = []string{"GET, DELETE, POST"}
	rejResponseGone = enforce.New(enforce.NotFound, http.StatusNotFound, enforce.TypeNotFound,
		"Response not found (it was not created through this proxy with this key)", "")
)

// serveResponseItem relays GET/DELETE /responses/{id} (and POST
// /responses/{id}/cancel, GET .../input_items) to the deployment that
// created the response. There is no model in the request: the key must
// still be allowed the route and the model the response was created with.
// Nothing is billed by tokens; the gate is not consulted (no LLM call).
func (h *handler) serveResponseItem(w http.ResponseWriter, r *http.Request, rid string) {
	const route = enforce.RouteResponseItem
	switch r.Method {
	case http.MethodGet, http.MethodDelete, http.MethodPost:
	default:
		w.Header()["Allow"] = allowItem
		h.reject(w, route, enforce.RejMethodNotAllowed)
		return
	}
	if !h.st.Ready() {
		h.reject(w, route, enforce.RejNotReady)
		return
	}
	c := newCall(route, r.URL.Path, h.now())
	c.reqID, c.key, c.method = rid, presentedKey(r), r.Method
	c.pl.Header = r.Header
	rej := h.authenticate(c, c.key)
	if rej == enforce.RejRouteForbidden {
		// A key allowed /responses may manage what it created.
		rej = h.enf.Authenticate(c.key, "/v1/responses", h.now().UnixMilli(), &c.principal)
	}
	if rej != nil {
		h.reject(w, route, rej)
		c.release()
		return
	}
	id := enforce.ResponseID(r.URL.Path)
	_, rest, _ := strings.Cut(r.URL.Path, "/responses")
	if !saneItemPath(id, rest) {
		h.reject(w, route, enforce.RejNotFound)
		c.release()
		return
	}
	o, ok := h.items.lookup(id)
	if ok && o.tokenID != c.principal.Key.TokenID {
		ok = false
	}
	if ok {
		ok = false
		for _, d := range h.st.Deployments(o.model) {
			if d.ID == o.depID {
				c.dep, ok = d, true
				break
			}
		}
	}
	if !ok || !h.enf.ModelAllowed(&c.principal, o.model) {
		h.reject(w, route, rejResponseGone)
		c.release()
		return
	}
	c.body.Model = o.model
	c.tg = h.target(c.dep)
	if c.tg.pt == nil {
		h.m.count(route, outMisconfigured)
		writeRejection(w, rejMisconfigured)
		c.release()
		return
	}
	c.pl.Suffix = rest
	if rej := h.planUpstream(c, nil, nil); rej != nil {
		h.reject(w, route, rej)
		c.release()
		return
	}
	if r.URL.RawQuery != "" {
		// The client's query (include=..., stream=...) joins the
		// deployment's (Azure's api-version wins).
		u := *c.url
		q := r.URL.Query()
		for k, v := range u.Query() {
			q[k] = v
		}
		u.RawQuery = q.Encode()
		c.url = &u
	}
	h.forward(w, r, c)
}

// previousResponseDeployment keeps a conversation on one upstream: a
// Responses request with previous_response_id goes to the deployment that
// created that response (another deployment's account does not hold it),
// when this proxy relayed it for the same key. Else it returns def.
func (h *handler) previousResponseDeployment(c *call, deps []*state.Model, def int) int {
	v, ok := c.body.Lookup("previous_response_id")
	if !ok {
		return def
	}
	id, ok := enforce.StringValue(c.body.Raw(v))
	if !ok {
		return def
	}
	o, ok := h.items.lookup(id)
	if !ok || o.tokenID != c.principal.Key.TokenID {
		return def
	}
	for i, d := range deps {
		if d.ID == o.depID {
			return i
		}
	}
	return def
}

// saneItemPath accepts the Responses API's item paths, "/{id}",
// "/{id}/cancel" and "/{id}/input_items", with an id of letters, digits,
// '_' and '-': nothing else is appended to an upstream URL.
func saneItemPath(id, rest string) bool {
	if id == "" || len(id) > 256 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	switch rest[len(id)+1:] {
	case "", "/cancel", "/input_items":
		return true
	}
	return false
}

package ui

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc/status"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"

	"github.com/tollgate-gw/tollgate/controlplane/internal/api"
)

//go:embed assets
var assets embed.FS

const (
	// CookieName is the session cookie.
	CookieName = "tollgate_ui_session"
	// CSRFHeader carries the session's CSRF token on state-changing calls.
	CSRFHeader = "X-Tollgate-CSRF"
	// Prefix is where the UI is served.
	Prefix = "/ui"
	// DefaultTTL is how long a session lasts.
	DefaultTTL = 8 * time.Hour

	// ContentSecurityPolicy allows nothing but this origin's own files:
	// no inline script or style, no framing, no plugins.
	ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
		"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

// Identifier authenticates a credential as a management call would.
type Identifier func(ctx context.Context, credential string) (api.Identity, error)

// Config is what the UI needs from the control plane.
type Config struct {
	// API is the management REST handler (the grpc-gateway mux).
	API http.Handler
	// Identify checks sign-in credentials (api.Server.Identify).
	Identify Identifier
	// MasterKey derives the cookie-sealing and CSRF keys.
	MasterKey string
	// Secure marks the cookie Secure (the listener serves TLS). Requests
	// that arrived over TLS, or say so in X-Forwarded-Proto (a TLS
	// terminator in front), get a Secure cookie in any case.
	Secure bool
	// TTL is the session lifetime (DefaultTTL when zero).
	TTL time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Revocations shares sign-outs with every replica on the store; nil
	// keeps them in this process (tests). With it, call Run.
	Revocations Revocations
	// RevocationPoll is how often Run reads new sign-outs
	// (DefaultRevocationPoll when zero).
	RevocationPoll time.Duration
}

// Handler serves everything under /ui.
type Handler struct {
	cfg     Config
	sealer  *sealer
	revoked revoked
	shared  *shared // nil without Config.Revocations
	mux     *http.ServeMux
}

// New returns the UI handler; mount it at "/ui" and "/ui/".
func New(cfg Config) (*Handler, error) {
	if cfg.API == nil || cfg.Identify == nil || cfg.MasterKey == "" {
		return nil, errors.New("ui: API, Identify and MasterKey are required")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s, err := newSealer(cfg.MasterKey)
	if err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, sealer: s, mux: http.NewServeMux()}
	if cfg.Revocations != nil {
		if cfg.RevocationPoll <= 0 {
			cfg.RevocationPoll = DefaultRevocationPoll
		}
		h.shared = &shared{st: cfg.Revocations, every: cfg.RevocationPoll}
	}
	static, err := fs.Sub(assets, "assets")
	if err != nil {
		return nil, err
	}
	files := http.StripPrefix(Prefix+"/assets/", http.FileServerFS(static))
	h.mux.HandleFunc("GET "+Prefix, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, Prefix+"/", http.StatusFound)
	})
	h.mux.HandleFunc("GET "+Prefix+"/{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeFileFS(w, r, static, "index.html")
	})
	h.mux.HandleFunc("GET "+Prefix+"/assets/", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			notFound(w) // no directory listings
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
	h.mux.HandleFunc("POST "+Prefix+"/session", h.signIn)
	h.mux.HandleFunc("GET "+Prefix+"/session", h.whoami)
	h.mux.HandleFunc("POST "+Prefix+"/session/logout", h.signOut)
	h.mux.HandleFunc(Prefix+"/api/", h.forward)
	h.mux.HandleFunc(Prefix+"/", func(w http.ResponseWriter, r *http.Request) { notFound(w) })
	return h, nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", ContentSecurityPolicy)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
	hd.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
	if r.Method != http.MethodGet && r.Method != http.MethodHead && crossSite(r) {
		api.WriteError(w, http.StatusForbidden, "auth_error", "", "cross-site request refused")
		return
	}
	h.mux.ServeHTTP(w, r)
}

// crossSite reports a request that the browser says comes from another
// site or origin.
func crossSite(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" && s != "none" {
		return true
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return true
		}
	}
	return false
}

func notFound(w http.ResponseWriter) {
	api.WriteError(w, http.StatusNotFound, "not_found_error", "", "not found")
}

// sessionInfo is what the page learns about its session. Never the
// credential.
type sessionInfo struct {
	UserID   string            `json:"user_id"`
	Role     string            `json:"user_role"`
	Master   bool              `json:"master_key"`
	Admin    bool              `json:"is_admin"`
	ReadsAll bool              `json:"reads_all"`
	Teams    map[string]string `json:"teams"`
	// KeyTokenID names the key the session signed in with, so the page
	// can warn before it blocks, deletes or regenerates it.
	KeyTokenID string    `json:"key_token_id"`
	CSRF       string    `json:"csrf_token"`
	Expires    time.Time `json:"expires"`
}

func (h *Handler) info(id api.Identity, ss session) sessionInfo {
	teams := id.Teams
	if teams == nil {
		teams = map[string]string{}
	}
	return sessionInfo{UserID: id.UserID, Role: id.Role, Master: id.Master, Admin: id.Admin, ReadsAll: id.ReadsAll,
		Teams: teams, KeyTokenID: id.KeyTokenID, CSRF: h.sealer.csrf(ss.ID), Expires: time.Unix(ss.Expires, 0).UTC()}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

// signIn takes {"credential": "sk-..."} (JSON or form) and sets the cookie.
func (h *Handler) signIn(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Header.Get(CSRFHeader) == "" {
		api.WriteError(w, http.StatusForbidden, "auth_error", "", "sign-in needs the "+CSRFHeader+" header")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 4096+1))
	if err != nil || len(body) > 4096 {
		api.WriteError(w, http.StatusBadRequest, "bad_request_error", "credential", "request body too large")
		return
	}
	var in struct {
		Credential string `json:"credential"`
	}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		v, _ := url.ParseQuery(string(body))
		in.Credential = v.Get("credential")
	} else if err := json.Unmarshal(body, &in); err != nil {
		api.WriteError(w, http.StatusBadRequest, "bad_request_error", "credential", "send {\"credential\": \"sk-...\"}")
		return
	}
	cred := strings.TrimSpace(in.Credential)
	if cred == "" {
		api.WriteError(w, http.StatusBadRequest, "bad_request_error", "credential", "enter the master key or your virtual key")
		return
	}
	id, err := h.cfg.Identify(r.Context(), cred)
	if err != nil {
		code := http.StatusUnauthorized
		if st, ok := status.FromError(err); ok {
			if c := runtime.HTTPStatusFromCode(st.Code()); c >= 500 {
				code = c
			}
		}
		msg := "this key cannot sign in: use the master key or your own active virtual key"
		slog.Warn("admin ui: sign-in refused", "remote", r.RemoteAddr, "status", code) // never the key
		if code >= 500 {
			msg = "the control plane could not check the key, try again"
		}
		api.WriteError(w, code, "auth_error", "credential", msg)
		return
	}
	now := h.cfg.Now()
	ss := session{ID: newSessionID(), Credential: cred, Expires: now.Add(h.cfg.TTL).Unix()}
	v, err := h.sealer.seal(ss)
	if err != nil {
		api.WriteError(w, http.StatusInternalServerError, "internal_error", "", "internal error")
		return
	}
	slog.Info("admin ui: signed in", "user_id", id.UserID, "role", id.Role, "remote", r.RemoteAddr)
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: v, Path: Prefix, HttpOnly: true, Secure: h.secure(r),
		SameSite: http.SameSiteStrictMode, Expires: time.Unix(ss.Expires, 0),
	})
	writeJSON(w, h.info(id, ss))
}

// current returns the request's live session, or false.
func (h *Handler) current(r *http.Request) (session, bool) {
	c, err := r.Cookie(CookieName)
	if err != nil {
		return session{}, false
	}
	ss, err := h.sealer.open(c.Value, h.cfg.Now())
	if err != nil || h.revoked.has(ss.ID) {
		return session{}, false
	}
	return ss, true
}

// live is current for a request about to use the session: it also
// refuses (503) while this replica's sign-out list may be stale.
func (h *Handler) live(w http.ResponseWriter, r *http.Request) (session, bool) {
	ss, ok := h.current(r)
	if !ok {
		api.WriteError(w, http.StatusUnauthorized, "auth_error", "", "not signed in")
		return session{}, false
	}
	if !h.fresh() {
		api.WriteError(w, http.StatusServiceUnavailable, "service_unavailable", "", "the control plane cannot check sessions right now, try again")
		return session{}, false
	}
	return ss, true
}

func (h *Handler) whoami(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	ss, ok := h.live(w, r)
	if !ok {
		return
	}
	id, err := h.cfg.Identify(r.Context(), ss.Credential)
	if err != nil {
		api.WriteError(w, http.StatusUnauthorized, "auth_error", "", "the session's key no longer signs in")
		return
	}
	writeJSON(w, h.info(id, ss))
}

// secure reports whether the cookie must be Secure. A forged
// X-Forwarded-Proto can only make the browser drop its own cookie.
func (h *Handler) secure(r *http.Request) bool {
	return h.cfg.Secure || r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

func (h *Handler) clearCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: Prefix, HttpOnly: true, Secure: h.secure(r),
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
}

func (h *Handler) signOut(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	ss, ok := h.current(r)
	if ok {
		if !h.sealer.csrfOK(ss.ID, r.Header.Get(CSRFHeader)) {
			api.WriteError(w, http.StatusForbidden, "auth_error", "", "missing or wrong "+CSRFHeader+" header")
			return
		}
		if h.shared != nil {
			// Stored before the answer: a sign-out that other replicas
			// would not see is not reported as done (the cookie stays, the
			// page may retry).
			if err := h.shared.st.RevokeSession(r.Context(), ss.ID, time.Unix(ss.Expires, 0)); err != nil {
				slog.Warn("admin ui: sign-out not recorded", "err", err)
				api.WriteError(w, http.StatusServiceUnavailable, "service_unavailable", "", "the sign-out could not be recorded, try again")
				return
			}
		}
		h.revoked.add(ss.ID, ss.Expires, h.cfg.Now())
	}
	h.clearCookie(w, r)
	writeJSON(w, map[string]string{"status": "signed_out"})
}

// forward sends /ui/api/<path> to the management API as <path>, with the
// session's credential and nothing else the browser sent that could
// authenticate.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	ss, ok := h.live(w, r)
	if !ok {
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && !h.sealer.csrfOK(ss.ID, r.Header.Get(CSRFHeader)) {
		api.WriteError(w, http.StatusForbidden, "auth_error", "", "missing or wrong "+CSRFHeader+" header")
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = strings.TrimPrefix(r.URL.Path, Prefix+"/api")
	r2.URL.RawPath = ""
	r2.RequestURI = ""
	r2.Header.Del("Cookie")
	r2.Header.Del("X-Admin-Key")
	r2.Header.Del(CSRFHeader)
	r2.Header.Set("Authorization", "Bearer "+ss.Credential)
	if r2.Header.Get("Litellm-Changed-By") == "" {
		r2.Header.Set("Litellm-Changed-By", "admin-ui")
	}
	h.cfg.API.ServeHTTP(w, r2)
}

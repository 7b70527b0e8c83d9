package ui

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/api"
)

const master = "sk-master-ui-test"

// fakeAPI records what the forwarded request looked like.
type fakeAPI struct{ last *http.Request }

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.last = r
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"path":"` + r.URL.Path + `"}`))
}

func identify(_ context.Context, cred string) (api.Identity, error) {
	switch cred {
	case master:
		return api.Identity{UserID: "master_key", Role: "proxy_admin", Master: true, Admin: true, ReadsAll: true}, nil
	case "sk-alice-key":
		return api.Identity{UserID: "alice", Role: "internal_user", Teams: map[string]string{"t1": "user"}}, nil
	}
	return api.Identity{}, errors.New("invalid credential")
}

type env struct {
	h   *Handler
	api *fakeAPI
	now time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{api: &fakeAPI{}, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	h, err := New(Config{API: e.api, Identify: identify, MasterKey: master, Now: func() time.Time { return e.now }})
	if err != nil {
		t.Fatal(err)
	}
	e.h = h
	return e
}

func (e *env) do(method, path, body string, hdr map[string]string, cookie *http.Cookie) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	if cookie != nil {
		r.AddCookie(cookie)
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	return w
}

// signIn returns the session cookie and CSRF token for cred.
func (e *env) signIn(t *testing.T, cred string) (*http.Cookie, string) {
	t.Helper()
	w := e.do("POST", "/ui/session", `{"credential":"`+cred+`"}`, map[string]string{CSRFHeader: "sign-in", "Content-Type": "application/json"}, nil)
	if w.Code != 200 {
		t.Fatalf("sign-in: %d %s", w.Code, w.Body)
	}
	if strings.Contains(w.Body.String(), cred) {
		t.Fatal("the sign-in answer echoes the credential")
	}
	var info sessionInfo
	if err := json.Unmarshal(w.Body.Bytes(), &info); err != nil {
		t.Fatal(err)
	}
	cs := w.Result().Cookies()
	if len(cs) != 1 {
		t.Fatalf("cookies: %v", cs)
	}
	c := cs[0]
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/ui" || c.Name != CookieName {
		t.Fatalf("cookie attributes: %+v", c)
	}
	if strings.Contains(c.Value, cred) || strings.Contains(c.Value, strings.TrimPrefix(cred, "sk-")) {
		t.Fatal("the cookie holds the credential in clear")
	}
	return &http.Cookie{Name: c.Name, Value: c.Value}, info.CSRF
}

func TestSecurityHeadersOnEveryResponse(t *testing.T) {
	e := newEnv(t)
	for _, p := range []string{"/ui/", "/ui/assets/app.js", "/ui/session", "/ui/api/key/list", "/ui/nope"} {
		w := e.do("GET", p, "", nil, nil)
		csp := w.Header().Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "unsafe") {
			t.Errorf("%s: CSP %q", p, csp)
		}
		if w.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no nosniff", p)
		}
	}
	if w := e.do("GET", "/ui/", "", nil, nil); w.Code != 200 || !strings.Contains(w.Body.String(), "Sign in") {
		t.Fatalf("index: %d", w.Code)
	}
	if w := e.do("GET", "/ui/assets/vendor/", "", nil, nil); w.Code != 404 {
		t.Errorf("directory listing: %d", w.Code)
	}
}

// TestNoInlineScriptOrStyle keeps the page compatible with the CSP.
func TestNoInlineScriptOrStyle(t *testing.T) {
	b, err := fs.ReadFile(assets, "assets/index.html")
	if err != nil {
		t.Fatal(err)
	}
	html := string(b)
	if regexp.MustCompile(`<script(?:[^>]*)>\s*[^<\s]`).MatchString(html) || strings.Contains(html, "<style") ||
		regexp.MustCompile(`\son[a-z]+=`).MatchString(html) || strings.Contains(html, "style=") {
		t.Fatal("index.html has inline script, style or event handlers")
	}
	err = fs.WalkDir(assets, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".js") || strings.Contains(p, "vendor/") {
			return err
		}
		src, _ := fs.ReadFile(assets, p)
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function", "localStorage", "sessionStorage", "document.write"} {
			if strings.Contains(string(src), bad) {
				t.Errorf("%s uses %s", p, bad)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestVendoredUPlotUnmodified pins the vendored chart library to the
// digests in its VERSION file.
func TestVendoredUPlotUnmodified(t *testing.T) {
	v, err := fs.ReadFile(assets, "assets/vendor/uplot/VERSION")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"uPlot.esm.js", "uPlot.min.css"} {
		m := regexp.MustCompile(regexp.QuoteMeta(name) + `\s+sha256 ([0-9a-f]{64})`).FindSubmatch(v)
		if m == nil {
			t.Fatalf("VERSION has no digest for %s", name)
		}
		b, err := fs.ReadFile(assets, "assets/vendor/uplot/"+name)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); got != string(m[1]) {
			t.Errorf("%s: sha256 %s, VERSION says %s", name, got, m[1])
		}
	}
	if _, err := fs.Stat(assets, "assets/vendor/uplot/LICENSE"); err != nil {
		t.Error("uPlot's LICENSE is not vendored")
	}
}

func TestSignIn(t *testing.T) {
	e := newEnv(t)
	hdr := map[string]string{CSRFHeader: "sign-in", "Content-Type": "application/json"}
	if w := e.do("POST", "/ui/session", `{"credential":"sk-wrong"}`, hdr, nil); w.Code != 401 || len(w.Result().Cookies()) != 0 {
		t.Errorf("wrong key: %d %v", w.Code, w.Result().Cookies())
	}
	if w := e.do("POST", "/ui/session", `{"credential":""}`, hdr, nil); w.Code != 400 {
		t.Errorf("empty key: %d", w.Code)
	}
	if w := e.do("POST", "/ui/session", `not json`, hdr, nil); w.Code != 400 {
		t.Errorf("bad body: %d", w.Code)
	}
	// Without the custom header (a cross-site form could not add it).
	if w := e.do("POST", "/ui/session", `{"credential":"`+master+`"}`, map[string]string{"Content-Type": "application/json"}, nil); w.Code != 403 {
		t.Errorf("no CSRF header: %d", w.Code)
	}
	// From another origin.
	cross := map[string]string{CSRFHeader: "x", "Content-Type": "application/json", "Origin": "https://evil.example"}
	if w := e.do("POST", "/ui/session", `{"credential":"`+master+`"}`, cross, nil); w.Code != 403 {
		t.Errorf("cross-origin: %d", w.Code)
	}
	cross = map[string]string{CSRFHeader: "x", "Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}
	if w := e.do("POST", "/ui/session", `{"credential":"`+master+`"}`, cross, nil); w.Code != 403 {
		t.Errorf("cross-site: %d", w.Code)
	}
	// A form post works too (same origin).
	form := map[string]string{CSRFHeader: "x", "Content-Type": "application/x-www-form-urlencoded"}
	if w := e.do("POST", "/ui/session", "credential=sk-alice-key", form, nil); w.Code != 200 {
		t.Errorf("form sign-in: %d %s", w.Code, w.Body)
	}
	c, _ := e.signIn(t, "sk-alice-key")
	w := e.do("GET", "/ui/session", "", nil, c)
	var info sessionInfo
	_ = json.Unmarshal(w.Body.Bytes(), &info)
	if w.Code != 200 || info.UserID != "alice" || info.Admin || info.Teams["t1"] != "user" {
		t.Errorf("whoami: %d %+v", w.Code, info)
	}
}

func TestForwardAddsCredentialAndStripsBrowserAuth(t *testing.T) {
	e := newEnv(t)
	c, csrf := e.signIn(t, master)
	w := e.do("GET", "/ui/api/key/list?page=2", "", map[string]string{"X-Admin-Key": "sk-other", "Authorization": "Bearer sk-other"}, c)
	if w.Code != 200 {
		t.Fatalf("forward: %d %s", w.Code, w.Body)
	}
	r := e.api.last
	if r.URL.Path != "/key/list" || r.URL.RawQuery != "page=2" {
		t.Errorf("forwarded to %s?%s", r.URL.Path, r.URL.RawQuery)
	}
	if r.Header.Get("Authorization") != "Bearer "+master || r.Header.Get("X-Admin-Key") != "" || r.Header.Get("Cookie") != "" {
		t.Errorf("forwarded headers: %v", r.Header)
	}
	if w.Header().Get("Cache-Control") != "no-store" {
		t.Error("API answers must not be cached")
	}
	// Writes need the session's CSRF token.
	if w := e.do("POST", "/ui/api/key/block", `{}`, nil, c); w.Code != 403 {
		t.Errorf("write without CSRF: %d", w.Code)
	}
	if w := e.do("POST", "/ui/api/key/block", `{}`, map[string]string{CSRFHeader: "wrong"}, c); w.Code != 403 {
		t.Errorf("write with a wrong CSRF token: %d", w.Code)
	}
	_, csrf2 := e.signIn(t, master)
	if w := e.do("POST", "/ui/api/key/block", `{}`, map[string]string{CSRFHeader: csrf2}, c); w.Code != 403 {
		t.Errorf("another session's CSRF token: %d", w.Code)
	}
	e.api.last = nil
	if w := e.do("POST", "/ui/api/key/block", `{}`, map[string]string{CSRFHeader: csrf}, c); w.Code != 200 || e.api.last == nil {
		t.Errorf("write with CSRF: %d", w.Code)
	}
	if e.api.last.Header.Get(CSRFHeader) != "" {
		t.Error("the CSRF token is forwarded")
	}
	// No session: 401 in the envelope, nothing forwarded.
	e.api.last = nil
	w = e.do("GET", "/ui/api/key/list", "", map[string]string{"Authorization": "Bearer " + master}, nil)
	if w.Code != 401 || e.api.last != nil || !strings.Contains(w.Body.String(), `"code":"401"`) {
		t.Errorf("no session: %d %s", w.Code, w.Body)
	}
}

func TestSessionExpiresTamperAndSignOut(t *testing.T) {
	e := newEnv(t)
	c, csrf := e.signIn(t, master)
	// Tampered cookie.
	bad := *c
	b := []byte(bad.Value)
	b[len(b)/2] ^= 1
	if b[len(b)/2] == '-' || b[len(b)/2] == '_' {
		b[len(b)/2] = 'A'
	}
	bad.Value = string(b)
	if w := e.do("GET", "/ui/api/key/list", "", nil, &bad); w.Code != 401 {
		t.Errorf("tampered cookie: %d", w.Code)
	}
	// Another master key cannot open it.
	other, _ := New(Config{API: e.api, Identify: identify, MasterKey: "sk-another-master", Now: func() time.Time { return e.now }})
	r := httptest.NewRequest("GET", "/ui/api/key/list", nil)
	r.AddCookie(c)
	w := httptest.NewRecorder()
	other.ServeHTTP(w, r)
	if w.Code != 401 {
		t.Errorf("cookie under another master key: %d", w.Code)
	}
	// Sign-out needs the CSRF token, then revokes the session.
	if w := e.do("POST", "/ui/session/logout", "", nil, c); w.Code != 403 {
		t.Errorf("logout without CSRF: %d", w.Code)
	}
	if w := e.do("POST", "/ui/session/logout", "", map[string]string{CSRFHeader: csrf}, c); w.Code != 200 {
		t.Errorf("logout: %d", w.Code)
	} else if cs := w.Result().Cookies(); len(cs) != 1 || cs[0].MaxAge >= 0 {
		t.Errorf("logout does not clear the cookie: %v", cs)
	}
	if w := e.do("GET", "/ui/api/key/list", "", nil, c); w.Code != 401 {
		t.Errorf("after logout: %d", w.Code)
	}
	// Expiry.
	c, _ = e.signIn(t, master)
	e.now = e.now.Add(DefaultTTL)
	if w := e.do("GET", "/ui/session", "", nil, c); w.Code != 401 {
		t.Errorf("expired session: %d", w.Code)
	}
}

func TestSecureCookieBehindTLSTerminator(t *testing.T) {
	e := newEnv(t)
	hdr := map[string]string{CSRFHeader: "x", "Content-Type": "application/json", "X-Forwarded-Proto": "https"}
	w := e.do("POST", "/ui/session", `{"credential":"`+master+`"}`, hdr, nil)
	if cs := w.Result().Cookies(); w.Code != 200 || len(cs) != 1 || !cs[0].Secure {
		t.Fatalf("behind a TLS terminator: %d %v", w.Code, cs)
	}
	w = e.do("POST", "/ui/session", `{"credential":"`+master+`"}`, map[string]string{CSRFHeader: "x", "Content-Type": "application/json"}, nil)
	if cs := w.Result().Cookies(); len(cs) != 1 || cs[0].Secure {
		t.Fatalf("plain HTTP on loopback: %v", cs)
	}
}

package saas

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	saasv1 "github.com/tollgate-gw/tollgate/gen/tollgate/saas/v1"

	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// fakeState holds a few keys and teams.
type fakeState struct {
	keys  map[[32]byte]state.KeyInfo
	teams map[string]*state.Team
}

func (f *fakeState) Ready() bool     { return true }
func (f *fakeState) Revision() int64 { return 1 }
func (f *fakeState) LookupKey(h *[32]byte, _ int64) (state.KeyInfo, bool) {
	k, ok := f.keys[*h]
	return k, ok
}
func (f *fakeState) Team(id string) (*state.Team, bool)    { t, ok := f.teams[id]; return t, ok }
func (f *fakeState) User(string) (*state.User, bool)       { return nil, false }
func (f *fakeState) Org(string) (*state.Org, bool)         { return nil, false }
func (f *fakeState) Deployments(string) []*state.Model     { return nil }
func (f *fakeState) ModelNames() []string                  { return nil }
func (f *fakeState) AccessGroup(string) []string           { return nil }
func (f *fakeState) Settings() *state.Settings             { return &state.Settings{} }
func (f *fakeState) EndUser(string) (*state.EndUser, bool) { return nil, false }
func (f *fakeState) KeyModelSpend(string, string) int64    { return 0 }
func (f *fakeState) add(secret, team, status string, credits int64, groups ...state.TeamModelGroup) {
	f.keys[sha256.Sum256([]byte(secret))] = state.KeyInfo{TokenID: "tok-" + team, TeamID: team, Policy: &state.Policy{}}
	f.teams[team] = &state.Team{TeamID: team, SaaS: &state.TeamSaaS{Status: status, CreditsRemaining: credits, ModelGroups: groups, KeyName: "sk-...abcd"}}
}

// fakeJobs records what the proxy sends to the control plane.
type fakeJobs struct {
	saasv1.JobServiceClient
	mu      sync.Mutex
	records []*saasv1.RecordCallRequest
	jobTeam map[string]string
}

func (f *fakeJobs) CreateJob(_ context.Context, r *saasv1.CreateJobRequest, _ ...grpc.CallOption) (*saasv1.JobReply, error) {
	return &saasv1.JobReply{Body: []byte(`{"job_id":"j1","team_id":"` + r.TeamId + `"}`)}, nil
}

func (f *fakeJobs) StartCall(_ context.Context, r *saasv1.StartCallRequest, _ ...grpc.CallOption) (*saasv1.JobReply, error) {
	if f.jobTeam[r.JobId] == "" {
		return nil, status.Error(codes.NotFound, "Job not found")
	}
	if f.jobTeam[r.JobId] != r.TeamId {
		return nil, status.Error(codes.PermissionDenied, "Job does not belong to your team")
	}
	return &saasv1.JobReply{Body: []byte(`{}`)}, nil
}

func (f *fakeJobs) RecordCall(_ context.Context, r *saasv1.RecordCallRequest, _ ...grpc.CallOption) (*saasv1.JobReply, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records = append(f.records, r)
	return &saasv1.JobReply{Body: []byte(`{}`)}, nil
}

// upstream answers like the proxy: 500 for model "bad", a completion
// otherwise (SSE when streaming, in deliberately split writes).
var upstream = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Model  string `json:"model"`
		Stream bool   `json:"stream"`
	}
	_ = json.NewDecoder(r.Body).Decode(&body)
	w.Header().Set("X-Litellm-Model-Id", "dep-"+body.Model)
	switch {
	case body.Model == "slow":
		// The proxy answers 504 when the attempt's deadline passes.
		<-r.Context().Done()
		w.WriteHeader(http.StatusGatewayTimeout)
	case body.Model == "broken":
		// Headers and a first chunk, then the upstream connection breaks:
		// the proxy aborts the response.
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		_, _ = w.Write([]byte(`data: {"model":"broken","choices":[{"delta":{"content":"Hi"}}]}` + "\n\n"))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	case body.Model == "bad":
		w.WriteHeader(500)
		_, _ = w.Write([]byte(`{"error":{"message":"boom"}}`))
	case body.Stream:
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		for _, part := range []string{`data: {"id":"c","model":"`, body.Model + `","choices":[{"delta":{"content":"Hi"}}]}` + "\n\n",
			`data: {"model":"` + body.Model + `","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}` + "\n\ndata: [DONE]\n\n"} {
			_, _ = w.Write([]byte(part))
			w.(http.Flusher).Flush()
		}
	default:
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"model":%q,"choices":[{"message":{"content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}`, body.Model)
	}
})

func setup() (http.Handler, *fakeJobs) {
	st := &fakeState{keys: map[[32]byte]state.KeyInfo{}, teams: map[string]*state.Team{}}
	st.add("sk-team-a-secret", "a", "active", 5, state.TeamModelGroup{Name: "G", Models: []string{"bad", "good"}})
	st.add("sk-team-b-secret", "b", "active", 5, state.TeamModelGroup{Name: "S", Models: []string{"slow", "good"}})
	st.add("sk-team-s-secret", "s", "suspended", 5)
	st.add("sk-team-z-secret", "z", "active", 0)
	st.add("sk-team-c-secret", "c", "active", 5, state.TeamModelGroup{Name: "B", Models: []string{"broken", "good"}})
	jobs := &fakeJobs{jobTeam: map[string]string{"ja": "a", "jb": "b", "jc": "c"}}
	return New(Options{State: st, Proxy: upstream, Jobs: jobs, ProxyID: "p1", AttemptTimeout: 50 * time.Millisecond}), jobs
}

func do(h http.Handler, method, path, auth, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func wantDetail(t *testing.T, w *httptest.ResponseRecorder, code int, detail string) {
	t.Helper()
	want, _ := json.Marshal(map[string]string{"detail": detail})
	if w.Code != code || strings.TrimSpace(w.Body.String()) != string(want) {
		t.Fatalf("got %d %s, want %d %s", w.Code, w.Body, code, want)
	}
}

func TestUnauthenticated401(t *testing.T) {
	h, _ := setup()
	for _, auth := range []string{"", "Basic abc", "Bearer nope", "Bearer sk-unknown-key-123456", "sk-team-a-secret"} {
		wantDetail(t, do(h, "POST", "/api/jobs/create", auth, `{"job_type":"x"}`), 401, "Invalid or missing API key")
	}
}

func TestRefused403(t *testing.T) {
	h, _ := setup()
	for _, key := range []string{"sk-team-s-secret", "sk-team-z-secret"} {
		wantDetail(t, do(h, "POST", "/api/jobs/create", "Bearer "+key, `{"job_type":"x"}`), 403, "Team suspended or insufficient credits")
		wantDetail(t, do(h, "POST", "/api/jobs/ja/llm-call", "Bearer "+key, `{}`), 403, "Team suspended or insufficient credits")
		if w := do(h, "GET", "/api/teams/verify", "Bearer "+key, ""); w.Code != 200 {
			t.Fatalf("verify of a refused team: %d %s", w.Code, w.Body)
		}
	}
	// Another team's id or job: 403, nothing about it.
	wantDetail(t, do(h, "GET", "/api/teams/a", "Bearer sk-team-b-secret", ""), 403, "Not authorized to access this team")
	wantDetail(t, do(h, "POST", "/api/jobs/create", "Bearer sk-team-b-secret", `{"team_id":"a","job_type":"x"}`), 403, "Not authorized to access this team")
	wantDetail(t, do(h, "POST", "/api/jobs/ja/llm-call", "Bearer sk-team-a-secret", `{"model_group":"Other","messages":[{"role":"user","content":"x"}]}`),
		403, "Team does not have access to the requested model")
}

func TestTeamViewHasNoKey(t *testing.T) {
	h, _ := setup()
	w := do(h, "GET", "/api/teams/a", "Bearer sk-team-a-secret", "")
	if w.Code != 200 || strings.Contains(w.Body.String(), "sk-team-a-secret") || !strings.Contains(w.Body.String(), `"virtual_key":"sk-...abcd"`) {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

func TestLLMCallFallsBackAndRecordsEveryAttempt(t *testing.T) {
	h, jobs := setup()
	w := do(h, "POST", "/api/jobs/ja/llm-call", "Bearer sk-team-a-secret", `{"model_group":"G","messages":[{"role":"user","content":"x"}],"purpose":"p"}`)
	if w.Code != 200 {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	var out struct {
		CallID   string         `json:"call_id"`
		Response map[string]any `json:"response"`
		Metadata map[string]any `json:"metadata"`
	}
	_ = json.Unmarshal(w.Body.Bytes(), &out)
	if out.Response["content"] != "Hello" || out.Metadata["tokens_used"] != 15.0 || out.Metadata["model_group"] != "G" ||
		strings.Contains(w.Body.String(), "good") {
		t.Fatalf("answer %s", w.Body)
	}
	if len(jobs.records) != 2 || jobs.records[0].Error == "" || jobs.records[0].Attempt != 1 || jobs.records[0].Model != "bad" ||
		jobs.records[1].Error != "" || jobs.records[1].DeploymentId != "dep-good" || jobs.records[1].CallId != out.CallID {
		t.Fatalf("records %v", jobs.records)
	}
	wantDetail(t, do(h, "POST", "/api/jobs/nope/llm-call", "Bearer sk-team-a-secret", `{"model_group":"G","messages":[{"role":"user","content":"x"}]}`), 404, "Job not found")
}

func TestStreamNamesTheGroup(t *testing.T) {
	h, jobs := setup()
	w := do(h, "POST", "/api/jobs/ja/llm-call-stream", "Bearer sk-team-a-secret", `{"model_group":"G","messages":[{"role":"user","content":"x"}]}`)
	body := w.Body.String()
	if w.Code != 200 || strings.Contains(body, "good") || strings.Count(body, `"model":"G"`) != 2 || !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("%d %q", w.Code, body)
	}
	if r := jobs.records[len(jobs.records)-1]; r.TotalTokens != 7 || r.Error != "" {
		t.Fatalf("record %v", r)
	}
}

func TestLLMCallFallsBackOnTimeout(t *testing.T) {
	h, jobs := setup()
	w := do(h, "POST", "/api/jobs/jb/llm-call", "Bearer sk-team-b-secret", `{"model_group":"S","messages":[{"role":"user","content":"x"}]}`)
	if w.Code != 200 || len(jobs.records) != 2 || jobs.records[0].Status != 504 || jobs.records[0].Error == "" || jobs.records[1].Model != "good" {
		t.Fatalf("%d %s %v", w.Code, w.Body, jobs.records)
	}
}

func TestGroupRouter(t *testing.T) {
	st := &fakeState{keys: map[[32]byte]state.KeyInfo{}, teams: map[string]*state.Team{}}
	st.add("sk-team-a-secret", "a", "active", 5, state.TeamModelGroup{Name: "G", Models: []string{"bad", "good"}})
	g := NewGroupRouter(Options{State: st, Proxy: upstream})
	serve := func(key, body string) (*httptest.ResponseRecorder, bool, string) {
		req := httptest.NewRequest("POST", "/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		w := httptest.NewRecorder()
		handled := g.Serve(w, req)
		rest, _ := io.ReadAll(req.Body)
		return w, handled, string(rest)
	}
	w, handled, _ := serve("sk-team-a-secret", `{"model":"G","messages":[]}`)
	if !handled || w.Code != 200 || !strings.Contains(w.Body.String(), `"model":"good"`) {
		t.Fatalf("group as model: %v %d %s", handled, w.Code, w.Body)
	}
	// A model name, or another key: left to the proxy with the body intact.
	for _, c := range []struct{ key, body string }{{"sk-team-a-secret", `{"model":"good"}`}, {"sk-other-key-123", `{"model":"G"}`}} {
		if _, handled, rest := serve(c.key, c.body); handled || rest != c.body {
			t.Fatalf("%s: handled %v, body %q", c.key, handled, rest)
		}
	}
}

// A call whose response breaks is recorded as failed before anything else:
// streamed, the client's response is then aborted (the job will cost no
// credit); not yet streamed, the next model of the group answers.
func TestBrokenCallIsRecordedAsFailed(t *testing.T) {
	h, jobs := setup()
	func() {
		defer func() {
			if v := recover(); v != http.ErrAbortHandler {
				t.Fatalf("streamed broken call: recovered %v, want http.ErrAbortHandler", v)
			}
		}()
		do(h, "POST", "/api/jobs/jc/llm-call-stream", "Bearer sk-team-c-secret", `{"model_group":"B","messages":[{"role":"user","content":"x"}]}`)
	}()
	if len(jobs.records) != 1 || jobs.records[0].Model != "broken" || jobs.records[0].Error == "" {
		t.Fatalf("records after a broken stream: %v", jobs.records)
	}
	w := do(h, "POST", "/api/jobs/jc/llm-call", "Bearer sk-team-c-secret", `{"model_group":"B","messages":[{"role":"user","content":"x"}]}`)
	if w.Code != 200 || len(jobs.records) != 3 || jobs.records[1].Error == "" || jobs.records[2].Model != "good" || jobs.records[2].Error != "" {
		t.Fatalf("non-streamed broken call: %d %s, records %v", w.Code, w.Body, jobs.records)
	}
}

// Ids the control plane could not store are 404 here, not a 5xx later.
func TestInsaneIDsAre404(t *testing.T) {
	h, _ := setup()
	for _, path := range []string{"/api/jobs/a%00b", "/api/credits/balance?team_id=%ff", "/api/teams/x%01y"} {
		wantDetail(t, do(h, "GET", path, "Bearer sk-team-a-secret", ""), 404, "Not Found")
	}
}

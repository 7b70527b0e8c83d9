package spend

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce/enforcetest"
	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// BenchmarkRecord is what a request pays on its own goroutine for its spend
// record (issue 7's "outbox append"): pricing the outcome, a record id,
// and queueing it for the group commit. The commits run on the writer
// goroutine meanwhile; BenchmarkOutbox measures their throughput.
func BenchmarkRecord(b *testing.B) {
	st := enforcetest.New()
	st.AddModel(&state.Model{ID: "dep-mini", ModelName: "gpt-4o-mini", UpstreamModel: "openai/gpt-4o-mini", InputCost: 150_000, OutputCost: 600_000})
	ob := open(b, filepath.Join(b.TempDir(), "spend"))
	defer ob.Close()
	rc := &Recorder{Outbox: ob, State: st}
	o := proxy.Outcome{TokenID: "tok-1", TeamID: "team-a", UserID: "user-a", EndUser: "end-user-42",
		Model: "gpt-4o-mini", DeploymentID: "dep-mini", UpstreamModel: "openai/gpt-4o-mini", Route: enforce.RouteChat,
		Status: 200, UsageKnown: true, Usage: proxy.Usage{PromptTokens: 40, CompletionTokens: 200, TotalTokens: 240},
		Start: time.Now(), Duration: 300 * time.Millisecond}
	b.ReportAllocs()
	for b.Loop() {
		rc.Record(o)
	}
	b.StopTimer()
	flush(b, ob)
}

package spend

import (
	crand "crypto/rand"
	"encoding/hex"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// Recorder turns the proxy's outcomes into spend records in an outbox.
type Recorder struct {
	Outbox *Outbox
	State  state.Reader
}

// Record is the proxy's OnUsage hook. Requests that cost nothing and are
// not billable (an upstream error without usage) are not recorded.
func (rc *Recorder) Record(o proxy.Outcome) {
	r := NewRecord(rc.State, o)
	if r == nil {
		return
	}
	if err := rc.Outbox.Append(r); err != nil {
		rc.Outbox.log.Error("spend record dropped", "err", err, "token_id", o.TokenID, "cost", r.Cost)
	}
}

// NewRecord prices an outcome with its deployment's prices (proxy.Cost: the
// total is rounded up once). It returns nil for an
// outcome with nothing to bill: no usage and an error status.
func NewRecord(st state.Reader, o proxy.Outcome) *syncv1.SpendRecord {
	prompt, completion := o.Usage.PromptTokens, o.Usage.CompletionTokens
	estimated := false
	if !o.UsageKnown {
		if o.Status >= 400 || o.Status == 0 {
			return nil
		}
		// A 2xx without usage: an aborted stream, or an upstream that
		// ignored include_usage. Nothing was reported; the record says so.
		estimated = true
	}
	var dep *state.Model
	for _, d := range st.Deployments(o.Model) {
		if d.ID == o.DeploymentID {
			dep = d
			break
		}
	}
	end := o.Start.Add(o.Duration)
	return &syncv1.SpendRecord{
		RequestId:        requestID(o.ResponseID),
		TokenId:          o.TokenID,
		TeamId:           o.TeamID,
		UserId:           o.UserID,
		OrganizationId:   o.OrganizationID,
		EndUser:          o.EndUser,
		Model:            o.Model,
		DeploymentId:     o.DeploymentID,
		PromptTokens:     prompt,
		CompletionTokens: completion,
		Cost:             proxy.Cost(dep, o.Usage), // nano-USD, rounded up once
		Streamed:         o.Streamed,
		Estimated:        estimated,
		Status:           int32(o.Status),
		Route:            o.Route.Path(),
		StartUnixNano:    o.Start.UnixNano(),
		EndUnixNano:      end.UnixNano(),
	}
}

// requestID is a spend record's request_id: the upstream response's id, as
// LiteLLM records it (clients find their request's spend with the id of
// the completion they got), else a fresh one. Several records may share an
// upstream id (an upstream that repeats ids); the store does not require
// request_id to be unique.
func requestID(responseID string) string {
	if responseID != "" {
		return responseID
	}
	return newRequestID()
}

func newRequestID() string {
	var b [16]byte
	_, _ = crand.Read(b[:])
	return "req-" + hex.EncodeToString(b[:])
}

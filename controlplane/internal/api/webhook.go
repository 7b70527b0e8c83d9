package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
)

// KeyCheckTimeout bounds a custom_key_generate_webhook call; past it the
// check fails closed.
const KeyCheckTimeout = 3 * time.Second

// keyCheck is the body POSTed to custom_key_generate_webhook.
type keyCheck struct {
	Action  string          `json:"action"`
	Request json.RawMessage `json:"request"`
	Caller  keyCheckCaller  `json:"caller"`
}

type keyCheckCaller struct {
	UserID   string            `json:"user_id"`
	UserRole string            `json:"user_role"`
	Teams    map[string]string `json:"teams,omitempty"`
}

// keyCheckAnswer is LiteLLM's custom_generate_key_fn shape:
// {"decision": bool, "message": "..."}.
type keyCheckAnswer struct {
	Decision *bool  `json:"decision"`
	Message  string `json:"message"`
}

// customKeyCheck asks the operator's webhook whether c may create the key
// req describes. It runs outside any store transaction, is bounded by
// KeyCheckTimeout, and fails closed: no answer, a non-2xx answer or one
// without a decision is a refusal (403).
func (s *Server) customKeyCheck(ctx context.Context, url string, c authz.Caller, a authz.Action, req proto.Message) error {
	if url == "" {
		return nil
	}
	body, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(req)
	if err != nil {
		return internalError()
	}
	// The request may hold a caller-chosen secret; the webhook never sees it.
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) == nil {
		delete(fields, "key")
		delete(fields, "new_key")
		body, _ = json.Marshal(fields)
	}
	payload, _ := json.Marshal(keyCheck{Action: string(a), Request: body, Caller: keyCheckCaller{UserID: c.ID, UserRole: c.Role, Teams: c.Teams}})
	cctx, cancel := context.WithTimeout(ctx, s.keyCheckTimeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(cctx, http.MethodPost, url, bytes.NewReader(payload))
	if err != nil {
		return forbidden("custom key generation check failed: webhook unavailable")
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := s.httpClient.Do(hreq)
	if err != nil {
		slog.WarnContext(ctx, "custom_key_generate_webhook unreachable", "err", err)
		return forbidden("custom key generation check failed: webhook unavailable")
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var ans keyCheckAnswer
	if resp.StatusCode/100 != 2 || json.Unmarshal(b, &ans) != nil || ans.Decision == nil {
		slog.WarnContext(ctx, "custom_key_generate_webhook gave no decision", "status", resp.StatusCode)
		return forbidden("custom key generation check failed: webhook gave no decision")
	}
	if !*ans.Decision {
		msg := ans.Message
		if msg == "" {
			msg = "key generation denied by the custom check"
		}
		if len(msg) > 512 {
			msg = msg[:512]
		}
		return forbidden(msg)
	}
	return nil
}

// Package api implements the management API: the gRPC services of
// tollgate.admin.v1 and the REST gateway that serves them at LiteLLM's paths.
//
// # Architecture
//
// Each service is a thin type over *Server. A call authenticates (master key
// or the caller's own virtual key), asks authz.Decide, validates its input
// (any invalid field is a 4xx before anything is written), and performs its
// writes inside one store transaction together with the audit row. REST calls
// reach the same methods in-process through grpc-gateway, so both transports
// share one code path, one authorization decision and one error model.
//
// # Failure modes
//
// Store errors are classified in errors.go: conflicts become 400, missing
// objects 404, an unreachable store 503; anything else is logged with its
// cause and answered with a generic 500.
package api

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/events"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/syncserver"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

// Server holds what every management service needs.
type Server struct {
	store           store.Store
	master          masterKey
	clock           func() time.Time
	httpClient      *http.Client
	keyCheckTimeout time.Duration
	proxyStats      func() syncserver.Stats
}

// Option configures a Server.
type Option func(*Server)

// WithClock injects the time source (tests).
func WithClock(now func() time.Time) Option { return func(s *Server) { s.clock = now } }

// New returns a Server over st that accepts masterKey as the admin credential.
func New(st store.Store, masterKey string, opts ...Option) *Server {
	s := &Server{store: st, master: newMasterKey(masterKey), clock: time.Now, httpClient: &http.Client{}, keyCheckTimeout: KeyCheckTimeout}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Register adds every management service to g.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	adminv1.RegisterKeyServiceServer(g, &keyService{s: s})
	adminv1.RegisterTeamServiceServer(g, &teamService{s: s})
	adminv1.RegisterUserServiceServer(g, &userService{s: s})
	adminv1.RegisterOrganizationServiceServer(g, &orgService{s: s})
	adminv1.RegisterModelServiceServer(g, &modelService{s: s})
	adminv1.RegisterSettingsServiceServer(g, &settingsService{s: s})
	adminv1.RegisterAuditServiceServer(g, &auditService{s: s})
	adminv1.RegisterSpendServiceServer(g, &spendService{s: s})
	adminv1.RegisterProxyServiceServer(g, &proxyService{s: s})
	adminv1.RegisterCustomerServiceServer(g, &customerService{s: s})
	adminv1.RegisterBudgetServiceServer(g, &budgetService{s: s})
}

// audit writes one audit row in tx. before/after are API views (never key
// material); nil means absent.
func (s *Server) audit(ctx context.Context, tx store.Tx, c authz.Caller, action, objectType, objectID string, before, after proto.Message) error {
	enc := func(m proto.Message) json.RawMessage {
		if m == nil {
			return nil
		}
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			return nil
		}
		return b
	}
	e := store.AuditEntry{
		ID:         keys.NewID(),
		Action:     action,
		ObjectType: objectType,
		ObjectID:   objectID,
		Caller:     c.ID,
		ChangedBy:  changedBy(ctx),
		Before:     enc(before),
		After:      enc(after),
		CreatedAt:  s.now(),
	}
	if err := tx.AppendAudit(ctx, e); err != nil {
		return err
	}
	return s.emit(ctx, tx, e)
}

// emit enqueues the lifecycle event of an audit row (key.created,
// key.updated, ..., user.created, team.created) in the same transaction,
// for the event webhook (controlplane/internal/events). Its data is the
// object's ids and display fields, never key material.
func (s *Server) emit(ctx context.Context, tx store.Tx, e store.AuditEntry) error {
	typ := events.ForAudit(e.Action, e.ObjectType)
	if typ == "" {
		return nil
	}
	data := events.AuditPayload(e.ObjectType, e.ObjectID, e.Caller, e.ChangedBy, e.Before, e.After, e.CreatedAt)
	return events.Enqueue(ctx, tx, typ, data, e.CreatedAt)
}

// nilIfNil keeps typed-nil protos out of audit rows.
func keyView(k *store.Key) proto.Message {
	if k == nil {
		return nil
	}
	return keyOut(k)
}

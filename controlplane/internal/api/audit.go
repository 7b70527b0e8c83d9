package api

import (
	"context"
	"encoding/json"
	"time"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

type auditService struct {
	adminv1.UnimplementedAuditServiceServer
	s *Server
}

// auditTime parses an RFC 3339 time or a YYYY-MM-DD date (UTC midnight).
func auditTime(param, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, badRequest(param, param+" must be an RFC 3339 time or a YYYY-MM-DD date")
}

func auditStruct(raw json.RawMessage) *structpb.Struct {
	if len(raw) == 0 {
		return nil
	}
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		return nil
	}
	s, err := structpb.NewStruct(m)
	if err != nil {
		return nil
	}
	return s
}

func (as *auditService) ListAudit(ctx context.Context, req *adminv1.ListAuditRequest) (*adminv1.ListAuditResponse, error) {
	s := as.s
	if _, err := s.authorize(ctx, authz.AuditRead, authz.Target{}); err != nil {
		return nil, err
	}
	f := store.AuditFilter{
		ObjectType: req.GetObjectType(), ObjectID: req.GetObjectId(), Caller: req.GetCaller(),
		Page: store.Page{Page: int(req.GetPage()), Size: int(req.GetPageSize())}.Normalize(),
	}
	for _, p := range []struct{ n, v string }{{"object_type", f.ObjectType}, {"object_id", f.ObjectID}, {"caller", f.Caller}} {
		if err := checkID(p.n, p.v, false); err != nil {
			return nil, err
		}
	}
	var err error
	if f.Since, err = auditTime("start_time", req.GetStartTime()); err != nil {
		return nil, err
	}
	if f.Until, err = auditTime("end_time", req.GetEndTime()); err != nil {
		return nil, err
	}
	list, total, err := s.store.Read().ListAudit(ctx, f)
	if err != nil {
		return nil, storeError(ctx, err, "audit")
	}
	out := &adminv1.ListAuditResponse{
		AuditLogs: make([]*adminv1.AuditEntry, 0, len(list)),
		Total:     int32(total), Page: int32(f.Page.Page), PageSize: int32(f.Page.Size),
		TotalPages: int32((total + f.Page.Size - 1) / f.Page.Size),
	}
	for _, e := range list {
		out.AuditLogs = append(out.AuditLogs, &adminv1.AuditEntry{
			Id: e.ID, Action: e.Action, ObjectType: e.ObjectType, ObjectId: e.ObjectID, Caller: e.Caller, ChangedBy: e.ChangedBy,
			Before: auditStruct(e.Before), After: auditStruct(e.After), CreatedAt: tsOf(e.CreatedAt),
		})
	}
	return out, nil
}

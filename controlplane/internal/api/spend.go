package api

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

// spendService serves /spend/logs and /customer/info. Spend logs hold a
// key's token_id, never its secret, and never the prompt.
type spendService struct {
	adminv1.UnimplementedSpendServiceServer
	s *Server
}

func (ss *spendService) ListSpendLogs(ctx context.Context, req *adminv1.ListSpendLogsRequest) (*adminv1.ListSpendLogsResponse, error) {
	s := ss.s
	f := store.SpendLogFilter{
		RequestID: req.GetRequestId(), UserID: req.GetUserId(), TeamID: req.GetTeamId(), EndUser: req.GetEndUser(),
		Page: store.Page{Page: int(req.GetPage()), Size: int(req.GetPageSize())}.Normalize(),
	}
	for _, p := range []struct{ n, v string }{{"request_id", f.RequestID}, {"user_id", f.UserID}, {"team_id", f.TeamID}, {"end_user", f.EndUser}} {
		if err := checkID(p.n, p.v, false); err != nil {
			return nil, err
		}
	}
	var err error
	if f.Since, err = auditTime("start_date", req.GetStartDate()); err != nil {
		return nil, err
	}
	if f.Until, err = auditTime("end_date", req.GetEndDate()); err != nil {
		return nil, err
	}
	r := s.store.Read()
	before := &authz.Object{UserID: f.UserID, TeamID: f.TeamID}
	if f.TeamID != "" {
		if t, err := r.GetTeam(ctx, f.TeamID); err == nil {
			before.OrgID = t.OrganizationID
		}
	}
	c, err := s.authorize(ctx, authz.SpendRead, authz.Target{Before: before})
	if err != nil {
		return nil, err
	}
	if !c.ReadsAll() && (f.TeamID == "" || c.TeamRole(f.TeamID, before.OrgID) != store.TeamRoleAdmin) {
		f.UserID = c.ID // others see their own spend only
	}
	if ref := req.GetApiKey(); ref != "" {
		k, err := s.findKey(ctx, r, ref)
		switch {
		case err == nil:
			f.TokenID = k.TokenID
		case status.Code(err) == codes.NotFound:
			// A deleted key keeps its logs: filter by the id as given
			// (a plaintext key that matches nothing matches no log).
			f.TokenID = ref
			if len(ref) > maxIDLen || strings.HasPrefix(ref, keys.Prefix) {
				return emptySpendPage(f.Page), nil
			}
		default:
			return nil, storeError(ctx, err, "key")
		}
	}
	list, total, err := r.ListSpendLogs(ctx, f)
	if err != nil {
		return nil, storeError(ctx, err, "spend logs")
	}
	out := emptySpendPage(f.Page)
	out.Total, out.TotalPages = int32(total), int32((total+f.Page.Size-1)/f.Page.Size)
	for i := range list {
		l := &list[i]
		out.SpendLogs = append(out.SpendLogs, &adminv1.SpendLog{
			RequestId: l.RequestID, ApiKey: l.TokenID, Spend: money.ToUSD(l.Cost),
			PromptTokens: l.PromptTokens, CompletionTokens: l.CompletionTokens, TotalTokens: l.PromptTokens + l.CompletionTokens,
			Model: l.Model, ModelId: l.DeploymentID, User: l.UserID, TeamId: l.TeamID, OrganizationId: l.OrganizationID,
			EndUser: l.EndUser, CallType: l.Route, Status: int32(l.Status), Stream: l.Streamed, Estimated: l.Estimated,
			StartTime: timestamppb.New(l.StartTime), EndTime: timestamppb.New(l.EndTime), ProxyId: l.ProxyID,
		})
	}
	return out, nil
}

func emptySpendPage(p store.Page) *adminv1.ListSpendLogsResponse {
	return &adminv1.ListSpendLogsResponse{SpendLogs: []*adminv1.SpendLog{}, Page: int32(p.Page), PageSize: int32(p.Size)}
}

// GetCustomerInfo returns an end user's spend (admins and viewers).
func (ss *spendService) GetCustomerInfo(ctx context.Context, req *adminv1.GetCustomerInfoRequest) (*adminv1.Customer, error) {
	s := ss.s
	id := req.GetEndUserId()
	if err := checkID("end_user_id", id, true); err != nil {
		return nil, err
	}
	c, err := s.authorize(ctx, authz.SpendRead, authz.Target{})
	if err != nil {
		return nil, err
	}
	if !c.ReadsAll() {
		return nil, notFound("end_user_id", "customer not found")
	}
	e, err := s.store.Read().GetEndUser(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("end_user_id", "customer not found")
	}
	if err != nil {
		return nil, storeError(ctx, err, "customer")
	}
	return customerOut(&e), nil
}

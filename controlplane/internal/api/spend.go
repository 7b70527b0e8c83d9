package api

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"time"

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
	empty, err := s.spendScope(ctx, r, &f, req.GetApiKey())
	if err != nil {
		return nil, err
	}
	if empty {
		return emptySpendPage(f.Page), nil
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

// spendScope authorizes a spend read filtered by f and narrows f to what the
// caller may see: admins and viewers everything, a team admin its team,
// everyone else its own spend. apiKey (a key or its token_id) becomes
// f.TokenID. empty reports a filter that can match nothing.
func (s *Server) spendScope(ctx context.Context, r store.Reader, f *store.SpendLogFilter, apiKey string) (empty bool, err error) {
	before := &authz.Object{UserID: f.UserID, TeamID: f.TeamID}
	if f.TeamID != "" {
		if t, err := r.GetTeam(ctx, f.TeamID); err == nil {
			before.OrgID = t.OrganizationID
		}
	}
	c, err := s.authorize(ctx, authz.SpendRead, authz.Target{Before: before})
	if err != nil {
		return false, err
	}
	if !c.ReadsAll() && (f.TeamID == "" || c.TeamRole(f.TeamID, before.OrgID) != store.TeamRoleAdmin) {
		f.UserID = c.ID // others see their own spend only
	}
	if ref := apiKey; ref != "" {
		k, err := s.findKey(ctx, r, ref)
		switch {
		case err == nil:
			f.TokenID = k.TokenID
		case status.Code(err) == codes.NotFound:
			// A deleted key keeps its logs: filter by the id as given
			// (a plaintext key that matches nothing matches no log).
			f.TokenID = ref
			if len(ref) > maxIDLen || strings.HasPrefix(ref, keys.Prefix) {
				return true, nil
			}
		default:
			return false, storeError(ctx, err, "key")
		}
	}
	return false, nil
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

// maxReportDays bounds a report's range.
const maxReportDays = 366

// GetSpendReport sums spend per UTC day and group (key, team, user, model
// or end user) over [start_date, end_date), for what the caller may see
// (the same narrowing as /spend/logs).
func (ss *spendService) GetSpendReport(ctx context.Context, req *adminv1.GetSpendReportRequest) (*adminv1.GetSpendReportResponse, error) {
	s := ss.s
	by, err := reportGroup(req.GetGroupBy())
	if err != nil {
		return nil, err
	}
	f := store.SpendLogFilter{UserID: req.GetUserId(), TeamID: req.GetTeamId()}
	for _, p := range []struct{ n, v string }{{"user_id", f.UserID}, {"team_id", f.TeamID}} {
		if err := checkID(p.n, p.v, false); err != nil {
			return nil, err
		}
	}
	if f.Since, err = auditTime("start_date", req.GetStartDate()); err != nil {
		return nil, err
	}
	if f.Until, err = auditTime("end_date", req.GetEndDate()); err != nil {
		return nil, err
	}
	day := func(t time.Time) time.Time { return t.UTC().Truncate(24 * time.Hour) }
	if f.Until.IsZero() {
		f.Until = day(s.now()).Add(24 * time.Hour)
	}
	if f.Since.IsZero() {
		f.Since = f.Until.Add(-30 * 24 * time.Hour)
	}
	if !f.Since.Before(f.Until) {
		return nil, badRequest("start_date", "start_date must be before end_date")
	}
	if f.Until.Sub(f.Since) > maxReportDays*24*time.Hour {
		return nil, badRequest("end_date", "a spend report covers at most 366 days")
	}
	r := s.store.Read()
	empty, err := s.spendScope(ctx, r, &f, req.GetApiKey())
	if err != nil {
		return nil, err
	}
	out := &adminv1.GetSpendReportResponse{GroupBy: by, StartDate: f.Since.Format(time.RFC3339), EndDate: f.Until.Format(time.RFC3339)}
	first, last := day(f.Since), day(f.Until.Add(-time.Nanosecond))
	index := map[string]int{}
	for d := first; !d.After(last); d = d.Add(24 * time.Hour) {
		index[d.Format(time.DateOnly)] = len(out.Days)
		out.Days = append(out.Days, &adminv1.SpendReportDay{GroupByDay: d.Format(time.DateOnly), Groups: []*adminv1.SpendReportGroup{}})
	}
	if empty {
		return out, nil
	}
	rep, ok := r.(store.SpendReporter)
	if !ok {
		return nil, apiError(codes.Unimplemented, 501, "not_implemented", "", "this store cannot sum spend")
	}
	rows, err := rep.SpendReport(ctx, f, reportColumn[by])
	if err != nil {
		return nil, storeError(ctx, err, "spend logs")
	}
	sums := map[reportCell]*reportSum{}
	for _, row := range rows {
		if di, ok := index[row.Day.Format(time.DateOnly)]; ok {
			sums[reportCell{di, row.Group}] = &reportSum{row.Cost, row.Requests, row.Tokens}
		}
	}
	return reportOut(out, sums), nil
}

// reportColumn maps a report's group_by to the store's group.
var reportColumn = map[string]store.SpendGroup{
	"api_key": store.SpendByKey, "team": store.SpendByTeam, "user": store.SpendByUser,
	"model": store.SpendByModel, "customer": store.SpendByEndUser,
}

// reportCell is one (day index, group) of a report; reportSum its figures.
type reportCell struct {
	day   int
	group string
}

type reportSum struct{ cost, requests, tokens int64 }

// reportOut fills out's days with sums, groups in order.
func reportOut(out *adminv1.GetSpendReportResponse, sums map[reportCell]*reportSum) *adminv1.GetSpendReportResponse {
	cells := make([]reportCell, 0, len(sums))
	for k := range sums {
		cells = append(cells, k)
	}
	slices.SortFunc(cells, func(a, b reportCell) int { return cmp.Or(cmp.Compare(a.day, b.day), cmp.Compare(a.group, b.group)) })
	dayTotals := make([]int64, len(out.Days))
	for _, k := range cells {
		c := sums[k]
		dayTotals[k.day] += c.cost
		out.Days[k.day].Groups = append(out.Days[k.day].Groups, &adminv1.SpendReportGroup{
			Group: k.group, TotalSpend: money.ToUSD(c.cost), Requests: c.requests, TotalTokens: c.tokens})
	}
	for i, t := range dayTotals {
		out.Days[i].TotalSpend = money.ToUSD(t)
	}
	return out
}

// reportGroup normalizes group_by.
func reportGroup(v string) (string, error) {
	switch v {
	case "", "team", "team_id":
		return "team", nil
	case "api_key", "key":
		return "api_key", nil
	case "user", "user_id":
		return "user", nil
	case "model":
		return "model", nil
	case "customer", "end_user":
		return "customer", nil
	}
	return "", badRequest("group_by", "group_by must be one of api_key, team, user, model, customer")
}

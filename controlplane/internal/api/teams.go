package api

import (
	"context"
	"errors"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

type teamService struct {
	adminv1.UnimplementedTeamServiceServer
	s *Server
}

var teamRoles = []string{store.TeamRoleAdmin, store.TeamRoleUser}

func (ts *teamService) NewTeam(ctx context.Context, req *adminv1.NewTeamRequest) (*adminv1.Team, error) {
	s := ts.s
	c, err := s.authorize(ctx, authz.TeamWrite, authz.Target{})
	if err != nil {
		return nil, err
	}
	now := s.now()
	t := store.Team{TeamID: req.GetTeamId(), TeamAlias: req.GetTeamAlias(), OrganizationID: req.GetOrganizationId(), Blocked: req.GetBlocked(), CreatedAt: now, UpdatedAt: now}
	for _, f := range []struct{ n, v string }{{"team_id", t.TeamID}, {"team_alias", t.TeamAlias}, {"organization_id", t.OrganizationID}} {
		if err := checkID(f.n, f.v, false); err != nil {
			return nil, err
		}
	}
	if t.TeamID == "" {
		t.TeamID = keys.NewID()
	}
	if t.Models, err = strList("models", req.GetModels()); err != nil {
		return nil, err
	}
	if t.Limits, err = limitsFrom(now, req.GetMaxBudget(), req.GetSoftBudget(), req.GetBudgetDuration(), req.GetRpmLimit(), req.GetTpmLimit(), req.GetMaxParallelRequests()); err != nil {
		return nil, err
	}
	if t.TeamMemberBudget, err = usdPtr("team_member_budget", req.GetTeamMemberBudget()); err != nil {
		return nil, err
	}
	if t.Metadata, err = structJSON("metadata", req.GetMetadata()); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, m := range req.GetMembersWithRoles() {
		if err := checkID("members_with_roles.user_id", m.GetUserId(), true); err != nil {
			return nil, err
		}
		role := m.GetRole()
		if role == "" {
			role = store.TeamRoleUser
		}
		if role != store.TeamRoleAdmin && role != store.TeamRoleUser {
			return nil, badRequest("members_with_roles", `members_with_roles.role must be "admin" or "user"`)
		}
		if seen[m.GetUserId()] {
			return nil, badRequest("members_with_roles", "user "+m.GetUserId()+" is listed twice")
		}
		seen[m.GetUserId()] = true
		mb, err := usdPtr("members_with_roles.max_budget_in_team", m.GetMaxBudgetInTeam())
		if err != nil {
			return nil, err
		}
		t.Members = append(t.Members, store.TeamMember{UserID: m.GetUserId(), Role: role, MaxBudgetInTeam: mb})
	}
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		if t.OrganizationID != "" {
			if _, err := tx.GetOrganization(ctx, t.OrganizationID); errors.Is(err, store.ErrNotFound) {
				return badRequest("organization_id", "organization_id "+t.OrganizationID+" does not exist")
			} else if err != nil {
				return err
			}
		}
		for _, m := range t.Members {
			if err := s.ensureUser(ctx, tx, m.UserID, ""); err != nil {
				return err
			}
		}
		if err := tx.CreateTeam(ctx, t); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, "created", "team", t.TeamID, nil, teamOut(&t))
	})
	if err != nil {
		return nil, storeError(ctx, err, "team")
	}
	return teamOut(&t), nil
}

// mutateTeam is one read-modify-write of a team with an audit row.
func (s *Server) mutateTeam(ctx context.Context, teamID, auditAction string, fn func(tx store.Tx, t *store.Team) error) (store.Team, error) {
	c, err := s.authorize(ctx, authz.TeamWrite, authz.Target{})
	if err != nil {
		return store.Team{}, err
	}
	if err := checkID("team_id", teamID, true); err != nil {
		return store.Team{}, err
	}
	var out store.Team
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		t, err := tx.GetTeam(ctx, teamID)
		if err != nil {
			return err
		}
		before := t
		before.Members = append([]store.TeamMember(nil), t.Members...)
		if err := fn(tx, &t); err != nil {
			return err
		}
		t.UpdatedAt = s.now()
		if err := tx.UpdateTeam(ctx, t); err != nil {
			return err
		}
		out = t
		return s.audit(ctx, tx, c, auditAction, "team", t.TeamID, teamOut(&before), teamOut(&t))
	})
	if err != nil {
		return store.Team{}, storeError(ctx, err, "team")
	}
	return out, nil
}

func (ts *teamService) UpdateTeam(ctx context.Context, req *adminv1.UpdateTeamRequest) (*adminv1.Team, error) {
	s := ts.s
	now := s.now()
	p, err := patchFrom(now, req.GetModels(), req.GetMaxBudget(), req.GetSoftBudget(), req.GetBudgetDuration(), req.GetRpmLimit(), req.GetTpmLimit(), req.GetMaxParallelRequests(), req.GetMetadata())
	if err != nil {
		return nil, err
	}
	memberBudget, err := usdPtr("team_member_budget", req.GetTeamMemberBudget())
	if err != nil {
		return nil, err
	}
	if req.TeamAlias != nil {
		if err := checkID("team_alias", req.GetTeamAlias().GetValue(), false); err != nil {
			return nil, err
		}
	}
	if req.OrganizationId != nil {
		if err := checkID("organization_id", req.GetOrganizationId().GetValue(), false); err != nil {
			return nil, err
		}
	}
	t, err := s.mutateTeam(ctx, req.GetTeamId(), "updated", func(tx store.Tx, t *store.Team) error {
		if req.TeamAlias != nil {
			t.TeamAlias = req.GetTeamAlias().GetValue()
		}
		if req.OrganizationId != nil {
			org := req.GetOrganizationId().GetValue()
			if org != "" {
				if _, err := tx.GetOrganization(ctx, org); errors.Is(err, store.ErrNotFound) {
					return badRequest("organization_id", "organization_id "+org+" does not exist")
				} else if err != nil {
					return err
				}
			}
			t.OrganizationID = org
		}
		p.apply(&t.Models, &t.Limits, &t.Metadata)
		if memberBudget != nil {
			t.TeamMemberBudget = memberBudget
		}
		if req.Blocked != nil {
			t.Blocked = req.GetBlocked().GetValue()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return teamOut(&t), nil
}

func (ts *teamService) DeleteTeams(ctx context.Context, req *adminv1.DeleteTeamsRequest) (*adminv1.DeleteResponse, error) {
	s := ts.s
	c, err := s.authorize(ctx, authz.TeamWrite, authz.Target{})
	if err != nil {
		return nil, err
	}
	if len(req.GetTeamIds()) == 0 || len(req.GetTeamIds()) > maxListLen {
		return nil, badRequest("team_ids", "team_ids must list 1 to 1000 teams")
	}
	var deleted []string
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		deleted = deleted[:0]
		for _, id := range req.GetTeamIds() {
			t, err := tx.GetTeam(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				return notFound("team_ids", "team "+id+" not found")
			} else if err != nil {
				return err
			}
			if err := tx.DeleteTeam(ctx, id); err != nil {
				return err
			}
			if err := s.audit(ctx, tx, c, "deleted", "team", id, teamOut(&t), nil); err != nil {
				return err
			}
			deleted = append(deleted, id)
		}
		return nil
	})
	if err != nil {
		return nil, storeError(ctx, err, "team")
	}
	return &adminv1.DeleteResponse{DeletedIds: deleted}, nil
}

func (ts *teamService) AddTeamMember(ctx context.Context, req *adminv1.TeamMemberAddRequest) (*adminv1.Team, error) {
	s := ts.s
	members, err := parseMembers(req.GetMember(), store.TeamRoleUser, teamRoles...)
	if err != nil {
		return nil, err
	}
	mb, err := usdPtr("max_budget_in_team", req.GetMaxBudgetInTeam())
	if err != nil {
		return nil, err
	}
	t, err := s.mutateTeam(ctx, req.GetTeamId(), "updated", func(tx store.Tx, t *store.Team) error {
		for _, m := range members {
			if _, ok := t.Member(m.UserID); ok {
				return badRequest("member", "user "+m.UserID+" is already a member of this team")
			}
			if err := s.ensureUser(ctx, tx, m.UserID, m.UserEmail); err != nil {
				return err
			}
			budget := mb
			if budget == nil {
				budget = t.TeamMemberBudget
			}
			t.Members = append(t.Members, store.TeamMember{UserID: m.UserID, Role: m.Role, MaxBudgetInTeam: budget})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return teamOut(&t), nil
}

func (ts *teamService) DeleteTeamMember(ctx context.Context, req *adminv1.TeamMemberDeleteRequest) (*adminv1.Team, error) {
	if err := checkID("user_id", req.GetUserId(), true); err != nil {
		return nil, err
	}
	t, err := ts.s.mutateTeam(ctx, req.GetTeamId(), "updated", func(tx store.Tx, t *store.Team) error {
		for i, m := range t.Members {
			if m.UserID == req.GetUserId() {
				t.Members = append(t.Members[:i:i], t.Members[i+1:]...)
				return nil
			}
		}
		return notFound("user_id", "user "+req.GetUserId()+" is not a member of this team")
	})
	if err != nil {
		return nil, err
	}
	return teamOut(&t), nil
}

func (ts *teamService) UpdateTeamMember(ctx context.Context, req *adminv1.TeamMemberUpdateRequest) (*adminv1.TeamMember, error) {
	if err := checkID("user_id", req.GetUserId(), true); err != nil {
		return nil, err
	}
	if r := req.GetRole(); r != "" && r != store.TeamRoleAdmin && r != store.TeamRoleUser {
		return nil, badRequest("role", `role must be "admin" or "user"`)
	}
	mb, err := usdPtr("max_budget_in_team", req.GetMaxBudgetInTeam())
	if err != nil {
		return nil, err
	}
	var out store.TeamMember
	_, err = ts.s.mutateTeam(ctx, req.GetTeamId(), "updated", func(tx store.Tx, t *store.Team) error {
		for i := range t.Members {
			m := &t.Members[i]
			if m.UserID != req.GetUserId() {
				continue
			}
			if req.GetRole() != "" {
				m.Role = req.GetRole()
			}
			if mb != nil {
				m.MaxBudgetInTeam = mb
			}
			out = *m
			return nil
		}
		return notFound("user_id", "user "+req.GetUserId()+" is not a member of this team")
	})
	if err != nil {
		return nil, err
	}
	return &adminv1.TeamMember{UserId: out.UserID, Role: out.Role, MaxBudgetInTeam: usdValue(out.MaxBudgetInTeam)}, nil
}

func (ts *teamService) setBlocked(ctx context.Context, id string, blocked bool) (*adminv1.Team, error) {
	action := "blocked"
	if !blocked {
		action = "unblocked"
	}
	t, err := ts.s.mutateTeam(ctx, id, action, func(_ store.Tx, t *store.Team) error {
		t.Blocked = blocked
		return nil
	})
	if err != nil {
		return nil, err
	}
	return teamOut(&t), nil
}

func (ts *teamService) BlockTeam(ctx context.Context, req *adminv1.TeamIdRequest) (*adminv1.Team, error) {
	return ts.setBlocked(ctx, req.GetTeamId(), true)
}

func (ts *teamService) UnblockTeam(ctx context.Context, req *adminv1.TeamIdRequest) (*adminv1.Team, error) {
	return ts.setBlocked(ctx, req.GetTeamId(), false)
}

func (ts *teamService) GetTeamInfo(ctx context.Context, req *adminv1.TeamIdRequest) (*adminv1.TeamInfoResponse, error) {
	s := ts.s
	c, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkID("team_id", req.GetTeamId(), true); err != nil {
		return nil, err
	}
	r := s.store.Read()
	t, err := r.GetTeam(ctx, req.GetTeamId())
	if err != nil {
		return nil, storeError(ctx, err, "team")
	}
	owner := ""
	if _, ok := t.Member(c.ID); ok {
		owner = c.ID
	}
	if d := authz.Decide(c, authz.TeamRead, authz.Target{OwnerUserID: owner}); !d.Allowed {
		return nil, notFound("team_id", "team not found")
	}
	ks, _, err := r.ListKeys(ctx, store.KeyFilter{TeamID: t.TeamID, Page: store.Page{Size: store.MaxPageSize}})
	if err != nil {
		return nil, storeError(ctx, err, "team")
	}
	out := &adminv1.TeamInfoResponse{TeamId: t.TeamID, TeamInfo: teamOut(&t)}
	for i := range ks {
		out.Keys = append(out.Keys, keyOut(&ks[i]))
	}
	return out, nil
}

func (ts *teamService) ListTeams(ctx context.Context, req *adminv1.ListTeamsRequest) (*adminv1.ListTeamsResponse, error) {
	s := ts.s
	c, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	f := store.TeamFilter{UserID: req.GetUserId(), OrganizationID: req.GetOrganizationId(), Page: store.Page{Page: int(req.GetPage()), Size: int(req.GetPageSize())}.Normalize()}
	if d := authz.Decide(c, authz.TeamRead, authz.Target{}); !d.Allowed {
		if f.UserID != "" && f.UserID != c.ID {
			return nil, forbidden("you may only list your own teams")
		}
		f.UserID = c.ID // non-admins see the teams they belong to
	}
	list, total, err := s.store.Read().ListTeams(ctx, f)
	if err != nil {
		return nil, storeError(ctx, err, "team")
	}
	out := &adminv1.ListTeamsResponse{Total: int32(total), Teams: make([]*adminv1.Team, 0, len(list))}
	for i := range list {
		out.Teams = append(out.Teams, teamOut(&list[i]))
	}
	return out, nil
}

package api

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"

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
	c, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	if err := withOrg(ctx, s.store.Read(), &c, req.GetOrganizationId()); err != nil {
		return nil, storeError(ctx, err, "organization")
	}
	if err := decide(c, authz.TeamNew, authz.Target{After: &authz.Object{OrgID: req.GetOrganizationId()}}); err != nil {
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
	if t.TeamMemberPermissions, err = memberPermissions(req.GetTeamMemberPermissions()); err != nil {
		return nil, err
	}
	if t.Metadata, err = structJSON("metadata", req.GetMetadata()); err != nil {
		return nil, err
	}
	if t.ModelAliases, err = modelAliases(req.GetModelAliases()); err != nil {
		return nil, err
	}
	var specs []memberSpec
	var budgets []*int64
	for _, m := range req.GetMembersWithRoles() {
		if m.GetUserId() == "" && m.GetUserEmail() == "" {
			return nil, badRequest("members_with_roles", "members_with_roles.user_id or members_with_roles.user_email is required")
		}
		if err := checkID("members_with_roles.user_id", m.GetUserId(), false); err != nil {
			return nil, err
		}
		if err := checkID("members_with_roles.user_email", m.GetUserEmail(), false); err != nil {
			return nil, err
		}
		role := m.GetRole()
		if role == "" {
			role = store.TeamRoleUser
		}
		if role != store.TeamRoleAdmin && role != store.TeamRoleUser {
			return nil, badRequest("members_with_roles", `members_with_roles.role must be "admin" or "user"`)
		}
		mb, err := usdPtr("members_with_roles.max_budget_in_team", m.GetMaxBudgetInTeam())
		if err != nil {
			return nil, err
		}
		specs = append(specs, memberSpec{UserID: m.GetUserId(), Role: role, UserEmail: m.GetUserEmail()})
		budgets = append(budgets, mb)
	}
	// LiteLLM makes the creator a team admin unless it listed itself; the
	// master key stands for LiteLLM's proxy admin user, default_user_id.
	creator := c.ID
	if c.Master {
		creator = masterUserID
	}
	listed := false
	for _, m := range specs {
		listed = listed || m.UserID == creator
	}
	if !listed {
		specs = append(specs, memberSpec{UserID: creator, Role: store.TeamRoleAdmin})
		budgets = append(budgets, nil)
	}
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		if t.OrganizationID != "" {
			if _, err := tx.GetOrganization(ctx, t.OrganizationID); errors.Is(err, store.ErrNotFound) {
				return badRequest("organization_id", "organization_id "+t.OrganizationID+" does not exist")
			} else if err != nil {
				return err
			}
		}
		t.Members = t.Members[:0]
		for i, m := range specs {
			// Only admins and org admins create teams; members named by
			// email are found or created as LiteLLM does.
			if err := s.resolveMember(ctx, tx, c, &m, c.Admin()); err != nil {
				return err
			}
			if _, dup := t.Member(m.UserID); dup {
				return badRequest("members_with_roles", "user "+m.UserID+" is listed twice")
			}
			if m.UserID != masterUserID || !c.Master {
				if err := s.ensureUser(ctx, tx, c, m.UserID, m.UserEmail); err != nil {
					return err
				}
			}
			t.Members = append(t.Members, store.TeamMember{UserID: m.UserID, Role: m.Role, MaxBudgetInTeam: budgets[i], UserEmail: m.UserEmail})
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

// memberPermissions validates team_member_permissions: known key-management
// routes, each once. An empty list is nil (no list).
func memberPermissions(in []string) ([]string, error) {
	out, err := strList("team_member_permissions", in)
	if err != nil || len(out) == 0 {
		return nil, err
	}
	for i, r := range out {
		if !slices.Contains(authz.TeamMemberRoutes, r) {
			return nil, badRequest("team_member_permissions", "team_member_permissions may only list key-management routes "+strings.Join(authz.TeamMemberRoutes, ", ")+"; got "+strconv.Quote(r))
		}
		if slices.Contains(out[:i], r) {
			return nil, badRequest("team_member_permissions", "team_member_permissions lists "+strconv.Quote(r)+" twice")
		}
	}
	return out, nil
}

// mutateTeam is one read-modify-write of a team with an audit row. target
// builds what authz needs from the stored team (nil: the team itself).
func (s *Server) mutateTeam(ctx context.Context, teamID string, action authz.Action, auditAction string, target func(c *authz.Caller, t *store.Team) []authz.Target, fn func(tx store.Tx, t *store.Team) error) (store.Team, error) {
	c, err := s.begin(ctx, action)
	if err != nil {
		return store.Team{}, err
	}
	if err := checkID("team_id", teamID, true); err != nil {
		return store.Team{}, err
	}
	var out store.Team
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		t, err := tx.GetTeam(ctx, teamID)
		if errors.Is(err, store.ErrNotFound) {
			return notFound("team_id", "team not found")
		} else if err != nil {
			return err
		}
		cc := c
		if err := withOrg(ctx, tx, &cc, t.OrganizationID); err != nil {
			return err
		}
		var tgs []authz.Target
		if target != nil {
			tgs = target(&cc, &t)
		} else {
			o := teamObj(&t)
			tgs = []authz.Target{{Before: &o}}
		}
		for _, tg := range tgs {
			if err := decide(cc, action, tg); err != nil {
				return err
			}
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

// memberTarget is the target of a member call on userID with the requested
// role ("" keeps the current one).
func memberTarget(t *store.Team, userID, role string) authz.Target {
	var tg authz.Target
	if m, ok := t.Member(userID); ok {
		b := memberObj(t, m)
		tg.Before = &b
	} else {
		// Not a member: the team is the reference (visibility).
		tg.After = &authz.Object{UserID: userID, TeamID: t.TeamID, OrgID: t.OrganizationID, Role: role}
	}
	if role != "" {
		a := authz.Object{UserID: userID, TeamID: t.TeamID, OrgID: t.OrganizationID, Role: role}
		tg.After = &a
	} else if tg.Before != nil {
		a := *tg.Before
		tg.After = &a
	}
	return tg
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
	perms, hasPerms, err := listValue("team_member_permissions", req.GetTeamMemberPermissions())
	if err != nil {
		return nil, err
	}
	if perms, err = memberPermissions(perms); err != nil {
		return nil, err
	}
	var aliases map[string]string
	if req.ModelAliases != nil {
		if aliases, err = modelAliasStruct(req.GetModelAliases()); err != nil {
			return nil, err
		}
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
	t, err := s.mutateTeam(ctx, req.GetTeamId(), authz.TeamUpdate, "updated", nil, func(tx store.Tx, t *store.Team) error {
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
		if hasPerms {
			t.TeamMemberPermissions = perms
		}
		if req.ModelAliases != nil {
			t.ModelAliases = aliases
		}
		if req.Blocked != nil {
			t.Blocked = req.GetBlocked().GetValue()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// LiteLLM answers /team/update with {"team_id", "data": team}; the
	// team's own fields stay at the top level for earlier clients.
	out := teamOut(&t)
	out.Data = teamOut(&t)
	return out, nil
}

func (ts *teamService) DeleteTeams(ctx context.Context, req *adminv1.DeleteTeamsRequest) (*adminv1.DeleteResponse, error) {
	s := ts.s
	c, err := s.begin(ctx, authz.TeamDelete)
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
				return notFound("team_ids", "team not found")
			} else if err != nil {
				return err
			}
			o := teamObj(&t)
			if err := decide(c, authz.TeamDelete, authz.Target{Before: &o}); err != nil {
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
	var caller authz.Caller
	t, err := s.mutateTeam(ctx, req.GetTeamId(), authz.TeamMemberAdd, "updated", func(c *authz.Caller, t *store.Team) []authz.Target {
		caller = *c
		tgs := make([]authz.Target, 0, len(members))
		for _, m := range members {
			tgs = append(tgs, authz.Target{After: &authz.Object{UserID: m.UserID, TeamID: t.TeamID, OrgID: t.OrganizationID, Role: m.Role}})
		}
		return tgs
	}, func(tx store.Tx, t *store.Team) error {
		for _, m := range members {
			if err := s.resolveMember(ctx, tx, caller, &m, caller.Admin()); err != nil {
				return err
			}
			if _, ok := t.Member(m.UserID); ok {
				return badRequest("member", "user "+m.UserID+" is already a member of this team")
			}
			if !caller.Admin() {
				// Only proxy_admin creates users, implicitly or not.
				if _, err := tx.GetUser(ctx, m.UserID); errors.Is(err, store.ErrNotFound) {
					return badRequest("member", "user "+m.UserID+" does not exist; only proxy_admin may create users")
				} else if err != nil {
					return err
				}
			}
			if err := s.ensureUser(ctx, tx, caller, m.UserID, m.UserEmail); err != nil {
				return err
			}
			budget := mb
			if budget == nil {
				budget = t.TeamMemberBudget
			}
			t.Members = append(t.Members, store.TeamMember{UserID: m.UserID, Role: m.Role, MaxBudgetInTeam: budget, UserEmail: m.UserEmail})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return teamOut(&t), nil
}

// memberRef resolves the member a member_delete / member_update names: its
// user_id, or the member added by (or whose user has) user_email. It
// returns "" when nobody matches; the call then answers as for a
// non-member, after authorization.
func (s *Server) memberRef(ctx context.Context, teamID, userID, email string) (string, error) {
	if userID != "" {
		return userID, checkID("user_id", userID, true)
	}
	if email == "" {
		return "", badRequest("user_id", "user_id or user_email is required")
	}
	if err := checkID("user_email", email, true); err != nil {
		return "", err
	}
	r := s.store.Read()
	t, err := r.GetTeam(ctx, teamID)
	if err != nil {
		return "", nil
	}
	id, err := memberByRef(ctx, r, &t, "", email)
	if err != nil {
		return "", nil
	}
	return id, nil
}

func notMember(userID, email string) error {
	if userID == "" {
		return notFound("user_email", "no member of this team has user_email "+email)
	}
	return notFound("user_id", "user "+userID+" is not a member of this team")
}

func (ts *teamService) DeleteTeamMember(ctx context.Context, req *adminv1.TeamMemberDeleteRequest) (*adminv1.Team, error) {
	userID, err := ts.s.memberRef(ctx, req.GetTeamId(), req.GetUserId(), req.GetUserEmail())
	if err != nil {
		return nil, err
	}
	t, err := ts.s.mutateTeam(ctx, req.GetTeamId(), authz.TeamMemberDelete, "updated", func(_ *authz.Caller, t *store.Team) []authz.Target {
		return []authz.Target{memberTarget(t, userID, "")}
	}, func(tx store.Tx, t *store.Team) error {
		for i, m := range t.Members {
			if userID != "" && m.UserID == userID {
				t.Members = append(t.Members[:i:i], t.Members[i+1:]...)
				return nil
			}
		}
		return notMember(userID, req.GetUserEmail())
	})
	if err != nil {
		return nil, err
	}
	return teamOut(&t), nil
}

func (ts *teamService) UpdateTeamMember(ctx context.Context, req *adminv1.TeamMemberUpdateRequest) (*adminv1.TeamMember, error) {
	userID, err := ts.s.memberRef(ctx, req.GetTeamId(), req.GetUserId(), req.GetUserEmail())
	if err != nil {
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
	_, err = ts.s.mutateTeam(ctx, req.GetTeamId(), authz.TeamMemberUpdate, "updated", func(_ *authz.Caller, t *store.Team) []authz.Target {
		tg := memberTarget(t, userID, req.GetRole())
		if tg.Before == nil {
			tg.After = nil // not a member: 404 for team admins, as for a foreign team
		} else {
			tg.After.BudgetID = tg.Before.BudgetID
			if req.BudgetId != nil {
				tg.After.BudgetID = req.GetBudgetId().GetValue()
			}
		}
		return []authz.Target{tg}
	}, func(tx store.Tx, t *store.Team) error {
		for i := range t.Members {
			m := &t.Members[i]
			if userID == "" || m.UserID != userID {
				continue
			}
			if req.GetRole() != "" {
				m.Role = req.GetRole()
			}
			if err := linkMember(ctx, tx, m, req.GetBudgetId(), mb != nil); err != nil {
				return err
			}
			if mb != nil {
				m.MaxBudgetInTeam = mb
			}
			out = *m
			return nil
		}
		return notMember(userID, req.GetUserEmail())
	})
	if err != nil {
		return nil, err
	}
	return &adminv1.TeamMember{UserId: out.UserID, Role: out.Role, MaxBudgetInTeam: usdValue(out.MaxBudgetInTeam), UserEmail: out.UserEmail, BudgetId: out.BudgetID}, nil
}

// modelAliases validates a team's model_aliases: names as ids, at most
// maxListLen of them.
func modelAliases(in map[string]string) (map[string]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	if len(in) > maxListLen {
		return nil, badRequest("model_aliases", "model_aliases has too many entries")
	}
	for k, v := range in {
		if err := checkID("model_aliases", k, true); err != nil {
			return nil, err
		}
		if err := checkID("model_aliases", v, true); err != nil {
			return nil, err
		}
	}
	return in, nil
}

// modelAliasStruct reads /team/update's model_aliases object (string values).
func modelAliasStruct(st *structpb.Struct) (map[string]string, error) {
	m := make(map[string]string, len(st.GetFields()))
	for k, v := range st.GetFields() {
		sv, ok := v.GetKind().(*structpb.Value_StringValue)
		if !ok {
			return nil, badRequest("model_aliases", "model_aliases values must be model names (strings)")
		}
		m[k] = sv.StringValue
	}
	return modelAliases(m)
}

func (ts *teamService) setBlocked(ctx context.Context, id string, blocked bool) (*adminv1.Team, error) {
	action, az := "blocked", authz.TeamBlock
	if !blocked {
		action, az = "unblocked", authz.TeamUnblock
	}
	t, err := ts.s.mutateTeam(ctx, id, az, action, nil, func(_ store.Tx, t *store.Team) error {
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
	c, err := s.authenticateKey(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkID("team_id", req.GetTeamId(), true); err != nil {
		return nil, err
	}
	r := s.store.Read()
	t, err := r.GetTeam(ctx, req.GetTeamId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("team_id", "team not found")
	} else if err != nil {
		return nil, storeError(ctx, err, "team")
	}
	if err := withOrg(ctx, r, &c, t.OrganizationID); err != nil {
		return nil, storeError(ctx, err, "team")
	}
	o := teamObj(&t)
	if err := decide(c, authz.TeamInfo, authz.Target{Before: &o}); err != nil {
		return nil, err
	}
	ks, _, err := r.ListKeys(ctx, store.KeyFilter{TeamID: t.TeamID, Page: store.Page{Size: store.MaxPageSize}})
	if err != nil {
		return nil, storeError(ctx, err, "team")
	}
	out := &adminv1.TeamInfoResponse{TeamId: t.TeamID, TeamInfo: teamOut(&t)}
	// A team user sees its own keys in the team; admins see them all; a
	// key reading its team sees itself.
	all := c.ReadsAll() || c.TeamRole(t.TeamID, t.OrganizationID) == store.TeamRoleAdmin
	for i := range ks {
		if all || (c.ID != "" && ks[i].UserID == c.ID) || ks[i].TokenID == c.KeyTokenID {
			out.Keys = append(out.Keys, keyOut(&ks[i]))
		}
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
	if err := decide(c, authz.TeamList, authz.Target{Before: &authz.Object{UserID: f.UserID}}); err != nil {
		return nil, err
	}
	if !c.ReadsAll() {
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

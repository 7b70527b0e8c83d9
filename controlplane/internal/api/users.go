package api

import (
	"context"
	"errors"
	"slices"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

type userService struct {
	adminv1.UnimplementedUserServiceServer
	s *Server
}

func validRole(r string) bool {
	switch r {
	case store.RoleProxyAdmin, store.RoleProxyAdminViewer, store.RoleInternalUser, store.RoleInternalUserViewer:
		return true
	}
	return false
}

const rolesList = `"proxy_admin", "proxy_admin_viewer", "internal_user" or "internal_user_viewer"`

func (us *userService) NewUser(ctx context.Context, req *adminv1.NewUserRequest) (*adminv1.NewUserResponse, error) {
	s := us.s
	c, err := s.authorize(ctx, authz.UserNew, authz.Target{})
	if err != nil {
		return nil, err
	}
	now := s.now()
	u := store.User{UserID: req.GetUserId(), UserAlias: req.GetUserAlias(), UserEmail: req.GetUserEmail(), UserRole: req.GetUserRole(), CreatedAt: now, UpdatedAt: now}
	for _, f := range []struct{ n, v string }{{"user_id", u.UserID}, {"user_alias", u.UserAlias}, {"user_email", u.UserEmail}, {"key_alias", req.GetKeyAlias()}} {
		if err := checkID(f.n, f.v, false); err != nil {
			return nil, err
		}
	}
	if u.UserID == "" {
		u.UserID = keys.NewID()
	}
	if u.UserRole == "" {
		u.UserRole = store.RoleInternalUser
	}
	if !validRole(u.UserRole) {
		return nil, badRequest("user_role", "user_role must be "+rolesList)
	}
	if u.Models, err = strList("models", req.GetModels()); err != nil {
		return nil, err
	}
	if u.Limits, err = limitsFrom(now, req.GetMaxBudget(), req.GetSoftBudget(), req.GetBudgetDuration(), req.GetRpmLimit(), req.GetTpmLimit(), req.GetMaxParallelRequests()); err != nil {
		return nil, err
	}
	if u.Metadata, err = structJSON("metadata", req.GetMetadata()); err != nil {
		return nil, err
	}
	teams, err := strList("teams", req.GetTeams())
	if err != nil {
		return nil, err
	}
	// team_id (LiteLLM): the user joins the team and its key belongs to it.
	if err := checkID("team_id", req.GetTeamId(), false); err != nil {
		return nil, err
	}
	teamRole := req.GetTeamMemberRole()
	if teamRole == "" {
		teamRole = store.TeamRoleUser
	}
	if teamRole != store.TeamRoleAdmin && teamRole != store.TeamRoleUser {
		return nil, badRequest("team_member_role", `team_member_role must be "admin" or "user"`)
	}
	if id := req.GetTeamId(); id != "" && !slices.Contains(teams, id) {
		teams = append(teams, id)
	}
	autoKey := req.AutoCreateKey == nil || req.GetAutoCreateKey().GetValue()
	var secret string
	var k store.Key
	if autoKey {
		k, err = s.buildKey(&adminv1.GenerateKeyRequest{KeyAlias: req.GetKeyAlias(), Duration: req.GetDuration()}, now)
		if err != nil {
			return nil, err
		}
		secret = keys.Generate()
		k.TokenID, k.KeyHash, k.KeyName = keys.NewID(), keys.Hash(secret), keys.DisplayName(secret)
		k.UserID = u.UserID
		k.CreatedAt, k.UpdatedAt, k.CreatedBy, k.UpdatedBy = now, now, c.ID, c.ID
	}
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateUser(ctx, u); err != nil {
			return err
		}
		for _, id := range teams {
			t, err := tx.GetTeam(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				return badRequest("teams", "team "+id+" does not exist")
			} else if err != nil {
				return err
			}
			if _, ok := t.Member(u.UserID); !ok {
				role := store.TeamRoleUser
				if id == req.GetTeamId() {
					role = teamRole
				}
				t.Members = append(t.Members, store.TeamMember{UserID: u.UserID, Role: role, MaxBudgetInTeam: t.TeamMemberBudget})
				t.UpdatedAt = now
				if err := tx.UpdateTeam(ctx, t); err != nil {
					return err
				}
			}
		}
		if err := s.audit(ctx, tx, c, "created", "user", u.UserID, nil, userOut(&u, teams)); err != nil {
			return err
		}
		if autoKey {
			if id := req.GetTeamId(); id != "" {
				k.TeamID = id
				if err := checkRefs(ctx, tx, &k); err != nil {
					return err
				}
			}
			if err := tx.CreateKey(ctx, k); err != nil {
				return err
			}
			return s.audit(ctx, tx, c, "created", "key", k.TokenID, nil, keyView(&k))
		}
		return nil
	})
	if err != nil {
		return nil, storeError(ctx, err, "user")
	}
	out := &adminv1.NewUserResponse{
		UserId: u.UserID, UserAlias: u.UserAlias, UserEmail: u.UserEmail, UserRole: u.UserRole, Models: u.Models,
		MaxBudget: usdValue(u.MaxBudget), BudgetDuration: u.BudgetDuration, RpmLimit: limitValue(u.RPMLimit), TpmLimit: limitValue(u.TPMLimit),
		Teams: teams, Metadata: structOf(u.Metadata),
	}
	if autoKey {
		out.Key, out.TokenId, out.KeyName, out.Expires = secret, k.TokenID, k.KeyName, tsValue(k.Expires)
	}
	return out, nil
}

func (s *Server) userTeams(ctx context.Context, r store.Reader, userID string) ([]store.Team, error) {
	ts, _, err := r.ListTeams(ctx, store.TeamFilter{UserID: userID, Page: store.Page{Size: store.MaxPageSize}})
	return ts, err
}

func teamIDs(ts []store.Team) []string {
	ids := make([]string, 0, len(ts))
	for _, t := range ts {
		ids = append(ids, t.TeamID)
	}
	return ids
}

func (us *userService) UpdateUser(ctx context.Context, req *adminv1.UpdateUserRequest) (*adminv1.User, error) {
	s := us.s
	c, err := s.begin(ctx, authz.UserUpdate)
	if err != nil {
		return nil, err
	}
	if err := checkID("user_id", req.GetUserId(), true); err != nil {
		return nil, err
	}
	// Another user is invisible to a non-admin, whether it exists or not.
	if err := decide(c, authz.UserUpdate, authz.Target{Before: &authz.Object{UserID: req.GetUserId()}}); err != nil {
		return nil, err
	}
	p, err := patchFrom(s.now(), req.GetModels(), req.GetMaxBudget(), req.GetSoftBudget(), req.GetBudgetDuration(), req.GetRpmLimit(), req.GetTpmLimit(), req.GetMaxParallelRequests(), req.GetMetadata())
	if err != nil {
		return nil, err
	}
	if req.UserRole != nil && !validRole(req.GetUserRole().GetValue()) {
		return nil, badRequest("user_role", "user_role must be "+rolesList)
	}
	for _, f := range []struct {
		n string
		v interface{ GetValue() string }
	}{{"user_alias", req.GetUserAlias()}, {"user_email", req.GetUserEmail()}} {
		if err := checkID(f.n, f.v.GetValue(), false); err != nil {
			return nil, err
		}
	}
	var out store.User
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		u, err := tx.GetUser(ctx, req.GetUserId())
		created := false
		if errors.Is(err, store.ErrNotFound) && c.Admin() {
			// LiteLLM upserts: /user/update of an unknown user creates it.
			now := s.now()
			u, created = store.User{UserID: req.GetUserId(), UserRole: store.RoleInternalUser, CreatedAt: now, UpdatedAt: now}, true
		} else if errors.Is(err, store.ErrNotFound) {
			return notFound("user_id", "user not found")
		} else if err != nil {
			return err
		}
		before := u
		if req.UserAlias != nil {
			u.UserAlias = req.GetUserAlias().GetValue()
		}
		if req.UserEmail != nil {
			u.UserEmail = req.GetUserEmail().GetValue()
		}
		if req.UserRole != nil {
			u.UserRole = req.GetUserRole().GetValue()
		}
		if req.Blocked != nil {
			u.Blocked = req.GetBlocked().GetValue()
		}
		p.apply(&u.Models, &u.Limits, &u.Metadata)
		bo, ao := userObj(&before), userObj(&u)
		if err := decide(c, authz.UserUpdate, authz.Target{Before: &bo, After: &ao}); err != nil {
			return err
		}
		u.UpdatedAt = s.now()
		if created {
			if err := tx.CreateUser(ctx, u); err != nil {
				return err
			}
			out = u
			return s.audit(ctx, tx, c, "created", "user", u.UserID, nil, userOut(&u, nil))
		}
		if err := tx.UpdateUser(ctx, u); err != nil {
			return err
		}
		out = u
		return s.audit(ctx, tx, c, "updated", "user", u.UserID, userOut(&before, nil), userOut(&u, nil))
	})
	if err != nil {
		return nil, storeError(ctx, err, "user")
	}
	ts, err := s.userTeams(ctx, s.store.Read(), out.UserID)
	if err != nil {
		return nil, storeError(ctx, err, "user")
	}
	return userOut(&out, teamIDs(ts)), nil
}

func (us *userService) DeleteUsers(ctx context.Context, req *adminv1.DeleteUsersRequest) (*adminv1.DeleteResponse, error) {
	s := us.s
	c, err := s.authorize(ctx, authz.UserDelete, authz.Target{})
	if err != nil {
		return nil, err
	}
	if len(req.GetUserIds()) == 0 || len(req.GetUserIds()) > maxListLen {
		return nil, badRequest("user_ids", "user_ids must list 1 to 1000 users")
	}
	var deleted []string
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		deleted = deleted[:0]
		for _, id := range req.GetUserIds() {
			u, err := tx.GetUser(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				return notFound("user_ids", "user "+id+" not found")
			} else if err != nil {
				return err
			}
			if err := tx.DeleteUser(ctx, id); err != nil {
				return err
			}
			if err := s.audit(ctx, tx, c, "deleted", "user", id, userOut(&u, nil), nil); err != nil {
				return err
			}
			deleted = append(deleted, id)
		}
		return nil
	})
	if err != nil {
		return nil, storeError(ctx, err, "user")
	}
	return &adminv1.DeleteResponse{DeletedIds: deleted}, nil
}

func (us *userService) GetUserInfo(ctx context.Context, req *adminv1.GetUserInfoRequest) (*adminv1.UserInfoResponse, error) {
	s := us.s
	c, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	id := req.GetUserId()
	if id == "" && !c.Master {
		id = c.ID
	}
	if err := checkID("user_id", id, true); err != nil {
		return nil, err
	}
	if err := decide(c, authz.UserInfo, authz.Target{Before: &authz.Object{UserID: id}}); err != nil {
		return nil, err
	}
	r := s.store.Read()
	u, err := r.GetUser(ctx, id)
	if err != nil {
		return nil, storeError(ctx, err, "user")
	}
	ts, err := s.userTeams(ctx, r, id)
	if err != nil {
		return nil, storeError(ctx, err, "user")
	}
	ks, _, err := r.ListKeys(ctx, store.KeyFilter{UserID: id, Page: store.Page{Size: store.MaxPageSize}})
	if err != nil {
		return nil, storeError(ctx, err, "user")
	}
	out := &adminv1.UserInfoResponse{UserId: id, UserInfo: userOut(&u, teamIDs(ts))}
	for i := range ks {
		out.Keys = append(out.Keys, keyOut(&ks[i]))
	}
	for i := range ts {
		t := teamOut(&ts[i])
		if m, ok := ts[i].Member(id); ok {
			t.TeamMemberships = []*adminv1.TeamMembership{membershipOut(&ts[i], &m)}
		}
		out.Teams = append(out.Teams, t)
	}
	return out, nil
}

func (us *userService) ListUsers(ctx context.Context, req *adminv1.ListUsersRequest) (*adminv1.ListUsersResponse, error) {
	s := us.s
	c, err := s.authorize(ctx, authz.UserList, authz.Target{})
	if err != nil {
		return nil, err
	}
	f := store.UserFilter{UserRole: req.GetRole(), TeamID: req.GetTeamId(), Page: store.Page{Page: int(req.GetPage()), Size: int(req.GetPageSize())}.Normalize()}
	r := s.store.Read()
	var list []store.User
	var total int
	if c.ReadsAll() {
		if list, total, err = r.ListUsers(ctx, f); err != nil {
			return nil, storeError(ctx, err, "user")
		}
	} else {
		// A non-admin sees itself, when it matches the filters.
		u, err := r.GetUser(ctx, c.ID)
		if err != nil {
			return nil, storeError(ctx, err, "user")
		}
		_, inTeam := c.Teams[f.TeamID]
		if (f.UserRole == "" || f.UserRole == u.UserRole) && (f.TeamID == "" || inTeam) && f.Page.Page == 1 {
			list, total = []store.User{u}, 1
		}
	}
	out := &adminv1.ListUsersResponse{Total: int32(total), Page: int32(f.Page.Page), PageSize: int32(f.Page.Size), TotalPages: int32((total + f.Page.Size - 1) / f.Page.Size)}
	out.Users = make([]*adminv1.User, 0, len(list))
	for i := range list {
		ts, err := s.userTeams(ctx, r, list[i].UserID)
		if err != nil {
			return nil, storeError(ctx, err, "user")
		}
		out.Users = append(out.Users, userOut(&list[i], teamIDs(ts)))
	}
	return out, nil
}

// membershipOut is a team membership as LiteLLM's /user/info shows it, with
// its budget row. Seam for the budgets work: the row is built from the
// membership's max_budget_in_team today; a membership that references a
// budget (budget_id) should show that budget's row instead.
func membershipOut(t *store.Team, m *store.TeamMember) *adminv1.TeamMembership {
	out := &adminv1.TeamMembership{UserId: m.UserID, TeamId: t.TeamID, Spend: money.ToUSD(m.Spend)}
	if m.MaxBudgetInTeam != nil {
		out.LitellmBudgetTable = &adminv1.TeamMembershipBudget{MaxBudget: usdValue(m.MaxBudgetInTeam)}
	}
	return out
}

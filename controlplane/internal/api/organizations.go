package api

import (
	"context"
	"errors"
	"slices"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

type orgService struct {
	adminv1.UnimplementedOrganizationServiceServer
	s *Server
}

var orgRoles = []string{"org_admin", store.RoleInternalUser, store.RoleInternalUserViewer}

func (os *orgService) NewOrganization(ctx context.Context, req *adminv1.NewOrganizationRequest) (*adminv1.Organization, error) {
	s := os.s
	c, err := s.authorize(ctx, authz.OrgNew, authz.Target{})
	if err != nil {
		return nil, err
	}
	now := s.now()
	o := store.Organization{OrganizationID: req.GetOrganizationId(), OrganizationAlias: req.GetOrganizationAlias(), CreatedAt: now, UpdatedAt: now}
	if err := checkID("organization_alias", o.OrganizationAlias, true); err != nil {
		return nil, err
	}
	if err := checkID("organization_id", o.OrganizationID, false); err != nil {
		return nil, err
	}
	if o.OrganizationID == "" {
		o.OrganizationID = keys.NewID()
	}
	if o.Models, err = strList("models", req.GetModels()); err != nil {
		return nil, err
	}
	if o.Limits, err = limitsFrom(now, req.GetMaxBudget(), req.GetSoftBudget(), req.GetBudgetDuration(), req.GetRpmLimit(), req.GetTpmLimit(), req.GetMaxParallelRequests()); err != nil {
		return nil, err
	}
	if o.Metadata, err = structJSON("metadata", req.GetMetadata()); err != nil {
		return nil, err
	}
	if err := checkID("budget_id", req.GetBudgetId(), false); err != nil {
		return nil, err
	}
	base := o
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		o = base
		b, err := newOrgBudget(ctx, tx, c, &o, req.GetBudgetId(), now)
		if err != nil {
			return err
		}
		if b != nil {
			if err := s.audit(ctx, tx, c, "created", auditBudget, b.BudgetID, nil, budgetOut(b)); err != nil {
				return err
			}
		}
		if err := tx.CreateOrganization(ctx, o); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, "created", "organization", o.OrganizationID, nil, orgOut(&o, nil))
	})
	if err != nil {
		return nil, storeError(ctx, err, "organization")
	}
	return orgOut(&o, nil), nil
}

func (s *Server) mutateOrg(ctx context.Context, id string, az authz.Action, action string, fn func(tx store.Tx, c authz.Caller, o *store.Organization) error) (store.Organization, error) {
	c, err := s.authorize(ctx, az, authz.Target{Before: &authz.Object{OrgID: id}})
	if err != nil {
		return store.Organization{}, err
	}
	if err := checkID("organization_id", id, true); err != nil {
		return store.Organization{}, err
	}
	var out store.Organization
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		o, err := tx.GetOrganization(ctx, id)
		if err != nil {
			return err
		}
		before := o
		before.Members = append([]store.OrgMember(nil), o.Members...)
		if err := fn(tx, c, &o); err != nil {
			return err
		}
		o.UpdatedAt = s.now()
		if err := tx.UpdateOrganization(ctx, o); err != nil {
			return err
		}
		out = o
		return s.audit(ctx, tx, c, action, "organization", o.OrganizationID, orgOut(&before, nil), orgOut(&o, nil))
	})
	if err != nil {
		return out, storeError(ctx, err, "organization")
	}
	return out, nil
}

func (os *orgService) UpdateOrganization(ctx context.Context, req *adminv1.UpdateOrganizationRequest) (*adminv1.Organization, error) {
	s := os.s
	p, err := patchFrom(s.now(), req.GetModels(), req.GetMaxBudget(), req.GetSoftBudget(), req.GetBudgetDuration(), req.GetRpmLimit(), req.GetTpmLimit(), req.GetMaxParallelRequests(), req.GetMetadata())
	if err != nil {
		return nil, err
	}
	if req.OrganizationAlias != nil {
		if err := checkID("organization_alias", req.GetOrganizationAlias().GetValue(), true); err != nil {
			return nil, err
		}
	}
	if req.BudgetId != nil {
		if err := checkID("budget_id", req.GetBudgetId().GetValue(), false); err != nil {
			return nil, err
		}
	}
	o, err := s.mutateOrg(ctx, req.GetOrganizationId(), authz.OrgUpdate, "updated", func(tx store.Tx, caller authz.Caller, o *store.Organization) error {
		if req.OrganizationAlias != nil {
			o.OrganizationAlias = req.GetOrganizationAlias().GetValue()
		}
		if req.Blocked != nil {
			o.Blocked = req.GetBlocked().GetValue()
		}
		p.apply(&o.Models, &o.Limits, &o.Metadata)
		return updateOrgBudget(ctx, tx, caller, o, req.GetBudgetId(), p.setsLimits(), s.now())
	})
	if err != nil {
		return nil, err
	}
	return orgOut(&o, nil), nil
}

func (os *orgService) DeleteOrganizations(ctx context.Context, req *adminv1.DeleteOrganizationsRequest) (*adminv1.DeleteResponse, error) {
	s := os.s
	c, err := s.authorize(ctx, authz.OrgDelete, authz.Target{})
	if err != nil {
		return nil, err
	}
	if len(req.GetOrganizationIds()) == 0 || len(req.GetOrganizationIds()) > maxListLen {
		return nil, badRequest("organization_ids", "organization_ids must list 1 to 1000 organizations")
	}
	var deleted []string
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		deleted = deleted[:0]
		for _, id := range req.GetOrganizationIds() {
			o, err := tx.GetOrganization(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				return notFound("organization_ids", "organization "+id+" not found")
			} else if err != nil {
				return err
			}
			if err := tx.DeleteOrganization(ctx, id); err != nil {
				return err
			}
			if err := s.audit(ctx, tx, c, "deleted", "organization", id, orgOut(&o, nil), nil); err != nil {
				return err
			}
			deleted = append(deleted, id)
		}
		return nil
	})
	if err != nil {
		return nil, storeError(ctx, err, "organization")
	}
	return &adminv1.DeleteResponse{DeletedIds: deleted}, nil
}

func (os *orgService) AddOrganizationMember(ctx context.Context, req *adminv1.OrganizationMemberAddRequest) (*adminv1.Organization, error) {
	s := os.s
	members, err := parseMembers(req.GetMember(), store.RoleInternalUser, orgRoles...)
	if err != nil {
		return nil, err
	}
	o, err := s.mutateOrg(ctx, req.GetOrganizationId(), authz.OrgMemberAdd, "updated", func(tx store.Tx, c authz.Caller, o *store.Organization) error {
		for _, m := range members {
			// Only proxy_admin gets here (authz), and LiteLLM creates
			// users named by email.
			if err := s.resolveMember(ctx, tx, c, &m, true); err != nil {
				return err
			}
			for _, have := range o.Members {
				if have.UserID == m.UserID {
					return badRequest("member", "user "+m.UserID+" is already a member of this organization")
				}
			}
			if err := s.ensureUser(ctx, tx, c, m.UserID, m.UserEmail); err != nil {
				return err
			}
			o.Members = append(o.Members, store.OrgMember{UserID: m.UserID, Role: m.Role})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return orgOut(&o, nil), nil
}

// orgMemberRef resolves an organization member named by user_id or
// user_email.
func orgMemberRef(ctx context.Context, r store.Reader, o *store.Organization, userID, email string) (int, error) {
	if userID == "" && email != "" {
		u, err := userByEmail(ctx, r, email)
		if errors.Is(err, store.ErrNotFound) {
			return -1, notFound("user_email", "no member has user_email "+email)
		} else if err != nil {
			return -1, err
		}
		userID = u.UserID
	}
	for i, m := range o.Members {
		if m.UserID == userID {
			return i, nil
		}
	}
	return -1, notFound("user_id", "user "+userID+" is not a member of this organization")
}

func orgMemberArgs(userID, email string) error {
	if userID == "" && email == "" {
		return badRequest("user_id", "user_id or user_email is required")
	}
	if err := checkID("user_id", userID, false); err != nil {
		return err
	}
	return checkID("user_email", email, false)
}

func (os *orgService) UpdateOrganizationMember(ctx context.Context, req *adminv1.OrganizationMemberUpdateRequest) (*adminv1.OrganizationMember, error) {
	if err := orgMemberArgs(req.GetUserId(), req.GetUserEmail()); err != nil {
		return nil, err
	}
	if r := req.GetRole(); r != "" && !slices.Contains(orgRoles, r) {
		return nil, badRequest("role", "role must be one of "+joinQuoted(orgRoles))
	}
	var out store.OrgMember
	_, err := os.s.mutateOrg(ctx, req.GetOrganizationId(), authz.OrgMemberUpdate, "updated", func(tx store.Tx, _ authz.Caller, o *store.Organization) error {
		i, err := orgMemberRef(ctx, tx, o, req.GetUserId(), req.GetUserEmail())
		if err != nil {
			return err
		}
		if req.GetRole() != "" {
			o.Members[i].Role = req.GetRole()
		}
		out = o.Members[i]
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &adminv1.OrganizationMember{UserId: out.UserID, UserRole: out.Role}, nil
}

func (os *orgService) DeleteOrganizationMember(ctx context.Context, req *adminv1.OrganizationMemberDeleteRequest) (*adminv1.Organization, error) {
	if err := orgMemberArgs(req.GetUserId(), req.GetUserEmail()); err != nil {
		return nil, err
	}
	o, err := os.s.mutateOrg(ctx, req.GetOrganizationId(), authz.OrgMemberDelete, "updated", func(tx store.Tx, _ authz.Caller, o *store.Organization) error {
		i, err := orgMemberRef(ctx, tx, o, req.GetUserId(), req.GetUserEmail())
		if err != nil {
			return err
		}
		o.Members = slices.Delete(o.Members, i, i+1)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return orgOut(&o, nil), nil
}

func (os *orgService) GetOrganizationInfo(ctx context.Context, req *adminv1.GetOrganizationInfoRequest) (*adminv1.Organization, error) {
	s := os.s
	c, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkID("organization_id", req.GetOrganizationId(), true); err != nil {
		return nil, err
	}
	r := s.store.Read()
	if err := withOrg(ctx, r, &c, req.GetOrganizationId()); err != nil {
		return nil, storeError(ctx, err, "organization")
	}
	if err := decide(c, authz.OrgInfo, authz.Target{Before: &authz.Object{OrgID: req.GetOrganizationId()}}); err != nil {
		return nil, err
	}
	o, err := r.GetOrganization(ctx, req.GetOrganizationId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("organization_id", "organization not found")
	} else if err != nil {
		return nil, storeError(ctx, err, "organization")
	}
	ts, _, err := r.ListTeams(ctx, store.TeamFilter{OrganizationID: o.OrganizationID, Page: store.Page{Size: store.MaxPageSize}})
	if err != nil {
		return nil, storeError(ctx, err, "organization")
	}
	return orgOut(&o, ts), nil
}

func (os *orgService) ListOrganizations(ctx context.Context, req *adminv1.ListOrganizationsRequest) (*adminv1.ListOrganizationsResponse, error) {
	s := os.s
	c, err := s.authorize(ctx, authz.OrgList, authz.Target{})
	if err != nil {
		return nil, err
	}
	var list []store.Organization
	var total int
	if c.ReadsAll() {
		list, total, err = s.store.Read().ListOrganizations(ctx, store.Page{Page: int(req.GetPage()), Size: int(req.GetPageSize())}.Normalize())
	} else {
		// Organizations are few: a non-admin sees those it belongs to.
		err = s.store.Read().EachOrganization(ctx, func(o store.Organization) error {
			for _, m := range o.Members {
				if m.UserID == c.ID {
					list = append(list, o)
					break
				}
			}
			return nil
		})
		slices.SortFunc(list, func(a, b store.Organization) int { return a.CreatedAt.Compare(b.CreatedAt) })
		total = len(list)
	}
	if err != nil {
		return nil, storeError(ctx, err, "organization")
	}
	out := &adminv1.ListOrganizationsResponse{Total: int32(total), Organizations: make([]*adminv1.Organization, 0, len(list))}
	for i := range list {
		out.Organizations = append(out.Organizations, orgOut(&list[i], nil))
	}
	return out, nil
}

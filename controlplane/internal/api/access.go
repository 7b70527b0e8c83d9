package api

import (
	"context"
	"errors"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/settings"
)

// denied turns a refusal into the API error with its status.
func denied(d authz.Decision) error {
	switch d.Status {
	case http.StatusBadRequest:
		return badRequest(d.Param, d.Reason)
	case http.StatusNotFound:
		return notFound(d.Param, d.Reason)
	case http.StatusUnauthorized:
		return unauthorized(d.Reason)
	}
	return apiError(codes.PermissionDenied, http.StatusForbidden, "auth_error", d.Param, d.Reason)
}

// decide asks authz and returns the refusal as an API error.
func decide(c authz.Caller, a authz.Action, t authz.Target) error {
	if d := authz.Decide(c, a, t); !d.Allowed {
		return denied(d)
	}
	return nil
}

// begin authenticates and refuses at once what the caller's role can never
// do (403 whatever the target, so that no lookup hints at existence).
// Refusals that depend on the target come later, from decide.
func (s *Server) begin(ctx context.Context, a authz.Action) (authz.Caller, error) {
	c, err := s.authenticate(ctx)
	if err != nil {
		return c, err
	}
	if d := authz.Decide(c, a, authz.Target{}); !d.Allowed && (d.Status == http.StatusForbidden || d.Status == http.StatusUnauthorized) {
		return c, denied(d)
	}
	return c, nil
}

// withOrg records c's role in organization org (non-admins only; admins
// need no memberships).
func withOrg(ctx context.Context, r store.Reader, c *authz.Caller, org string) error {
	if org == "" || c.Admin() {
		return nil
	}
	o, err := r.GetOrganization(ctx, org)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	for _, m := range o.Members {
		if m.UserID == c.ID {
			if c.Orgs == nil {
				c.Orgs = map[string]string{}
			}
			c.Orgs[org] = m.Role
		}
	}
	return nil
}

// generalSettings reads general_settings for key-generation policy and the
// custom webhook.
func (s *Server) generalSettings(ctx context.Context) (settings.General, error) {
	st, err := s.store.Read().GetSettings(ctx)
	if err != nil {
		return settings.General{}, err
	}
	g, err := settings.Parse(st.GeneralSettings)
	if err != nil {
		// Stored settings were validated on write; a bad row restricts
		// nothing more than the last good one did, but must not open doors.
		return settings.General{}, err
	}
	return g, nil
}

// setFields lists the request fields the caller set, for required_params.
func setFields(m proto.Message) []string {
	var out []string
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		out = append(out, string(fd.Name()))
		return true
	})
	return out
}

func keyObj(k *store.Key) authz.Object {
	return authz.Object{
		TokenID: k.TokenID, UserID: k.UserID, TeamID: k.TeamID, OrgID: k.OrganizationID, ServiceAccount: k.ServiceAccount, BudgetID: k.BudgetID,
		Models: k.Models, MaxBudget: k.MaxBudget, RPMLimit: k.RPMLimit, TPMLimit: k.TPMLimit, MaxParallel: k.MaxParallelRequests,
		BudgetDuration: k.BudgetDuration, Expires: k.Expires, Blocked: k.Blocked,
		AllowedRoutes: k.AllowedRoutes, Permissions: len(k.Permissions) > 2, // "{}" is empty
		EnforcedParams: k.EnforcedParams, Guardrails: k.Guardrails,
	}
}

func userObj(u *store.User) authz.Object {
	return authz.Object{
		UserID: u.UserID, Role: u.UserRole, Models: u.Models,
		MaxBudget: u.MaxBudget, RPMLimit: u.RPMLimit, TPMLimit: u.TPMLimit, MaxParallel: u.MaxParallelRequests,
		BudgetDuration: u.BudgetDuration, Blocked: u.Blocked,
	}
}

func teamObj(t *store.Team) authz.Object {
	return authz.Object{
		TeamID: t.TeamID, OrgID: t.OrganizationID, Models: t.Models,
		MaxBudget: t.MaxBudget, RPMLimit: t.RPMLimit, TPMLimit: t.TPMLimit, MaxParallel: t.MaxParallelRequests,
		BudgetDuration: t.BudgetDuration, Blocked: t.Blocked,
	}
}

func memberObj(t *store.Team, m store.TeamMember) authz.Object {
	return authz.Object{UserID: m.UserID, TeamID: t.TeamID, OrgID: t.OrganizationID, Role: m.Role, MaxBudget: m.MaxBudgetInTeam, BudgetID: m.BudgetID}
}

// teamCeiling loads the team a key will belong to (nil when none or absent)
// and records c's role in its organization.
func teamCeiling(ctx context.Context, r store.Reader, c *authz.Caller, teamID string) (*authz.Object, error) {
	if teamID == "" {
		return nil, nil
	}
	t, err := r.GetTeam(ctx, teamID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	if err := withOrg(ctx, r, c, t.OrganizationID); err != nil {
		return nil, err
	}
	o := teamObj(&t)
	return &o, nil
}

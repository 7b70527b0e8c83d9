package api

import (
	"context"
	"errors"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
)

// memberSpec is one entry of a member_add "member" field.
type memberSpec struct {
	UserID    string
	Role      string
	UserEmail string
}

// parseMembers reads LiteLLM's member field: an object or a list of objects
// with user_id (or user_email) and role.
func parseMembers(v *structpb.Value, defaultRole string, allowed ...string) ([]memberSpec, error) {
	if v == nil {
		return nil, badRequest("member", "member is required")
	}
	var items []*structpb.Value
	switch k := v.Kind.(type) {
	case *structpb.Value_StructValue:
		items = []*structpb.Value{v}
	case *structpb.Value_ListValue:
		items = k.ListValue.GetValues()
	default:
		return nil, badRequest("member", "member must be an object or a list of objects")
	}
	if len(items) == 0 || len(items) > maxListLen {
		return nil, badRequest("member", "member must name 1 to 1000 users")
	}
	out := make([]memberSpec, 0, len(items))
	for _, it := range items {
		obj := it.GetStructValue()
		if obj == nil {
			return nil, badRequest("member", "member must be an object or a list of objects")
		}
		var m memberSpec
		for name, val := range obj.GetFields() {
			if _, isNull := val.Kind.(*structpb.Value_NullValue); isNull {
				continue
			}
			s, ok := val.Kind.(*structpb.Value_StringValue)
			switch name {
			case "user_id", "role", "user_email":
				if !ok {
					return nil, badRequest("member", "member."+name+" must be a string")
				}
			default:
				continue
			}
			switch name {
			case "user_id":
				m.UserID = s.StringValue
			case "role":
				m.Role = s.StringValue
			case "user_email":
				m.UserEmail = s.StringValue
			}
		}
		if m.UserID == "" && m.UserEmail == "" {
			return nil, badRequest("member", "member.user_id or member.user_email is required")
		}
		if err := checkID("member.user_id", m.UserID, false); err != nil {
			return nil, err
		}
		if err := checkID("member.user_email", m.UserEmail, false); err != nil {
			return nil, err
		}
		if m.Role == "" {
			m.Role = defaultRole
		}
		ok := false
		for _, a := range allowed {
			ok = ok || m.Role == a
		}
		if !ok {
			return nil, badRequest("member", "member.role must be one of "+joinQuoted(allowed))
		}
		out = append(out, m)
	}
	return out, nil
}

func joinQuoted(xs []string) string {
	s := ""
	for i, x := range xs {
		if i > 0 {
			s += ", "
		}
		s += `"` + x + `"`
	}
	return s
}

// userByEmail returns the oldest user with this exact email.
func userByEmail(ctx context.Context, r store.Reader, email string) (store.User, error) {
	us, _, err := r.ListUsers(ctx, store.UserFilter{UserEmail: email, Page: store.Page{Size: 1}})
	if err != nil {
		return store.User{}, err
	}
	if len(us) == 0 {
		return store.User{}, store.ErrNotFound
	}
	return us[0], nil
}

// resolveMember fills m.UserID for a member given only by user_email: the
// user with that email, else (create true) a new internal_user with a
// fresh id and that email, as LiteLLM does. A member given by id is left
// as it is (ensureUser creates it).
func (s *Server) resolveMember(ctx context.Context, tx store.Tx, c authz.Caller, m *memberSpec, create bool) error {
	if m.UserID != "" {
		return nil
	}
	u, err := userByEmail(ctx, tx, m.UserEmail)
	if err == nil {
		m.UserID = u.UserID
		return nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if !create {
		return badRequest("member", "no user has user_email "+m.UserEmail+"; only proxy_admin may create users")
	}
	m.UserID = keys.NewID()
	return s.createImplicitUser(ctx, tx, c, m.UserID, m.UserEmail)
}

// createImplicitUser creates an internal_user a call named without
// creating it (LiteLLM's implicit users), with its audit row.
func (s *Server) createImplicitUser(ctx context.Context, tx store.Tx, c authz.Caller, id, email string) error {
	now := s.now()
	u := store.User{UserID: id, UserEmail: email, UserRole: store.RoleInternalUser, CreatedAt: now, UpdatedAt: now}
	if err := tx.CreateUser(ctx, u); err != nil {
		return err
	}
	return s.audit(ctx, tx, c, "created", "user", id, nil, userOut(&u, nil))
}

// memberByRef finds a team member by user_id or, when that is empty, by
// user_email (the email it was added by, or its user's email).
func memberByRef(ctx context.Context, r store.Reader, t *store.Team, userID, email string) (string, error) {
	if userID != "" || email == "" {
		return userID, nil
	}
	for _, m := range t.Members {
		if m.UserEmail == email {
			return m.UserID, nil
		}
	}
	u, err := userByEmail(ctx, r, email)
	if errors.Is(err, store.ErrNotFound) {
		return "", notFound("user_email", "no member has user_email "+email)
	}
	return u.UserID, err
}

// ensureUser returns the user, creating it as an internal_user when absent,
// as LiteLLM does when members are added by id.
func (s *Server) ensureUser(ctx context.Context, tx store.Tx, c authz.Caller, id, email string) error {
	_, err := tx.GetUser(ctx, id)
	if err == nil {
		return nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return s.createImplicitUser(ctx, tx, c, id, email)
}

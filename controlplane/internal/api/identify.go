package api

import (
	"context"

	"google.golang.org/grpc/metadata"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
)

// Identity is who a credential authenticates as: what the admin UI needs to
// shape its pages. It decides nothing; every call the UI makes still goes
// through the API and authz.Decide.
type Identity struct {
	UserID string
	Role   string
	Master bool
	// ReadsAll: proxy_admin or proxy_admin_viewer.
	ReadsAll bool
	Admin    bool
	// Teams maps team ids to the caller's team role.
	Teams map[string]string
	// KeyTokenID is the token_id of the virtual key used ("" for the
	// master key).
	KeyTokenID string
}

// Identify authenticates credential exactly as a management call would
// (master key, or a user's own active virtual key). The error is an API
// error (401 for a credential that is not a management credential).
func (s *Server) Identify(ctx context.Context, credential string) (Identity, error) {
	ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+credential))
	c, err := s.authenticate(ctx)
	if err != nil {
		return Identity{}, err
	}
	return identityOf(&c), nil
}

func identityOf(c *authz.Caller) Identity {
	return Identity{UserID: c.ID, Role: c.Role, Master: c.Master, ReadsAll: c.ReadsAll(), Admin: c.Admin(), Teams: c.Teams, KeyTokenID: c.KeyTokenID}
}

package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
)

// credential extracts the presented secret from gRPC metadata (the REST
// gateway forwards Authorization and X-Admin-Key into it).
func credential(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-admin-key"); len(v) > 0 && v[0] != "" {
		return strings.TrimSpace(v[0])
	}
	for _, v := range md.Get("authorization") {
		v = strings.TrimSpace(v)
		if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			return strings.TrimSpace(v[7:])
		}
		if v != "" {
			return v
		}
	}
	return ""
}

// changedBy returns the litellm-changed-by header, if any.
func changedBy(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("litellm-changed-by"); len(v) > 0 {
		s := v[0]
		if len(s) > 256 {
			s = s[:256]
		}
		return s
	}
	return ""
}

// masterKey holds the SHA-256 of the master key, so that comparisons are
// constant-time and independent of the presented length.
type masterKey [32]byte

func newMasterKey(k string) masterKey { return sha256.Sum256([]byte(k)) }

func (m masterKey) matches(presented string) bool {
	p := sha256.Sum256([]byte(presented))
	return subtle.ConstantTimeCompare(m[:], p[:]) == 1
}

// masterUserID is the member id the master key stands for where LiteLLM
// needs a user id (litellm_proxy_admin_name): the team admin /team/new adds
// for its creator. No user record is created for it (the membership names
// no user, as LiteLLM's does), and the master key never authenticates as it.
const masterUserID = "default_user_id"

// notManagement is the refusal of a key that may only read itself.
const notManagement = "this key cannot be used for management calls"

// authenticate resolves the caller. The master key is the admin; a virtual
// key is a caller with its user's role. Blocked, expired, service-account and
// ownerless keys are not management credentials.
func (s *Server) authenticate(ctx context.Context) (authz.Caller, error) {
	c, err := s.authenticateKey(ctx)
	if err == nil && c.KeyOnly {
		return authz.Caller{}, unauthorized(notManagement)
	}
	return c, err
}

// authenticateKey is authenticate for the reads a key may make of itself
// (/key/info, /team/info, /model/info): an active service-account or
// ownerless key, or one whose user is gone, is a KeyOnly caller, which
// authz.Decide lets read itself and nothing else.
func (s *Server) authenticateKey(ctx context.Context) (authz.Caller, error) {
	cred := credential(ctx)
	if cred == "" {
		return authz.Caller{}, unauthorized("missing credential: send Authorization: Bearer <key>")
	}
	if s.master.matches(cred) {
		return authz.Caller{Master: true, ID: "master_key", Role: store.RoleProxyAdmin}, nil
	}
	if keys.Validate(cred) != nil {
		return authz.Caller{}, unauthorized("invalid credential")
	}
	r := s.store.Read()
	k, err := r.GetKeyByHash(ctx, keys.Hash(cred))
	if errors.Is(err, store.ErrNotFound) {
		return authz.Caller{}, unauthorized("invalid credential")
	}
	if err != nil {
		return authz.Caller{}, storeError(ctx, err, "key")
	}
	now := s.now()
	if k.Blocked || (k.Expires != nil && !now.Before(*k.Expires)) {
		return authz.Caller{}, unauthorized(notManagement)
	}
	keyOnly := authz.Caller{KeyOnly: true, KeyTokenID: k.TokenID, KeyTeamID: k.TeamID}
	if k.ServiceAccount || k.UserID == "" {
		return keyOnly, nil
	}
	u, err := r.GetUser(ctx, k.UserID)
	if errors.Is(err, store.ErrNotFound) {
		return keyOnly, nil
	}
	if err != nil {
		return authz.Caller{}, storeError(ctx, err, "user")
	}
	if u.Blocked {
		return authz.Caller{}, unauthorized(notManagement)
	}
	c := authz.Caller{ID: u.UserID, Role: u.UserRole, KeyTokenID: k.TokenID, KeyTeamID: k.TeamID, Self: userObj(&u)}
	if c.Admin() {
		return c, nil // admins need no memberships
	}
	for page := 1; ; page++ {
		ts, total, err := r.ListTeams(ctx, store.TeamFilter{UserID: u.UserID, Page: store.Page{Page: page, Size: store.MaxPageSize}})
		if err != nil {
			return authz.Caller{}, storeError(ctx, err, "team")
		}
		for i := range ts {
			if m, ok := ts[i].Member(u.UserID); ok {
				if c.Teams == nil {
					c.Teams = make(map[string]string, total)
				}
				c.Teams[ts[i].TeamID] = m.Role
				if m.Role == store.TeamRoleUser && len(ts[i].TeamMemberPermissions) > 0 {
					if c.TeamPermissions == nil {
						c.TeamPermissions = map[string][]string{}
					}
					c.TeamPermissions[ts[i].TeamID] = ts[i].TeamMemberPermissions
				}
			}
		}
		if len(ts) == 0 || page*store.MaxPageSize >= total {
			break
		}
	}
	return c, nil
}

// authorize authenticates and asks authz whether the caller may perform
// action on target.
func (s *Server) authorize(ctx context.Context, action authz.Action, target authz.Target) (authz.Caller, error) {
	c, err := s.authenticate(ctx)
	if err != nil {
		return c, err
	}
	return c, decide(c, action, target)
}

func (s *Server) now() time.Time { return s.clock().UTC() }

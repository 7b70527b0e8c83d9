// Package authz decides who may do what: one pure function per (caller,
// action, target), used by every management call over REST and gRPC alike.
package authz

import "github.com/tollgate-gw/tollgate/controlplane/internal/store"

// Caller is an authenticated principal.
type Caller struct {
	// Master is true for the master key.
	Master bool
	// ID is the user id, or "master_key".
	ID string
	// Role is the user's role (proxy_admin for the master key).
	Role string
	// KeyTokenID is the token id of the key the caller authenticated with.
	KeyTokenID string
}

// Action is a management operation.
type Action string

// Actions, one per management endpoint family.
const (
	KeyCreate     Action = "key.create"
	KeyUpdate     Action = "key.update"
	KeyDelete     Action = "key.delete"
	KeyRead       Action = "key.read"
	KeyList       Action = "key.list"
	KeyRegenerate Action = "key.regenerate"
	KeyBlock      Action = "key.block"
	TeamWrite     Action = "team.write"
	TeamRead      Action = "team.read"
	UserWrite     Action = "user.write"
	UserRead      Action = "user.read"
	OrgWrite      Action = "org.write"
	OrgRead       Action = "org.read"
	ModelWrite    Action = "model.write"
	ModelRead     Action = "model.read"
	SettingsWrite Action = "settings.write"
	SettingsRead  Action = "settings.read"
	AuditRead     Action = "audit.read"
)

// Target is the object acted on, as far as the decision needs it.
type Target struct {
	// OwnerUserID is the user owning the object (a key's user_id, a user's id).
	OwnerUserID string
}

// Decision is the answer; Reason is safe to show the caller.
type Decision struct {
	Allowed bool
	Reason  string
}

var allow = Decision{Allowed: true}

func isRead(a Action) bool {
	switch a {
	case KeyRead, KeyList, TeamRead, UserRead, OrgRead, ModelRead, SettingsRead:
		return true
	}
	return false
}

// Decide is the single authorization decision.
func Decide(c Caller, a Action, t Target) Decision {
	if c.Master || c.Role == store.RoleProxyAdmin {
		return allow
	}
	switch c.Role {
	case store.RoleProxyAdminViewer:
		if isRead(a) {
			return allow
		}
		return Decision{Reason: "proxy_admin_viewer may only read"}
	case store.RoleInternalUser, store.RoleInternalUserViewer:
		if (a == KeyRead || a == UserRead) && t.OwnerUserID == c.ID {
			return allow
		}
		if a == ModelRead || a == KeyList {
			return allow // listings are narrowed to the caller's own objects
		}
		return Decision{Reason: "not allowed for role " + c.Role}
	}
	return Decision{Reason: "unknown role"}
}

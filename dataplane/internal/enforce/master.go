package enforce

import (
	"crypto/subtle"
	"sync/atomic"

	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// MasterHash holds the SHA-256 of the control plane's master key, received
// on the sync stream's heartbeats (never the key). LiteLLM's docs and
// tutorials make their first LLM call with the master key; the proxy
// accepts it as MasterKey. The zero value (and nil) matches nothing.
//
// The hash is held in memory only: after a restart the master key works
// again once the proxy has reached its control plane; virtual keys keep
// working from the cache meanwhile.
type MasterHash struct{ p atomic.Pointer[[32]byte] }

// Set replaces the hash; anything but 32 bytes clears it.
func (m *MasterHash) Set(h []byte) {
	if len(h) != 32 {
		m.p.Store(nil)
		return
	}
	var a [32]byte
	copy(a[:], h)
	if old := m.p.Load(); old != nil && *old == a {
		return
	}
	m.p.Store(&a)
}

func (m *MasterHash) matches(h *[32]byte) bool {
	if m == nil {
		return false
	}
	p := m.p.Load()
	return p != nil && subtle.ConstantTimeCompare(p[:], h[:]) == 1
}

// MasterTokenID names the master key in spend records and rate-limit
// scopes (no stored key has it: token ids are hex).
const MasterTokenID = "master_key"

// ProxyBudgetUser is the user master-key calls are attributed to: LiteLLM's
// litellm-proxy-budget, the user that carries the proxy-wide budget. When
// it exists its budget and limits apply to master-key calls and its spend
// grows with them; when it does not, the calls restrict nothing and their
// spend is in the spend logs only.
const ProxyBudgetUser = "litellm-proxy-budget"

// masterKey is the master key as the decision reads it: every model, no
// limits of its own, LLM routes only.
var masterKey = state.KeyInfo{
	TokenID: MasterTokenID,
	UserID:  ProxyBudgetUser,
	Limits:  state.Limits{MaxBudget: -1, SoftBudget: -1, RPMLimit: -1, TPMLimit: -1, MaxParallelRequests: -1},
	Policy:  &emptyPolicy,
}

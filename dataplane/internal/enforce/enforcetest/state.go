// Package enforcetest provides an in-memory state.Reader for tests and
// benchmarks of the decision and the proxy.
package enforcetest

import (
	"crypto/sha256"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// State is a map-backed state.Reader. Configure it before serving requests;
// the setters are safe to call concurrently with reads.
type State struct {
	ready atomic.Bool
	rev   atomic.Int64

	mu       sync.RWMutex
	keys     map[[32]byte]state.KeyInfo
	teams    map[string]*state.Team
	users    map[string]*state.User
	orgs     map[string]*state.Org
	models   map[string][]*state.Model
	groups   map[string][]string
	settings *state.Settings
	endUsers map[string]*state.EndUser
	mspend   map[[2]string]int64

	// bulk is a pointer-free table for benchmark-sized key sets: the hash
	// indexes a record, and token ids live in one arena string, so a
	// million keys cost the garbage collector nothing (as in the real
	// state).
	bulk      map[[32]byte]uint32
	bulkInfo  state.KeyInfo
	bulkArena string
}

// New returns an empty, ready State with no settings.
func New() *State {
	s := &State{
		keys:     map[[32]byte]state.KeyInfo{},
		teams:    map[string]*state.Team{},
		users:    map[string]*state.User{},
		orgs:     map[string]*state.Org{},
		models:   map[string][]*state.Model{},
		groups:   map[string][]string{},
		settings: &state.Settings{},
		endUsers: map[string]*state.EndUser{},
		mspend:   map[[2]string]int64{},
	}
	s.ready.Store(true)
	s.rev.Store(1)
	return s
}

// NoLimits is Limits with every limit off.
var NoLimits = state.Limits{MaxBudget: -1, SoftBudget: -1, RPMLimit: -1, TPMLimit: -1, MaxParallelRequests: -1}

// SetReady sets what Ready reports.
func (s *State) SetReady(v bool) { s.ready.Store(v) }

// AddKey stores k under the SHA-256 of secret. A nil Policy becomes an empty
// one.
func (s *State) AddKey(secret string, k state.KeyInfo) {
	if k.Policy == nil {
		k.Policy = &state.Policy{}
	}
	s.mu.Lock()
	s.keys[sha256.Sum256([]byte(secret))] = k
	s.mu.Unlock()
}

// AddTeam, AddUser and AddOrg store objects by id.
func (s *State) AddTeam(t *state.Team) { s.mu.Lock(); s.teams[t.TeamID] = t; s.mu.Unlock() }

// AddUser stores a user.
func (s *State) AddUser(u *state.User) { s.mu.Lock(); s.users[u.UserID] = u; s.mu.Unlock() }

// AddOrg stores an organization.
func (s *State) AddOrg(o *state.Org) { s.mu.Lock(); s.orgs[o.OrganizationID] = o; s.mu.Unlock() }

// AddModel adds a deployment of m.ModelName and its access groups.
func (s *State) AddModel(m *state.Model) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.models[m.ModelName] = append(s.models[m.ModelName], m)
	for _, g := range m.AccessGroups {
		if !slices.Contains(s.groups[g], m.ModelName) {
			s.groups[g] = append(s.groups[g], m.ModelName)
		}
	}
}

// AddEndUser stores an end user.
func (s *State) AddEndUser(u *state.EndUser) { s.mu.Lock(); s.endUsers[u.EndUserID] = u; s.mu.Unlock() }

// SetKeyModelSpend sets a key's spend on a model.
func (s *State) SetKeyModelSpend(tokenID, model string, spend int64) {
	s.mu.Lock()
	s.mspend[[2]string{tokenID, model}] = spend
	s.mu.Unlock()
}

// SetSettings replaces the settings.
func (s *State) SetSettings(st *state.Settings) { s.mu.Lock(); s.settings = st; s.mu.Unlock() }

// AddBulkKeys adds n keys sharing template (TokenID is set per key) and
// returns a function giving the i-th key's secret. The secrets are not kept:
// a million strings would be a million pointers for the collector to scan
// during a benchmark.
func (s *State) AddBulkKeys(n int, template state.KeyInfo) (secret func(i int) string) {
	if template.Policy == nil {
		template.Policy = &state.Policy{}
	}
	secret = func(i int) string { return "sk-bulk-" + padded(i) + "-aaaaaaaaaaaaaaaaaaaaaaaaaa" }
	arena := make([]byte, 0, n*12)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bulk = make(map[[32]byte]uint32, n)
	for i := range n {
		s.bulk[sha256.Sum256([]byte(secret(i)))] = uint32(i)
		arena = append(arena, "tok"...)
		arena = append(arena, padded(i)...)
	}
	s.bulkInfo, s.bulkArena = template, string(arena)
	return secret
}

func padded(i int) string {
	s := strconv.Itoa(i)
	for len(s) < 9 {
		s = "0" + s
	}
	return s
}

// Ready implements state.Reader.
func (s *State) Ready() bool { return s.ready.Load() }

// Revision implements state.Reader.
func (s *State) Revision() int64 { return s.rev.Load() }

// LookupKey implements state.Reader.
func (s *State) LookupKey(hash *[32]byte, nowUnix int64) (state.KeyInfo, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if i, ok := s.bulk[*hash]; ok {
		k := s.bulkInfo
		k.TokenID = s.bulkArena[i*12 : i*12+12]
		return k, true
	}
	k, ok := s.keys[*hash]
	return k, ok
}

// Team implements state.Reader.
func (s *State) Team(id string) (*state.Team, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.teams[id]
	return t, ok
}

// User implements state.Reader.
func (s *State) User(id string) (*state.User, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	u, ok := s.users[id]
	return u, ok
}

// Org implements state.Reader.
func (s *State) Org(id string) (*state.Org, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	o, ok := s.orgs[id]
	return o, ok
}

// Deployments implements state.Reader.
func (s *State) Deployments(name string) []*state.Model {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.models[name]
}

// ModelNames implements state.Reader.
func (s *State) ModelNames() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	names := make([]string, 0, len(s.models))
	for n := range s.models {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// AccessGroup implements state.Reader.
func (s *State) AccessGroup(g string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.groups[g]
}

// Settings implements state.Reader.
func (s *State) Settings() *state.Settings {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.settings
}

// EndUser implements state.Reader.
func (s *State) EndUser(id string) (*state.EndUser, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	u, ok := s.endUsers[id]
	return u, ok
}

// KeyModelSpend implements state.Reader.
func (s *State) KeyModelSpend(tokenID, model string) int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.mspend[[2]string{tokenID, model}]
}

var _ state.Reader = (*State)(nil)

package state

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// State is the replica read by the request path. The zero value is not
// usable; create one with New.
type State struct {
	v  atomic.Pointer[view]
	mu sync.Mutex // serializes writers: Install, ApplyDelta, Stats
}

var _ Reader = (*State)(nil)

// view is everything a reader sees. The key table is updated in place by
// deltas (per-key atomic, under shard locks); everything else is immutable
// and replaced by storing a new view.
type view struct {
	rev      int64
	keys     *keyTable
	teams    cowMap[Team]
	users    cowMap[User]
	orgs     cowMap[Org]
	endUsers cowMap[EndUser]
	models   *modelIndex
	settings *Settings
}

// New returns an empty state; Ready is false until Install.
func New() *State { return &State{} }

// Ready reports whether a snapshot has been installed.
func (s *State) Ready() bool { return s.v.Load() != nil }

// Revision is the revision of the installed state (0 before Install).
func (s *State) Revision() int64 {
	if v := s.v.Load(); v != nil {
		return v.rev
	}
	return 0
}

// LookupKey finds a key by the SHA-256 of its secret, or by a previous
// secret's hash while nowMilli (unix ms) < its grace deadline. It does not
// allocate.
func (s *State) LookupKey(hash *[32]byte, nowMilli int64) (KeyInfo, bool) {
	v := s.v.Load()
	if v == nil || hash == nil {
		return KeyInfo{}, false
	}
	return v.keys.lookup(hash, nowMilli)
}

// Team returns a team; the result is immutable and shared.
func (s *State) Team(id string) (*Team, bool) {
	if v := s.v.Load(); v != nil {
		return v.teams.get(id)
	}
	return nil, false
}

// User returns a user; the result is immutable and shared.
func (s *State) User(id string) (*User, bool) {
	if v := s.v.Load(); v != nil {
		return v.users.get(id)
	}
	return nil, false
}

// Org returns an organization; the result is immutable and shared.
func (s *State) Org(id string) (*Org, bool) {
	if v := s.v.Load(); v != nil {
		return v.orgs.get(id)
	}
	return nil, false
}

// EndUser returns an end user (the request body's "user"); the result is
// immutable and shared. One map lookup.
func (s *State) EndUser(id string) (*EndUser, bool) {
	if v := s.v.Load(); v != nil {
		return v.endUsers.get(id)
	}
	return nil, false
}

// KeyModelSpend is the key's synced spend on model, for its
// model_max_budget (0 when the key has none for model).
func (s *State) KeyModelSpend(tokenID, model string) int64 {
	if v := s.v.Load(); v != nil {
		return v.keys.ms.get(tokenID, model)
	}
	return 0
}

// Deployments returns the deployments of a public model name, ordered by
// id. The slice is shared: do not modify it.
func (s *State) Deployments(modelName string) []*Model {
	if v := s.v.Load(); v != nil {
		return v.models.byName[modelName]
	}
	return nil
}

// ModelNames returns every public model name, sorted. The slice is shared:
// do not modify it.
func (s *State) ModelNames() []string {
	if v := s.v.Load(); v != nil {
		return v.models.names
	}
	return nil
}

// AccessGroup returns the public model names in an access group, sorted.
// The slice is shared: do not modify it.
func (s *State) AccessGroup(group string) []string {
	if v := s.v.Load(); v != nil {
		return v.models.groups[group]
	}
	return nil
}

// Model returns a deployment by id.
func (s *State) Model(id string) (*Model, bool) {
	if v := s.v.Load(); v != nil {
		m, ok := v.models.byID[id]
		return m, ok
	}
	return nil, false
}

// Settings returns the parsed general_settings, never nil ("{}" before any
// settings entity).
func (s *State) Settings() *Settings {
	if v := s.v.Load(); v != nil {
		return v.settings
	}
	return emptySettings
}

// Stats describes the loaded state (for metrics and logs).
type Stats struct {
	Ready          bool
	Revision       int64
	Keys           int
	PreviousHashes int // previous hashes in their grace period (or not yet purged)
	DeadRecords    int // tombstoned key records awaiting compaction
	Teams          int
	Users          int
	Orgs           int
	EndUsers       int
	Models         int
	Policies       int   // distinct interned policies
	LimitProfiles  int   // distinct interned key limit profiles
	KeyTableBytes  int64 // memory held by the key table (records, indexes, arena)
}

// Stats returns counts and sizes. It waits for a delta being applied.
func (s *State) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.v.Load()
	if v == nil {
		return Stats{}
	}
	return Stats{
		Ready:          true,
		Revision:       v.rev,
		Keys:           v.keys.keys,
		PreviousHashes: v.keys.prevN,
		DeadRecords:    v.keys.dead,
		Teams:          v.teams.n,
		Users:          v.users.n,
		Orgs:           v.orgs.n,
		EndUsers:       v.endUsers.n,
		Models:         len(v.models.byID),
		Policies:       len(*v.keys.d.policies.Load()),
		LimitProfiles:  len(*v.keys.d.limits.Load()),
		KeyTableBytes:  v.keys.memBytes(),
	}
}

// ---- snapshots ----

// Builder accumulates a snapshot off to the side; Install publishes it. A
// Builder is used by one goroutine and installed at most once.
type Builder struct {
	rev      int64
	keys     *keyTable
	teams    cowMap[Team]
	users    cowMap[User]
	orgs     cowMap[Org]
	endUsers cowMap[EndUser]
	models   map[string]*Model
	settings *Settings
	n        int
	done     bool
	wire     wireEntity // AddWire's scratch
}

// NewSnapshot starts a snapshot at revision rev. The state is untouched
// until Install.
func (s *State) NewSnapshot(rev int64) *Builder {
	return &Builder{
		rev:      rev,
		keys:     newBulkKeyTable(newDict()),
		teams:    newCowMap[Team](),
		users:    newCowMap[User](),
		orgs:     newCowMap[Org](),
		endUsers: newCowMap[EndUser](),
		models:   make(map[string]*Model),
		settings: emptySettings,
	}
}

// Revision is the revision the snapshot is built at.
func (b *Builder) Revision() int64 { return b.rev }

// Presize sizes the key table for about keys keys when none was added yet
// (a no-op otherwise, or for keys <= 0): filling it then never regrows
// its slices and indexes, which at a million keys is a quarter of the
// cost of adding them.
func (b *Builder) Presize(keys int) {
	if keys > 0 && !b.done && b.keys.keys == 0 && b.keys.prevN == 0 {
		b.keys.presize(keys, 0)
	}
}

// Keys is the number of keys in the builder.
func (b *Builder) Keys() int {
	b.keys.finishBulk() // counts repeated ids once
	return b.keys.keys
}

// Len is the number of entities added (puts, counting repeats).
func (b *Builder) Len() int { return b.n }

var errInstalled = errors.New("state: builder already installed")

// Add adds one entity; a later entity with the same kind and id replaces an
// earlier one, and a tombstone removes it. An invalid entity is rejected
// (error wrapping ErrInvalidEntity) and leaves the builder unchanged. Add
// copies what it keeps: e may be reused afterwards.
func (b *Builder) Add(e *syncv1.Entity) error {
	if b.done {
		return errInstalled
	}
	if err := Validate(e); err != nil {
		return err
	}
	if !e.Deleted {
		b.n++
	}
	switch e.Kind {
	case KindKey:
		if e.Deleted {
			b.keys.del(e.Id)
		} else {
			b.keys.put(e.Id, e.GetKey())
		}
	case KindTeam:
		if e.Deleted {
			b.teams.del(e.Id)
		} else {
			b.teams.set(e.Id, teamFrom(e))
		}
	case KindUser:
		if e.Deleted {
			b.users.del(e.Id)
		} else {
			b.users.set(e.Id, userFrom(e))
		}
	case KindOrganization:
		if e.Deleted {
			b.orgs.del(e.Id)
		} else {
			b.orgs.set(e.Id, orgFrom(e))
		}
	case KindEndUser:
		if e.Deleted {
			b.endUsers.del(e.Id)
		} else {
			b.endUsers.set(e.Id, endUserFrom(e))
		}
	case KindModel:
		if e.Deleted {
			delete(b.models, e.Id)
		} else {
			b.models[e.Id] = modelFrom(e)
		}
	case KindSettings:
		b.settings = settingsFrom(e)
	}
	return nil
}

// ErrMalformed is wrapped by AddWire's error for bytes that are not an
// encoded Entity.
var ErrMalformed = errors.New("state: undecodable entity")

// AddWire is Add for an encoded syncv1.Entity: a key is read straight from
// its wire form (no decoded message, no allocation), anything else is
// decoded and added. Bytes that do not decode fail with an error wrapping
// ErrMalformed. raw may be reused afterwards.
func (b *Builder) AddWire(raw []byte) error {
	if b.done {
		return errInstalled
	}
	w := &b.wire
	if !w.parse(raw) {
		return b.addDecoded(raw)
	}
	return b.addParsed(w)
}

// AddChunkEntity adds c's entity i: AddWire(c.Entities[i]), reading what
// c.Prepare parsed, if it was called.
func (b *Builder) AddChunkEntity(c *Chunk, i int) error {
	if i >= len(c.parsed) {
		return b.AddWire(c.Entities[i])
	}
	if b.done {
		return errInstalled
	}
	if p := &c.parsed[i]; p.ok {
		return b.addParsed(&p.w)
	}
	return b.addDecoded(c.Entities[i])
}

// addDecoded adds an entity that parse declined: decoded, or refused.
func (b *Builder) addDecoded(raw []byte) error {
	e := new(syncv1.Entity)
	if err := proto.Unmarshal(raw, e); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return b.Add(e)
}

func (b *Builder) addParsed(w *wireEntity) error {
	if err := w.validate(); err != nil {
		return err
	}
	if w.deleted {
		b.keys.del(w.id)
		return nil
	}
	b.n++
	b.keys.putView(w.id, &w.key)
	return nil
}

func settingsFrom(e *syncv1.Entity) *Settings {
	if e.Deleted {
		return emptySettings
	}
	s, err := parseSettings(e.GetSettings().GeneralSettings)
	if err != nil { // Validate already parsed it
		panic("state: settings changed after validation: " + err.Error())
	}
	return s
}

// Install publishes b's snapshot in one atomic step: readers see the old
// state or the new one, never a mix. b cannot be used afterwards.
func (s *State) Install(b *Builder) {
	if b.done {
		panic(errInstalled)
	}
	b.done = true
	b.keys.finishBulk()
	b.keys.trim() // b is not shared: no lock needed, none held while copying
	s.mu.Lock()
	defer s.mu.Unlock()
	s.v.Store(&view{
		rev:      b.rev,
		keys:     b.keys,
		teams:    b.teams,
		users:    b.users,
		orgs:     b.orgs,
		endUsers: b.endUsers,
		models:   newModelIndex(b.models),
		settings: b.settings,
	})
}

// ---- deltas ----

// ApplyDelta applies one committed change set. It fails, changing nothing,
// when d does not follow the loaded revision (ErrGap) or holds an invalid
// entity (ErrInvalidEntity).
//
// Visibility: key changes (with their per-model spend) are applied one by
// one, each atomically (a
// reader sees a key before or after, never torn; a regenerated key's old
// secret never stops matching mid-update when it has a grace period). Teams,
// users, organizations, end users, models, settings and the revision then change
// together in one atomic step. So a reader may briefly see the delta's keys
// before its other objects; Revision() == d.Revision means all of d is
// visible.
func (s *State) ApplyDelta(d *syncv1.Delta) error {
	if d == nil {
		return errors.New("state: nil delta")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.v.Load()
	if v == nil {
		return fmt.Errorf("%w: delta %d (after %d) but no snapshot is loaded", ErrGap, d.Revision, d.PrevRevision)
	}
	if d.PrevRevision != v.rev {
		return fmt.Errorf("%w: delta %d follows %d, state is at %d", ErrGap, d.Revision, d.PrevRevision, v.rev)
	}
	if d.Revision <= d.PrevRevision {
		return fmt.Errorf("%w: delta revision %d does not advance %d", ErrGap, d.Revision, d.PrevRevision)
	}
	for i, e := range d.Changes {
		if err := Validate(e); err != nil {
			return fmt.Errorf("delta %d change %d: %w", d.Revision, i, err)
		}
	}

	nv := *v
	var (
		teams  map[string]*Team
		users  map[string]*User
		orgs   map[string]*Org
		ends   map[string]*EndUser
		models map[string]*Model
	)
	for _, e := range d.Changes {
		switch e.Kind {
		case KindKey:
			if e.Deleted {
				v.keys.del(e.Id)
			} else {
				v.keys.put(e.Id, e.GetKey())
			}
		case KindTeam:
			teams = change(teams, e, teamFrom)
		case KindUser:
			users = change(users, e, userFrom)
		case KindOrganization:
			orgs = change(orgs, e, orgFrom)
		case KindEndUser:
			ends = change(ends, e, endUserFrom)
		case KindModel:
			if models == nil {
				models = maps.Clone(v.models.byID)
			}
			if e.Deleted {
				delete(models, e.Id)
			} else {
				models[e.Id] = modelFrom(e)
			}
		case KindSettings:
			nv.settings = settingsFrom(e)
		}
	}
	nv.teams = v.teams.with(teams)
	nv.users = v.users.with(users)
	nv.orgs = v.orgs.with(orgs)
	nv.endUsers = v.endUsers.with(ends)
	if models != nil {
		nv.models = newModelIndex(models)
	}
	if v.keys.compactDue() {
		nv.keys = v.keys.compacted()
	}
	nv.rev = d.Revision
	s.v.Store(&nv)
	return nil
}

// change records e in a change map (nil value: delete), later changes
// winning.
func change[T any](m map[string]*T, e *syncv1.Entity, conv func(*syncv1.Entity) *T) map[string]*T {
	if m == nil {
		m = make(map[string]*T)
	}
	if e.Deleted {
		m[e.Id] = nil
	} else {
		m[e.Id] = conv(e)
	}
	return m
}

// ---- models ----

type modelIndex struct {
	byID   map[string]*Model
	byName map[string][]*Model // deployments ordered by id
	names  []string            // sorted
	groups map[string][]string // access group -> sorted model names
}

func newModelIndex(byID map[string]*Model) *modelIndex {
	mi := &modelIndex{
		byID:   byID,
		byName: make(map[string][]*Model),
		groups: make(map[string][]string),
	}
	for _, id := range slices.Sorted(maps.Keys(byID)) {
		m := byID[id]
		mi.byName[m.ModelName] = append(mi.byName[m.ModelName], m)
		for _, g := range m.AccessGroups {
			if !slices.Contains(mi.groups[g], m.ModelName) {
				mi.groups[g] = append(mi.groups[g], m.ModelName)
			}
		}
	}
	mi.names = slices.Sorted(maps.Keys(mi.byName))
	for _, names := range mi.groups {
		slices.Sort(names)
	}
	return mi
}

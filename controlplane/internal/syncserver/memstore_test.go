package syncserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// memStore is a small in-memory store.Store for the tests that need control
// the real backends do not give (slow snapshots, compaction, failures).
// Methods the sync server does not use panic (nil embedded interfaces).
type memStore struct {
	store.SessionRevocations // unused by the sync server

	mu       sync.Mutex
	keys     map[string]*store.Key // values are never modified: snapshots share them
	teams    map[string]store.Team
	users    map[string]store.User
	orgs     map[string]store.Organization
	models   map[string]store.Model
	settings store.Settings
	log      []store.ChangeSet // revisions oldest..head
	oldest   int64             // lowest revision still in log
	head     int64
	subs     map[chan struct{}]struct{}

	snapshotDelay time.Duration
	snapshots     atomic.Int64 // Snapshot calls
	changesCalls  atomic.Int64 // Changes calls
	failChanges   atomic.Bool
}

func newMemStore() *memStore {
	return &memStore{
		keys: map[string]*store.Key{}, teams: map[string]store.Team{}, users: map[string]store.User{},
		orgs: map[string]store.Organization{}, models: map[string]store.Model{},
		oldest: 1, subs: map[chan struct{}]struct{}{},
	}
}

func (m *memStore) Read() store.Reader {
	m.mu.Lock()
	defer m.mu.Unlock()
	return &memReader{keys: slices.Collect(maps.Values(m.keys))}
}

func (r *memReader) GetKey(_ context.Context, id string) (store.Key, error) {
	for _, k := range r.keys {
		if k.TokenID == id {
			return *k, nil
		}
	}
	return store.Key{}, store.ErrNotFound
}
func (m *memStore) Ping(context.Context) error {
	return nil
}
func (m *memStore) Close() error { return nil }

func (m *memStore) Head(context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.head, nil
}

func (m *memStore) Oldest(context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.oldest, nil
}

var errInjected = errors.New("injected store failure")

func (m *memStore) Changes(_ context.Context, after int64, limit int) ([]store.ChangeSet, error) {
	m.changesCalls.Add(1)
	if m.failChanges.Load() {
		return nil, errInjected
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.ChangeSet
	for _, cs := range m.log {
		if cs.Revision > after && len(out) < limit {
			out = append(out, cs)
		}
	}
	return out, nil
}

// compact drops change sets up to and including rev.
func (m *memStore) compact(rev int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.log) > 0 && m.log[0].Revision <= rev {
		m.log = m.log[1:]
	}
	m.oldest = rev + 1
}

func (m *memStore) Subscribe(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	m.mu.Lock()
	m.subs[ch] = struct{}{}
	m.mu.Unlock()
	go func() {
		<-ctx.Done()
		m.mu.Lock()
		delete(m.subs, ch)
		m.mu.Unlock()
		close(ch)
	}()
	return ch
}

func (m *memStore) Snapshot(ctx context.Context, fn func(int64, store.Reader) error) error {
	m.snapshots.Add(1)
	m.mu.Lock()
	r := &memReader{
		keys: slices.AppendSeq(make([]*store.Key, 0, len(m.keys)), maps.Values(m.keys)), teams: slices.Collect(maps.Values(m.teams)),
		users: slices.Collect(maps.Values(m.users)), orgs: slices.Collect(maps.Values(m.orgs)),
		models: slices.Collect(maps.Values(m.models)), settings: m.settings,
	}
	rev := m.head
	m.mu.Unlock()
	if m.snapshotDelay > 0 {
		select {
		case <-time.After(m.snapshotDelay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return fn(rev, r)
}

type memReader struct {
	store.Reader
	keys     []*store.Key
	teams    []store.Team
	users    []store.User
	orgs     []store.Organization
	models   []store.Model
	endUsers []store.EndUser
	settings store.Settings
}

func (r *memReader) GetSettings(context.Context) (store.Settings, error) { return r.settings, nil }
func (r *memReader) ListModels(context.Context) ([]store.Model, error)   { return r.models, nil }

func each[T any](ctx context.Context, xs []T, fn func(T) error) error {
	for _, x := range xs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(x); err != nil {
			return err
		}
	}
	return nil
}

func (r *memReader) EachKey(ctx context.Context, fn func(store.Key) error) error {
	return each(ctx, r.keys, func(k *store.Key) error { return fn(*k) })
}

// memDocs caches the JSON document of each key (keys are never modified),
// so that the in-memory benchmarks measure the build, not json.Marshal.
var memDocs sync.Map // *store.Key → []byte

func memKeyDoc(k *store.Key) []byte {
	if d, ok := memDocs.Load(k); ok {
		return d.([]byte)
	}
	d, err := json.Marshal(k)
	if err != nil {
		panic(err)
	}
	memDocs.Store(k, d)
	return d
}

// EachKeyDocs yields json.Marshal output, as the embedded store holds, in
// batches of 1000.
func (r *memReader) EachKeyDocs(ctx context.Context, fn func([][]byte) error) error {
	var docs [][]byte
	for i, k := range r.keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		docs = append(docs, memKeyDoc(k))
		if len(docs) == 1000 || i == len(r.keys)-1 {
			if err := fn(docs); err != nil {
				return err
			}
			docs = docs[:0]
		}
	}
	return nil
}

func (r *memReader) EachTeam(ctx context.Context, fn func(store.Team) error) error {
	return each(ctx, r.teams, fn)
}
func (r *memReader) EachUser(ctx context.Context, fn func(store.User) error) error {
	return each(ctx, r.users, fn)
}
func (r *memReader) EachOrganization(ctx context.Context, fn func(store.Organization) error) error {
	return each(ctx, r.orgs, fn)
}
func (r *memReader) EachEndUser(ctx context.Context, fn func(store.EndUser) error) error {
	return each(ctx, r.endUsers, fn)
}

// ReadWriteTx serializes transactions and applies their writes at commit.
func (m *memStore) ReadWriteTx(ctx context.Context, fn func(context.Context, store.Tx) error) error {
	tx := &memTx{}
	if err := fn(ctx, tx); err != nil {
		return err
	}
	if len(tx.changes) == 0 {
		return nil
	}
	m.mu.Lock()
	for _, apply := range tx.apply {
		apply(m)
	}
	m.head++
	m.log = append(m.log, store.ChangeSet{Revision: m.head, CommittedAt: time.Now(), Changes: tx.changes})
	for ch := range m.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	m.mu.Unlock()
	return nil
}

type memTx struct {
	store.Tx
	changes []store.Change
	apply   []func(*memStore)
}

func (t *memTx) put(kind, id string, v any, apply func(*memStore)) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	t.changes = append(t.changes, store.Change{Kind: kind, ID: id, Op: store.OpPut, Data: b})
	t.apply = append(t.apply, apply)
	return nil
}

func (t *memTx) del(kind, id string, apply func(*memStore)) error {
	t.changes = append(t.changes, store.Change{Kind: kind, ID: id, Op: store.OpDelete})
	t.apply = append(t.apply, apply)
	return nil
}

func (t *memTx) CreateKey(_ context.Context, k store.Key) error {
	return t.put(store.KindKey, k.TokenID, k, func(m *memStore) { m.keys[k.TokenID] = &k })
}
func (t *memTx) UpdateKey(ctx context.Context, k store.Key) error { return t.CreateKey(ctx, k) }
func (t *memTx) DeleteKey(_ context.Context, id string) error {
	return t.del(store.KindKey, id, func(m *memStore) { delete(m.keys, id) })
}
func (t *memTx) CreateTeam(_ context.Context, tm store.Team) error {
	return t.put(store.KindTeam, tm.TeamID, tm, func(m *memStore) { m.teams[tm.TeamID] = tm })
}
func (t *memTx) UpdateTeam(ctx context.Context, tm store.Team) error { return t.CreateTeam(ctx, tm) }
func (t *memTx) DeleteTeam(_ context.Context, id string) error {
	return t.del(store.KindTeam, id, func(m *memStore) { delete(m.teams, id) })
}
func (t *memTx) CreateUser(_ context.Context, u store.User) error {
	return t.put(store.KindUser, u.UserID, u, func(m *memStore) { m.users[u.UserID] = u })
}
func (t *memTx) UpdateUser(ctx context.Context, u store.User) error { return t.CreateUser(ctx, u) }
func (t *memTx) DeleteUser(_ context.Context, id string) error {
	return t.del(store.KindUser, id, func(m *memStore) { delete(m.users, id) })
}
func (t *memTx) CreateOrganization(_ context.Context, o store.Organization) error {
	return t.put(store.KindOrganization, o.OrganizationID, o, func(m *memStore) { m.orgs[o.OrganizationID] = o })
}
func (t *memTx) UpdateOrganization(ctx context.Context, o store.Organization) error {
	return t.CreateOrganization(ctx, o)
}
func (t *memTx) DeleteOrganization(_ context.Context, id string) error {
	return t.del(store.KindOrganization, id, func(m *memStore) { delete(m.orgs, id) })
}
func (t *memTx) CreateModel(_ context.Context, md store.Model) error {
	return t.put(store.KindModel, md.ID, md, func(m *memStore) { m.models[md.ID] = md })
}
func (t *memTx) UpdateModel(ctx context.Context, md store.Model) error { return t.CreateModel(ctx, md) }
func (t *memTx) DeleteModel(_ context.Context, id string) error {
	return t.del(store.KindModel, id, func(m *memStore) { delete(m.models, id) })
}
func (t *memTx) PutSettings(_ context.Context, s store.Settings) error {
	return t.put(store.KindSettings, settingsID, s, func(m *memStore) { m.settings = s })
}
func (t *memTx) AppendAudit(context.Context, store.AuditEntry) error { return nil }

// loadKeys puts keys straight into the store as one change set (for the
// million-key benchmark, where transactions would dominate).
func (m *memStore) loadKeys(keys []store.Key) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range keys {
		m.keys[keys[i].TokenID] = &keys[i]
	}
	m.head++
	m.log = append(m.log, store.ChangeSet{Revision: m.head, CommittedAt: time.Now()})
}

func sha256Hex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

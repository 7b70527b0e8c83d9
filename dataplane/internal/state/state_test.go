package state

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/state/statetest"
	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

func hashOf(s string) [32]byte { return sha256.Sum256([]byte(s)) }

func keyEnt(id, secret string, mod ...func(*syncv1.Key)) *syncv1.Entity {
	h := hashOf(secret)
	k := &syncv1.Key{
		TokenId: id, KeyHash: h[:], UserId: "u1", TeamId: "t1", OrganizationId: "o1",
		Limits: &syncv1.Limits{MaxBudget: -1, SoftBudget: -1, RpmLimit: -1, TpmLimit: -1, MaxParallelRequests: -1},
	}
	for _, m := range mod {
		m(k)
	}
	return &syncv1.Entity{Kind: KindKey, Id: id, Value: &syncv1.Entity_Key{Key: k}}
}

func install(t testing.TB, s *State, rev int64, es ...*syncv1.Entity) {
	t.Helper()
	b := s.NewSnapshot(rev)
	for _, e := range es {
		if err := b.Add(e); err != nil {
			t.Fatalf("Add(%s %s): %v", e.Kind, e.Id, err)
		}
	}
	s.Install(b)
}

func delta(prev, rev int64, es ...*syncv1.Entity) *syncv1.Delta {
	return &syncv1.Delta{PrevRevision: prev, Revision: rev, Changes: es}
}

func lookup(s *State, secret string, now int64) (KeyInfo, bool) {
	h := hashOf(secret)
	return s.LookupKey(&h, now*1000) // now in seconds, LookupKey takes ms
}

func mustFind(t *testing.T, s *State, secret string, now int64) KeyInfo {
	t.Helper()
	ki, ok := lookup(s, secret, now)
	if !ok {
		t.Fatalf("key %q not found at %d", secret, now)
	}
	return ki
}

func mustMiss(t *testing.T, s *State, secret string, now int64) {
	t.Helper()
	if ki, ok := lookup(s, secret, now); ok {
		t.Fatalf("key %q found at %d (token %s), want none", secret, now, ki.TokenID)
	}
}

func TestNotReadyBeforeInstall(t *testing.T) {
	s := New()
	if s.Ready() || s.Revision() != 0 {
		t.Fatal("new state is ready")
	}
	mustMiss(t, s, "sk-a", 0)
	if s.Settings() == nil || s.ModelNames() != nil || s.Deployments("x") != nil {
		t.Fatal("unexpected reads on an empty state")
	}
	if _, ok := s.Team("t1"); ok {
		t.Fatal("team on empty state")
	}
	b := s.NewSnapshot(5)
	if err := b.Add(keyEnt("k1", "sk-a")); err != nil {
		t.Fatal(err)
	}
	if s.Ready() {
		t.Fatal("ready before Install")
	}
	mustMiss(t, s, "sk-a", 0)
	s.Install(b)
	if !s.Ready() || s.Revision() != 5 {
		t.Fatalf("ready=%v rev=%d", s.Ready(), s.Revision())
	}
	if err := b.Add(keyEnt("k2", "sk-b")); err == nil {
		t.Fatal("Add after Install succeeded")
	}
}

func TestLookupKey(t *testing.T) {
	s := New()
	install(t, s, 10,
		keyEnt("k1", "sk-one", func(k *syncv1.Key) {
			k.UserId, k.TeamId, k.OrganizationId = "alice", "team-a", "org-a"
			k.ServiceAccount, k.Blocked = true, true
			k.ExpiresUnix, k.Spend = 12345, 777
			k.Limits = &syncv1.Limits{MaxBudget: 5, SoftBudget: 4, BudgetDuration: "30d", BudgetResetAtUnix: 99, RpmLimit: 1, TpmLimit: 2, MaxParallelRequests: 3}
			k.Models = []string{"gpt-4o"}
			k.EnforcedParams = []string{"user", "metadata.generation_name"}
			k.AllowedRoutes = []string{"/chat/completions"}
			k.Tags = []string{"prod"}
			k.ModelRpmLimit = map[string]int64{"gpt-4o": 10}
			k.ModelTpmLimit = map[string]int64{"gpt-4o": 20}
			k.ModelMaxBudget = map[string]*syncv1.ModelBudget{"gpt-4o": {BudgetLimit: 30, TimePeriod: "1d"}}
		}),
		keyEnt("k2", "sk-two", func(k *syncv1.Key) { k.Limits = nil; k.UserId, k.TeamId, k.OrganizationId = "", "", "" }),
	)
	ki := mustFind(t, s, "sk-one", 0)
	want := KeyInfo{
		TokenID: "k1", UserID: "alice", TeamID: "team-a", OrganizationID: "org-a",
		ServiceAccount: true, Blocked: true, ExpiresUnix: 12345, Spend: 777,
		Limits: Limits{MaxBudget: 5, SoftBudget: 4, BudgetDuration: "30d", BudgetResetAtUnix: 99, RPMLimit: 1, TPMLimit: 2, MaxParallelRequests: 3},
	}
	p := ki.Policy
	ki.Policy = nil
	if ki != want {
		t.Fatalf("KeyInfo = %+v\nwant     %+v", ki, want)
	}
	if !slices.Equal(p.Models, []string{"gpt-4o"}) || !slices.Equal(p.EnforcedParams, []string{"user", "metadata.generation_name"}) ||
		!slices.Equal(p.AllowedRoutes, []string{"/chat/completions"}) || !slices.Equal(p.Tags, []string{"prod"}) ||
		p.ModelRPMLimit["gpt-4o"] != 10 || p.ModelTPMLimit["gpt-4o"] != 20 ||
		p.ModelMaxBudget["gpt-4o"] != (ModelBudget{BudgetLimit: 30, TimePeriod: "1d"}) {
		t.Fatalf("policy = %+v", p)
	}
	ki2 := mustFind(t, s, "sk-two", 0)
	if ki2.Policy == nil || ki2.Policy.Models != nil || ki2.TokenID != "k2" || ki2.UserID != "" {
		t.Fatalf("k2 = %+v", ki2)
	}
	if ki2.Limits != (Limits{MaxBudget: -1, SoftBudget: -1, RPMLimit: -1, TPMLimit: -1, MaxParallelRequests: -1}) {
		t.Fatalf("nil limits read as %+v, want none", ki2.Limits)
	}
	mustMiss(t, s, "sk-three", 0)
	if _, ok := s.LookupKey(nil, 0); ok {
		t.Fatal("nil hash found")
	}
}

func TestLookupKeyDoesNotAllocate(t *testing.T) {
	s := New()
	install(t, s, 1, keyEnt("k1", "sk-one", func(k *syncv1.Key) { k.Models = []string{"a"} }))
	h, miss := hashOf("sk-one"), hashOf("nope")
	if n := testing.AllocsPerRun(100, func() {
		s.LookupKey(&h, 0)
		s.LookupKey(&miss, 0)
	}); n != 0 {
		t.Fatalf("LookupKey allocates %.1f times", n)
	}
}

// Issue 17: a 5 s grace period ended 4.0-4.35 s after the call, because the
// deadline went to proxies in whole seconds. It is kept to the millisecond.
func TestPreviousHashGraceToTheMillisecond(t *testing.T) {
	s := New()
	install(t, s, 1, keyEnt("k1", "sk-old"))
	old := hashOf("sk-old")
	const until = int64(1_800_000_005_350) // unix ms: .350 past a second
	err := s.ApplyDelta(delta(1, 2, keyEnt("k1", "sk-new", func(k *syncv1.Key) {
		k.PreviousHashes = []*syncv1.PreviousHash{{KeyHash: old[:], ValidUntilUnix: until / 1000, ValidUntilUnixMs: until}}
	})))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		at int64
		ok bool
	}{{until - 5000, true}, {until - 351, true}, {until - 1, true}, {until, false}, {until + 1, false}} {
		h := hashOf("sk-old")
		if _, ok := s.LookupKey(&h, tc.at); ok != tc.ok {
			t.Errorf("old secret at deadline%+d ms: found %v, want %v", tc.at-until, ok, tc.ok)
		}
	}
}

func TestPreviousHashGrace(t *testing.T) {
	s := New()
	install(t, s, 1, keyEnt("k1", "sk-old"))
	// Regenerate: new secret, the old one valid until 1000.
	old := hashOf("sk-old")
	err := s.ApplyDelta(delta(1, 2, keyEnt("k1", "sk-new", func(k *syncv1.Key) {
		k.PreviousHashes = []*syncv1.PreviousHash{{KeyHash: old[:], ValidUntilUnix: 1000}}
	})))
	if err != nil {
		t.Fatal(err)
	}
	if ki := mustFind(t, s, "sk-new", 5000); ki.TokenID != "k1" {
		t.Fatalf("new secret -> %s", ki.TokenID)
	}
	if ki := mustFind(t, s, "sk-old", 999); ki.TokenID != "k1" {
		t.Fatalf("old secret in grace -> %s", ki.TokenID)
	}
	mustMiss(t, s, "sk-old", 1000)
	mustMiss(t, s, "sk-old", 2000)

	// A later update (block) is visible through the previous hash too.
	err = s.ApplyDelta(delta(2, 3, keyEnt("k1", "sk-new", func(k *syncv1.Key) {
		k.Blocked = true
		k.PreviousHashes = []*syncv1.PreviousHash{{KeyHash: old[:], ValidUntilUnix: 1000}}
	})))
	if err != nil {
		t.Fatal(err)
	}
	if ki := mustFind(t, s, "sk-old", 10); !ki.Blocked {
		t.Fatal("previous hash shows a stale record")
	}
	// Grace revoked: the update drops the previous hash.
	if err := s.ApplyDelta(delta(3, 4, keyEnt("k1", "sk-new"))); err != nil {
		t.Fatal(err)
	}
	mustMiss(t, s, "sk-old", 10)
	if st := s.Stats(); st.PreviousHashes != 0 || st.Keys != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Deleting the key removes its previous hashes as well.
	if err := s.ApplyDelta(delta(4, 5, keyEnt("k1", "sk-new2", func(k *syncv1.Key) {
		h := hashOf("sk-new")
		k.PreviousHashes = []*syncv1.PreviousHash{{KeyHash: h[:], ValidUntilUnix: 1000}}
	}))); err != nil {
		t.Fatal(err)
	}
	mustFind(t, s, "sk-new", 10)
	if err := s.ApplyDelta(delta(5, 6, tombstone(KindKey, "k1"))); err != nil {
		t.Fatal(err)
	}
	mustMiss(t, s, "sk-new", 10)
	mustMiss(t, s, "sk-new2", 10)
}

// tombstone is a local shorthand.
func tombstone(kind, id string) *syncv1.Entity { return statetest.Tombstone(kind, id) }

func TestDeleteAndReuse(t *testing.T) {
	s := New()
	install(t, s, 1, keyEnt("k1", "sk-1"), keyEnt("k2", "sk-2"))
	if err := s.ApplyDelta(delta(1, 2, tombstone(KindKey, "k1"), tombstone(KindKey, "missing"))); err != nil {
		t.Fatal(err)
	}
	mustMiss(t, s, "sk-1", 0)
	mustFind(t, s, "sk-2", 0)
	if err := s.ApplyDelta(delta(2, 3, keyEnt("k3", "sk-3"), keyEnt("k1", "sk-1b"))); err != nil {
		t.Fatal(err)
	}
	if mustFind(t, s, "sk-1b", 0).TokenID != "k1" || mustFind(t, s, "sk-3", 0).TokenID != "k3" {
		t.Fatal("wrong keys after reuse")
	}
	if st := s.Stats(); st.Keys != 3 || st.Revision != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGapLeavesStateUnchanged(t *testing.T) {
	s := New()
	if err := s.ApplyDelta(delta(0, 1, keyEnt("k1", "sk-1"))); !errors.Is(err, ErrGap) {
		t.Fatalf("delta before snapshot: %v, want ErrGap", err)
	}
	install(t, s, 10, keyEnt("k1", "sk-1"))
	for _, d := range []*syncv1.Delta{
		delta(9, 11, tombstone(KindKey, "k1")),
		delta(11, 12, tombstone(KindKey, "k1")),
		delta(10, 10, tombstone(KindKey, "k1")),
	} {
		if err := s.ApplyDelta(d); !errors.Is(err, ErrGap) {
			t.Fatalf("delta %d->%d: %v, want ErrGap", d.PrevRevision, d.Revision, err)
		}
	}
	if s.Revision() != 10 {
		t.Fatalf("revision %d", s.Revision())
	}
	mustFind(t, s, "sk-1", 0)
}

func TestInvalidEntityRejected(t *testing.T) {
	s := New()
	b := s.NewSnapshot(1)
	bad := keyEnt("kbad", "sk-bad")
	bad.GetKey().KeyHash = []byte("sk-plaintext-not-a-hash")
	err := b.Add(bad)
	if !errors.Is(err, ErrInvalidEntity) {
		t.Fatalf("Add(bad hash) = %v", err)
	}
	if want := "sk-plaintext"; err != nil && strings.Contains(err.Error(), want) {
		t.Fatalf("error echoes the hash field: %v", err)
	}
	for _, e := range []*syncv1.Entity{
		{Kind: "widget", Id: "x"},
		{Kind: KindKey, Id: ""},
		{Kind: KindTeam, Id: "t"},
		{Kind: KindKey, Id: "k", Value: &syncv1.Entity_Team{Team: &syncv1.Team{}}},
		statetest.Settings(`[1,2]`),
		statetest.Settings(`{"service_account_settings":{"enforced_params":"user"}}`),
		{Kind: KindSettings, Id: "other", Value: &syncv1.Entity_Settings{Settings: &syncv1.Settings{}}},
		{Kind: KindModel, Id: "m", Value: &syncv1.Entity_Model{Model: &syncv1.Model{}}},
		nil,
	} {
		if err := b.Add(e); !errors.Is(err, ErrInvalidEntity) {
			t.Errorf("Add(%v) = %v, want ErrInvalidEntity", e, err)
		}
	}
	if err := b.Add(keyEnt("k1", "sk-1")); err != nil {
		t.Fatal(err)
	}
	s.Install(b)
	mustFind(t, s, "sk-1", 0)

	// A delta with one bad entity applies nothing.
	err = s.ApplyDelta(delta(1, 2, tombstone(KindKey, "k1"), statetest.Team(1), bad))
	if !errors.Is(err, ErrInvalidEntity) {
		t.Fatalf("ApplyDelta = %v", err)
	}
	mustFind(t, s, "sk-1", 0)
	if _, ok := s.Team("team-1"); ok || s.Revision() != 1 {
		t.Fatal("invalid delta partly applied")
	}
}

func TestPoliciesInterned(t *testing.T) {
	s := New()
	pol := func(k *syncv1.Key) {
		k.Models = []string{"a", "b"}
		k.ModelRpmLimit = map[string]int64{"a": 1, "b": 2, "c": 3}
		k.Tags = []string{"x"}
	}
	install(t, s, 1,
		keyEnt("k1", "sk-1", pol),
		keyEnt("k2", "sk-2", pol, func(k *syncv1.Key) { k.Limits.RpmLimit = 5 }),
		keyEnt("k3", "sk-3", pol, func(k *syncv1.Key) { k.Models = []string{"b", "a"} }),
		keyEnt("k4", "sk-4"),
		keyEnt("k5", "sk-5"),
	)
	p1, p2, p3 := mustFind(t, s, "sk-1", 0).Policy, mustFind(t, s, "sk-2", 0).Policy, mustFind(t, s, "sk-3", 0).Policy
	if p1 != p2 {
		t.Fatal("identical policies are different objects")
	}
	if p1 == p3 {
		t.Fatal("different policies share an object")
	}
	if mustFind(t, s, "sk-4", 0).Policy != mustFind(t, s, "sk-5", 0).Policy {
		t.Fatal("empty policies not shared")
	}
	if err := s.ApplyDelta(delta(1, 2, keyEnt("k6", "sk-6", pol))); err != nil {
		t.Fatal(err)
	}
	if mustFind(t, s, "sk-6", 0).Policy != p1 {
		t.Fatal("delta key does not share the interned policy")
	}
	if st := s.Stats(); st.Policies != 3 || st.LimitProfiles != 2 {
		t.Fatalf("stats %+v, want 3 policies (empty, pol, pol reordered) and 2 limit profiles", st)
	}
}

func TestTeamsUsersOrgs(t *testing.T) {
	s := New()
	install(t, s, 1, statetest.Team(1), statetest.User(1), statetest.Org(1))
	tm, ok := s.Team("team-1")
	if !ok || tm.OrganizationID != "org-1" || tm.Limits.MaxBudget != 100_000_000 || tm.TeamMemberBudget != -1 {
		t.Fatalf("team %+v", tm)
	}
	if m, ok := tm.Member("user-1"); !ok || m.Role != "admin" || m.MaxBudgetInTeam != -1 {
		t.Fatalf("member %+v", m)
	}
	if _, ok := tm.Member("nobody"); ok {
		t.Fatal("unknown member found")
	}
	if u, ok := s.User("user-1"); !ok || u.UserRole != "internal_user" {
		t.Fatalf("user %+v", u)
	}
	if o, ok := s.Org("org-1"); !ok || o.OrganizationID != "org-1" {
		t.Fatalf("org %+v", o)
	}
	blocked := statetest.Team(1)
	blocked.GetTeam().Blocked = true
	if err := s.ApplyDelta(delta(1, 2, blocked, tombstone(KindUser, "user-1"), statetest.Team(2))); err != nil {
		t.Fatal(err)
	}
	if tm2, _ := s.Team("team-1"); !tm2.Blocked || tm.Blocked {
		t.Fatal("team change not visible, or old object mutated")
	}
	if _, ok := s.User("user-1"); ok {
		t.Fatal("deleted user still there")
	}
	if _, ok := s.Team("team-2"); !ok {
		t.Fatal("new team missing")
	}
	if st := s.Stats(); st.Teams != 2 || st.Users != 0 || st.Orgs != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAccessGroups(t *testing.T) {
	s := New()
	install(t, s, 1,
		statetest.Model("d2", "gpt-4o", "premium"),
		statetest.Model("d1", "gpt-4o"),
		statetest.Model("d3", "mini", "basic", "premium"),
		statetest.Model("d4", "claude"),
	)
	if got := s.ModelNames(); !slices.Equal(got, []string{"claude", "gpt-4o", "mini"}) {
		t.Fatalf("ModelNames = %v", got)
	}
	ds := s.Deployments("gpt-4o")
	if len(ds) != 2 || ds[0].ID != "d1" || ds[1].ID != "d2" || ds[0].UpstreamModel != "openai/gpt-4o" {
		t.Fatalf("Deployments = %+v", ds)
	}
	if got := s.AccessGroup("premium"); !slices.Equal(got, []string{"gpt-4o", "mini"}) {
		t.Fatalf("premium = %v", got)
	}
	if got := s.AccessGroup("basic"); !slices.Equal(got, []string{"mini"}) {
		t.Fatalf("basic = %v", got)
	}
	if s.AccessGroup("none") != nil || s.Deployments("none") != nil {
		t.Fatal("unknown group or model")
	}
	if err := s.ApplyDelta(delta(1, 2, tombstone(KindModel, "d3"), statetest.Model("d2", "gpt-4o"))); err != nil {
		t.Fatal(err)
	}
	if got := s.ModelNames(); !slices.Equal(got, []string{"claude", "gpt-4o"}) {
		t.Fatalf("ModelNames = %v", got)
	}
	if s.AccessGroup("premium") != nil || s.AccessGroup("basic") != nil {
		t.Fatal("access groups not updated")
	}
	if m, ok := s.Model("d4"); !ok || m.ModelName != "claude" {
		t.Fatal("Model by id")
	}
}

func TestSettingsParse(t *testing.T) {
	s := New()
	if st := s.Settings(); st.ServiceAccountEnforcedParams != nil || string(st.Raw) != "{}" {
		t.Fatalf("default settings %+v", st)
	}
	raw := `{"service_account_settings":{"enforced_params":["user","metadata.x"]},"other":1}`
	install(t, s, 1, statetest.Settings(raw))
	st := s.Settings()
	if !slices.Equal(st.ServiceAccountEnforcedParams, []string{"user", "metadata.x"}) || string(st.Raw) != raw {
		t.Fatalf("settings %+v", st)
	}
	if err := s.ApplyDelta(delta(1, 2, statetest.Settings(`{}`))); err != nil {
		t.Fatal(err)
	}
	if s.Settings().ServiceAccountEnforcedParams != nil {
		t.Fatal("enforced params kept")
	}
	if err := s.ApplyDelta(delta(2, 3, statetest.Settings(raw))); err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyDelta(delta(3, 4, tombstone(KindSettings, SettingsID))); err != nil {
		t.Fatal(err)
	}
	if s.Settings().ServiceAccountEnforcedParams != nil {
		t.Fatal("deleted settings kept")
	}
	if err := s.ApplyDelta(delta(4, 5, statetest.Settings(`{"x":`))); !errors.Is(err, ErrInvalidEntity) {
		t.Fatalf("bad JSON: %v", err)
	}
}

// TestInstallAtomic pins views while snapshots are swapped under readers:
// every view's keys, team and revision come from one snapshot.
func TestInstallAtomic(t *testing.T) {
	s := New()
	snap := func(rev int64) *Builder {
		b := s.NewSnapshot(rev)
		for i := range 50 {
			_ = b.Add(keyEnt(fmt.Sprint("k", i), fmt.Sprint("sk-", i), func(k *syncv1.Key) { k.Spend = rev }))
		}
		tm := statetest.Team(1)
		tm.GetTeam().Spend = rev
		_ = b.Add(tm)
		return b
	}
	s.Install(snap(1))
	var stop atomic.Bool
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				v := s.v.Load()
				tm, _ := v.teams.get("team-1")
				for i := range 50 {
					h := hashOf(fmt.Sprint("sk-", i))
					ki, ok := v.keys.lookup(&h, 0)
					if !ok || ki.Spend != v.rev || tm.Spend != v.rev {
						bad.Add(1)
					}
				}
			}
		}()
	}
	for rev := int64(2); rev < 200; rev++ {
		s.Install(snap(rev))
	}
	stop.Store(true)
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d inconsistent reads", bad.Load())
	}
}

// TestKeyTableModel applies random puts, regenerations and deletes through
// deltas and compares every lookup with a plain map, with compaction forced.
func TestKeyTableModel(t *testing.T) {
	// Few ids: deletes make garbage fast and the delta path compacts by
	// itself. Many ids: the indexes grow; compaction is forced.
	t.Run("ids=400", func(t *testing.T) { testKeyTableModel(t, 400, false) })
	t.Run("ids=1500", func(t *testing.T) { testKeyTableModel(t, 1500, true) })
}

func testKeyTableModel(t *testing.T, ids int, force bool) {
	defer func(v int) { compactMinDead = v }(compactMinDead)
	compactMinDead = 64

	type key struct {
		secret string
		prev   map[string]int64
		spend  int64
	}
	model := map[string]*key{}
	rng := rand.New(rand.NewPCG(1, 2))
	s := New()
	install(t, s, 1)
	rev := int64(1)
	gen := 0
	var secrets []string
	compactions := 0
	for round := 0; round < 300; round++ {
		var changes []*syncv1.Entity
		for range 1 + rng.IntN(40) {
			id := fmt.Sprint("k", rng.IntN(ids))
			switch op := rng.IntN(10); {
			case op < 2:
				delete(model, id)
				changes = append(changes, tombstone(KindKey, id))
			default:
				k := model[id]
				if k == nil || op < 5 {
					// new secret; the old one may stay valid for a while
					gen++
					nk := &key{secret: fmt.Sprint("sk-", gen), prev: map[string]int64{}}
					if k != nil && rng.IntN(2) == 0 {
						nk.prev[k.secret] = int64(rng.IntN(100))
					}
					k = nk
					secrets = append(secrets, k.secret)
				}
				k.spend = rng.Int64N(1000)
				model[id] = k
				changes = append(changes, keyEnt(id, k.secret, func(pk *syncv1.Key) {
					pk.Spend = k.spend
					for p, until := range k.prev {
						h := hashOf(p)
						pk.PreviousHashes = append(pk.PreviousHashes, &syncv1.PreviousHash{KeyHash: h[:], ValidUntilUnix: until})
					}
				}))
			}
		}
		before := s.v.Load().keys
		if err := s.ApplyDelta(delta(rev, rev+1, changes...)); err != nil {
			t.Fatal(err)
		}
		if s.v.Load().keys != before {
			compactions++
		}
		if force && round%40 == 39 {
			s.mu.Lock()
			nv := *s.v.Load()
			nv.keys = nv.keys.compacted()
			s.v.Store(&nv)
			s.mu.Unlock()
			compactions++
		}
		rev++
		now := int64(rng.IntN(100))
		want := map[string]string{}
		for id, k := range model {
			for p, until := range k.prev {
				if now < until {
					want[p] = id
				}
			}
		}
		for id, k := range model {
			want[k.secret] = id // a current hash wins
		}
		for _, sec := range secrets {
			ki, ok := lookup(s, sec, now)
			wid, wok := want[sec]
			if ok != wok || (ok && ki.TokenID != wid) {
				t.Fatalf("round %d: lookup(%s, %d) = %q,%v want %q,%v", round, sec, now, ki.TokenID, ok, wid, wok)
			}
			if ok && ki.Spend != model[wid].spend {
				t.Fatalf("round %d: %s spend %d want %d", round, sec, ki.Spend, model[wid].spend)
			}
		}
	}
	if st := s.Stats(); st.Keys != len(model) {
		t.Fatalf("stats keys %d want %d", st.Keys, len(model))
	}
	if compactions == 0 {
		t.Fatal("compaction never ran")
	}
	t.Logf("%d compactions", compactions)
}

// TestConcurrentReadersDuringDeltas runs lookups while deltas churn (run
// with -race).
func TestConcurrentReadersDuringDeltas(t *testing.T) {
	s := New()
	b := s.NewSnapshot(1)
	for i := range 2000 {
		if err := b.Add(statetest.Key(i)); err != nil {
			t.Fatal(err)
		}
	}
	s.Install(b)
	var stop atomic.Bool
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; !stop.Load(); i = (i + 7) % 3000 {
				h := statetest.Hash(i)
				if ki, ok := s.LookupKey(&h, 0); ok && ki.TokenID != statetest.TokenID(i) {
					t.Errorf("hash %d -> %s", i, ki.TokenID)
					return
				}
				s.Team("team-1")
				s.ModelNames()
				_ = s.Settings()
			}
		}()
	}
	rev := int64(1)
	for i := range 3000 {
		d := delta(rev, rev+1, statetest.Key(i), statetest.Tombstone(KindKey, statetest.TokenID((i+1000)%3000)), statetest.Team(i%5))
		if err := s.ApplyDelta(d); err != nil {
			t.Fatal(err)
		}
		rev++
	}
	stop.Store(true)
	wg.Wait()
}

func TestResolveCredential(t *testing.T) {
	t.Setenv("TOLLGATE_TEST_UPSTREAM_KEY", "sk-upstream")
	for _, tc := range []struct {
		in, want string
		err      bool
	}{
		{"os.environ/TOLLGATE_TEST_UPSTREAM_KEY", "sk-upstream", false},
		{"os.environ/TOLLGATE_TEST_UNSET_VAR", "", true},
		{"sk-literal", "sk-literal", false},
		{"", "", false},
	} {
		got, err := ResolveCredential(tc.in)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("ResolveCredential(%q) = %q, %v", tc.in, got, err)
		}
	}
}

func endUserEnt(id string, spend, budget int64, blocked bool) *syncv1.Entity {
	return &syncv1.Entity{Kind: KindEndUser, Id: id, Value: &syncv1.Entity_EndUser{EndUser: &syncv1.EndUser{
		EndUserId: id, Spend: spend, MaxBudget: budget, Blocked: blocked}}}
}

func TestEndUsers(t *testing.T) {
	s := New()
	install(t, s, 1, endUserEnt("c1", 5, 10, false), endUserEnt("c2", 0, -1, true))
	if u, ok := s.EndUser("c1"); !ok || *u != (EndUser{EndUserID: "c1", Spend: 5, MaxBudget: 10}) {
		t.Fatalf("c1 = %+v, %v", u, ok)
	}
	if u, ok := s.EndUser("c2"); !ok || !u.Blocked || u.MaxBudget != -1 {
		t.Fatalf("c2 = %+v, %v", u, ok)
	}
	if err := s.ApplyDelta(delta(1, 2, endUserEnt("c1", 9, 10, false), tombstone(KindEndUser, "c2"), endUserEnt("c3", 1, 2, false))); err != nil {
		t.Fatal(err)
	}
	if u, _ := s.EndUser("c1"); u.Spend != 9 {
		t.Fatalf("c1 spend after delta = %d", u.Spend)
	}
	if _, ok := s.EndUser("c2"); ok {
		t.Fatal("deleted end user kept")
	}
	if _, ok := s.EndUser("c3"); !ok {
		t.Fatal("new end user missing")
	}
	if st := s.Stats(); st.EndUsers != 2 {
		t.Fatalf("Stats.EndUsers = %d", st.EndUsers)
	}
	bad := &syncv1.Entity{Kind: KindEndUser, Id: "c4"}
	if err := s.ApplyDelta(delta(2, 3, bad)); !errors.Is(err, ErrInvalidEntity) {
		t.Fatalf("end user without value: %v", err)
	}
}

func TestMaxEndUserBudgetSetting(t *testing.T) {
	s := New()
	if s.Settings().HasMaxEndUserBudget {
		t.Fatal("default settings have an end-user budget")
	}
	install(t, s, 1, statetest.Settings(`{"max_end_user_budget":0.25}`))
	if st := s.Settings(); !st.HasMaxEndUserBudget || st.MaxEndUserBudget != 250_000_000 {
		t.Fatalf("settings %+v", st)
	}
	for _, raw := range []string{`{"max_end_user_budget":null}`, `{"max_end_user_budget":"1"}`, `{"max_end_user_budget":-1}`, `{}`} {
		install(t, s, 2, statetest.Settings(raw))
		if s.Settings().HasMaxEndUserBudget {
			t.Fatalf("%s: has an end-user budget", raw)
		}
	}
	install(t, s, 3, statetest.Settings(`{"max_end_user_budget":0}`))
	if st := s.Settings(); !st.HasMaxEndUserBudget || st.MaxEndUserBudget != 0 {
		t.Fatalf("a budget of 0: %+v", st)
	}
}

// TestKeyModelSpend: only the budgeted models' spend is kept, replaced by
// each put, dropped with the key or its model_max_budget, and kept across
// compaction.
func TestKeyModelSpend(t *testing.T) {
	s := New()
	budgeted := func(spend map[string]int64) func(*syncv1.Key) {
		return func(k *syncv1.Key) {
			k.ModelMaxBudget = map[string]*syncv1.ModelBudget{"m1": {BudgetLimit: 10}}
			k.ModelSpend = spend
		}
	}
	install(t, s, 1, keyEnt("k1", "sk-1", budgeted(map[string]int64{"m1": 4, "m2": 7})),
		keyEnt("k2", "sk-2", func(k *syncv1.Key) { k.ModelSpend = map[string]int64{"m1": 3} }))
	if got := s.KeyModelSpend("k1", "m1"); got != 4 {
		t.Fatalf("k1 m1 = %d", got)
	}
	if got := s.KeyModelSpend("k1", "m2"); got != 0 {
		t.Fatalf("unbudgeted model kept: %d", got)
	}
	if got := s.KeyModelSpend("k2", "m1"); got != 0 {
		t.Fatalf("key without model_max_budget kept spend: %d", got)
	}
	if err := s.ApplyDelta(delta(1, 2, keyEnt("k1", "sk-1", budgeted(map[string]int64{"m1": 6})))); err != nil {
		t.Fatal(err)
	}
	if got := s.KeyModelSpend("k1", "m1"); got != 6 {
		t.Fatalf("after delta k1 m1 = %d", got)
	}
	// The reset job zeroes it: the post-image has no model_spend.
	if err := s.ApplyDelta(delta(2, 3, keyEnt("k1", "sk-1", budgeted(nil)))); err != nil {
		t.Fatal(err)
	}
	if got := s.KeyModelSpend("k1", "m1"); got != 0 {
		t.Fatalf("after reset k1 m1 = %d", got)
	}
	if err := s.ApplyDelta(delta(3, 4, keyEnt("k1", "sk-1", budgeted(map[string]int64{"m1": 8})))); err != nil {
		t.Fatal(err)
	}
	old := compactMinDead
	compactMinDead = 0
	defer func() { compactMinDead = old }()
	if err := s.ApplyDelta(delta(4, 5, tombstone(KindKey, "k2"))); err != nil {
		t.Fatal(err)
	}
	if got := s.KeyModelSpend("k1", "m1"); got != 8 {
		t.Fatalf("after compaction k1 m1 = %d", got)
	}
	if err := s.ApplyDelta(delta(5, 6, tombstone(KindKey, "k1"))); err != nil {
		t.Fatal(err)
	}
	if got := s.KeyModelSpend("k1", "m1"); got != 0 {
		t.Fatalf("deleted key kept model spend: %d", got)
	}
}

// A presized builder (the restart path sizes it from the cache's count)
// holds the same keys; a hint that is too small or too large only costs
// growth or slack, and a hint after the first key is ignored.
func TestPresizedBuilder(t *testing.T) {
	for _, hint := range []int{0, 10, 3000, 100000} {
		s := New()
		b := s.NewSnapshot(1)
		b.Presize(hint)
		for i := range 3000 {
			if err := b.Add(statetest.Key(i)); err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				b.Presize(1 << 20) // ignored: the table is not empty
			}
		}
		if err := b.Add(statetest.Tombstone(KindKey, statetest.TokenID(7))); err != nil {
			t.Fatal(err)
		}
		if b.Keys() != 2999 {
			t.Fatalf("hint %d: %d keys", hint, b.Keys())
		}
		s.Install(b)
		for i := range 3000 {
			if i == 7 {
				mustMiss(t, s, statetest.Secret(i), 0)
				continue
			}
			if ki := mustFind(t, s, statetest.Secret(i), 0); ki.TokenID != statetest.TokenID(i) {
				t.Fatalf("hint %d: key %d has token %s", hint, i, ki.TokenID)
			}
		}
		// The records presize carved from one allocation stay there when
		// the hint was about right, and are copied out (the allocation
		// released) when it was far too high.
		kt := s.v.Load().keys
		capacity := 0
		for i := range kt.shards {
			capacity += cap(kt.shards[i].entries)
		}
		switch hint {
		case 3000:
			if kt.carved == 0 {
				t.Fatalf("hint %d: the carved records were copied", hint)
			}
		case 100000:
			if kt.carved != 0 || capacity > 2*3000 {
				t.Fatalf("hint %d: carved %d, capacity %d for 3000 records", hint, kt.carved, capacity)
			}
		}
	}
}

package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var spendTests = []test{
	{"AddsToEveryScope", testSpendScopes},
	{"ReplayChangesNothing", testSpendReplay},
	{"OverlapAppliesOnlyNew", testSpendOverlap},
	{"OutboxesAreIndependent", testSpendOutboxes},
	{"OneChangePerEntity", testSpendCoalesced},
	{"MissingEntitiesStillLogged", testSpendMissing},
	{"RejectsBadBatch", testSpendBadBatch},
	{"LogFilters", testSpendLogFilters},
	{"Report", testSpendReport},
	{"PutEndUser", testPutEndUser},
	{"EndUserChanges", testEndUserChanges},
	{"ListEndUsers", testListEndUsers},
	{"KeyModelSpendReported", testKeyModelSpendReported},
	{"SoftBudgetCrossedOnce", testSoftBudgetCrossing},
}

// spendFixture: org o1 ⊃ team t1 with member u1 (and u2), key k1 of u1 in t1.
func spendFixture(t *testing.T, s store.Store) int64 {
	head, err := s.Head(t.Context())
	if err != nil {
		t.Fatalf("Head: %v", err)
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		o := newOrg("o1", at(0))
		tm := newTeam("t1", at(1))
		tm.OrganizationID = "o1"
		tm.Members = []store.TeamMember{{UserID: "u1", Role: store.TeamRoleUser}, {UserID: "u2", Role: store.TeamRoleAdmin}}
		k := newKey("k1", at(2))
		k.UserID, k.TeamID, k.OrganizationID = "u1", "t1", "o1"
		k.Spend = 7 // spend already there is added to, not replaced
		return errors.Join(tx.CreateOrganization(ctx, o), tx.CreateTeam(ctx, tm), tx.CreateUser(ctx, newUser("u1", at(3))),
			tx.CreateUser(ctx, newUser("u2", at(4))), tx.CreateKey(ctx, k))
	})
	waitHead(t, s, head+1)
	return head + 1
}

func spendRec(seq uint64, cost int64) store.SpendRecord {
	return store.SpendRecord{
		Seq: seq, RequestID: fmt.Sprintf("req-%d", seq), TokenID: "k1", TeamID: "t1", UserID: "u1", OrganizationID: "o1",
		EndUser: "cust-1", Model: "gpt-4o-mini", DeploymentID: "dep-1", PromptTokens: 10, CompletionTokens: 5,
		Cost: cost, Streamed: seq%2 == 0, Status: 200, Route: "/chat/completions",
		StartTime: at(int(seq)), EndTime: at(int(seq) + 1),
	}
}

func batch(proxy, outbox string, recs ...store.SpendRecord) store.SpendBatch {
	return store.SpendBatch{ProxyID: proxy, OutboxID: outbox, Records: recs}
}

func apply(t *testing.T, s store.Store, b store.SpendBatch) int {
	t.Helper()
	return applyResult(t, s, b).Applied
}

func applyResult(t *testing.T, s store.Store, b store.SpendBatch) store.SpendResult {
	t.Helper()
	var res store.SpendResult
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		var err error
		res, err = tx.ApplySpend(ctx, b)
		return err
	})
	return res
}

type spends struct{ key, team, member, other, user, org, end int64 }

func readSpends(t *testing.T, s store.Store) spends {
	t.Helper()
	ctx := t.Context()
	r := s.Read()
	k, err1 := r.GetKey(ctx, "k1")
	tm, err2 := r.GetTeam(ctx, "t1")
	u, err3 := r.GetUser(ctx, "u1")
	o, err4 := r.GetOrganization(ctx, "o1")
	e, err5 := r.GetEndUser(ctx, "cust-1")
	if errors.Is(err5, store.ErrNotFound) {
		err5 = nil
	}
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		t.Fatalf("reading spend: %v", err)
	}
	m1, _ := tm.Member("u1")
	m2, _ := tm.Member("u2")
	return spends{k.Spend, tm.Spend, m1.Spend, m2.Spend, u.Spend, o.Spend, e.Spend}
}

func testSpendScopes(t *testing.T, s store.Store) {
	spendFixture(t, s)
	if n := apply(t, s, batch("p1", "ob1", spendRec(1, 100), spendRec(2, 20), spendRec(3, 3))); n != 3 {
		t.Fatalf("ApplySpend applied %d, want 3", n)
	}
	want := spends{key: 7 + 123, team: 123, member: 123, other: 0, user: 123, org: 123, end: 123}
	if got := readSpends(t, s); got != want {
		t.Fatalf("spend = %+v, want %+v", got, want)
	}
	k, _ := s.Read().GetKey(t.Context(), "k1")
	if k.ModelSpend["gpt-4o-mini"] != 123 {
		t.Errorf("key model spend = %v, want gpt-4o-mini: 123", k.ModelSpend)
	}
	hw, err := s.Read().SpendHighWater(t.Context(), "p1", "ob1")
	if err != nil || hw != 3 {
		t.Errorf("SpendHighWater = %d, %v; want 3", hw, err)
	}
	logs, total, err := s.Read().ListSpendLogs(t.Context(), store.SpendLogFilter{})
	if err != nil || total != 3 || len(logs) != 3 {
		t.Fatalf("ListSpendLogs = %d logs, total %d, %v", len(logs), total, err)
	}
	want3 := store.SpendLog{SpendRecord: spendRec(3, 3), ProxyID: "p1", OutboxID: "ob1"}
	expectEqual(t, "newest spend log", want3, logs[0])
	// The spend reached the change log, for the proxies' budget checks.
	cs := changeSet(t, s, 2)
	expectChanges(t, cs, "key/k1/put", "team/t1/put", "user/u1/put", "organization/o1/put", "end_user/cust-1/put")
	expectPostImage(t, findChange(t, cs, store.KindKey, "k1"), k)
	eu, err := s.Read().GetEndUser(t.Context(), "cust-1")
	if err != nil {
		t.Fatalf("GetEndUser: %v", err)
	}
	expectPostImage(t, findChange(t, cs, store.KindEndUser, "cust-1"), eu)
	tm, _ := s.Read().GetTeam(t.Context(), "t1")
	expectPostImage(t, findChange(t, cs, store.KindTeam, "t1"), tm)
}

func testSpendReplay(t *testing.T, s store.Store) {
	spendFixture(t, s)
	b := batch("p1", "ob1", spendRec(1, 100), spendRec(2, 20))
	apply(t, s, b)
	waitHead(t, s, 2)
	before := readSpends(t, s)
	if n := apply(t, s, b); n != 0 {
		t.Fatalf("replayed batch applied %d records", n)
	}
	if got := readSpends(t, s); got != before {
		t.Fatalf("replay changed spend: %+v -> %+v", before, got)
	}
	if _, total, _ := s.Read().ListSpendLogs(t.Context(), store.SpendLogFilter{}); total != 2 {
		t.Fatalf("replay: %d spend logs, want 2", total)
	}
	time.Sleep(20 * time.Millisecond)
	waitHead(t, s, 2) // no new revision
}

func testSpendOverlap(t *testing.T, s store.Store) {
	spendFixture(t, s)
	apply(t, s, batch("p1", "ob1", spendRec(1, 1), spendRec(2, 2), spendRec(3, 4)))
	if n := apply(t, s, batch("p1", "ob1", spendRec(2, 2), spendRec(3, 4), spendRec(4, 8), spendRec(5, 16))); n != 2 {
		t.Fatalf("overlapping batch applied %d, want 2", n)
	}
	if got := readSpends(t, s); got.team != 31 || got.key != 7+31 {
		t.Fatalf("spend = %+v, want team 31, key 38", got)
	}
	if _, total, _ := s.Read().ListSpendLogs(t.Context(), store.SpendLogFilter{}); total != 5 {
		t.Fatalf("%d spend logs, want 5", total)
	}
}

func testSpendOutboxes(t *testing.T, s store.Store) {
	spendFixture(t, s)
	apply(t, s, batch("p1", "ob1", spendRec(1, 1)))
	// The same proxy with a new outbox (its file was lost) starts again at 1.
	if n := apply(t, s, batch("p1", "ob2", spendRec(1, 2))); n != 1 {
		t.Fatalf("new outbox applied %d, want 1", n)
	}
	if n := apply(t, s, batch("p2", "ob1", spendRec(1, 4))); n != 1 {
		t.Fatalf("other proxy applied %d, want 1", n)
	}
	if got := readSpends(t, s); got.team != 7 {
		t.Fatalf("team spend = %d, want 7", got.team)
	}
}

func testSpendCoalesced(t *testing.T, s store.Store) {
	spendFixture(t, s)
	recs := make([]store.SpendRecord, 500)
	for i := range recs {
		recs[i] = spendRec(uint64(i+1), 1)
		if i%2 == 1 {
			recs[i].UserID, recs[i].TokenID = "u2", ""
		}
	}
	apply(t, s, batch("p1", "ob1", recs...))
	cs := changeSet(t, s, 2)
	expectChanges(t, cs, "key/k1/put", "team/t1/put", "user/u1/put", "user/u2/put", "organization/o1/put", "end_user/cust-1/put")
	if got := readSpends(t, s); got != (spends{key: 257, team: 500, member: 250, other: 250, user: 250, org: 500, end: 500}) {
		t.Fatalf("spend = %+v", got)
	}
}

func testSpendMissing(t *testing.T, s store.Store) {
	r := spendRec(1, 5)
	r.TokenID, r.TeamID, r.UserID, r.OrganizationID, r.EndUser = "gone", "gone", "gone", "gone", ""
	if n := apply(t, s, batch("p1", "ob1", r)); n != 1 {
		t.Fatalf("applied %d, want 1", n)
	}
	logs, total, err := s.Read().ListSpendLogs(t.Context(), store.SpendLogFilter{TokenID: "gone"})
	if err != nil || total != 1 || logs[0].Cost != 5 {
		t.Fatalf("ListSpendLogs = %+v, %d, %v", logs, total, err)
	}
	if head, _ := s.Head(t.Context()); head != 0 {
		t.Fatalf("head = %d: a batch that touched no synced entity must not make a change set", head)
	}
	if _, err := s.Read().GetEndUser(t.Context(), "nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetEndUser(nobody) = %v, want ErrNotFound", err)
	}
}

func testSpendBadBatch(t *testing.T, s store.Store) {
	for name, b := range map[string]store.SpendBatch{
		"no proxy":       batch("", "ob1", spendRec(1, 1)),
		"no outbox":      batch("p1", "", spendRec(1, 1)),
		"not increasing": batch("p1", "ob1", spendRec(2, 1), spendRec(2, 1)),
		"zero seq":       batch("p1", "ob1", spendRec(0, 1)),
	} {
		err := s.ReadWriteTx(t.Context(), func(ctx context.Context, tx store.Tx) error {
			_, err := tx.ApplySpend(ctx, b)
			return err
		})
		if err == nil {
			t.Errorf("%s: ApplySpend accepted the batch", name)
		}
	}
}

func testSpendLogFilters(t *testing.T, s store.Store) {
	ctx := t.Context()
	var recs []store.SpendRecord
	for i := 1; i <= 12; i++ {
		r := spendRec(uint64(i), int64(i))
		r.StartTime = at(10 * i)
		r.TokenID = fmt.Sprintf("k%d", i%3)
		r.UserID = fmt.Sprintf("u%d", i%2)
		r.TeamID = fmt.Sprintf("t%d", i%4)
		recs = append(recs, r)
	}
	apply(t, s, batch("p1", "ob1", recs[:6]...))
	apply(t, s, batch("p1", "ob1", recs[6:]...))
	seqs := func(f store.SpendLogFilter) ([]uint64, int) {
		t.Helper()
		logs, total, err := s.Read().ListSpendLogs(ctx, f)
		if err != nil {
			t.Fatalf("ListSpendLogs(%+v): %v", f, err)
		}
		out := []uint64{}
		for _, l := range logs {
			out = append(out, l.Seq)
		}
		return out, total
	}
	check := func(name string, f store.SpendLogFilter, want []uint64, wantTotal int) {
		t.Helper()
		got, total := seqs(f)
		if fmt.Sprint(got) != fmt.Sprint(want) || total != wantTotal {
			t.Errorf("%s: got %v (total %d), want %v (total %d)", name, got, total, want, wantTotal)
		}
	}
	check("all", store.SpendLogFilter{}, []uint64{12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, 12)
	check("token", store.SpendLogFilter{TokenID: "k1"}, []uint64{10, 7, 4, 1}, 4)
	check("user", store.SpendLogFilter{UserID: "u0"}, []uint64{12, 10, 8, 6, 4, 2}, 6)
	check("team", store.SpendLogFilter{TeamID: "t3"}, []uint64{11, 7, 3}, 3)
	check("request", store.SpendLogFilter{RequestID: "req-5"}, []uint64{5}, 1)
	check("request+user mismatch", store.SpendLogFilter{RequestID: "req-5", UserID: "u0"}, []uint64{}, 0)
	check("window", store.SpendLogFilter{Since: at(30), Until: at(60)}, []uint64{5, 4, 3}, 3)
	check("far bounds", store.SpendLogFilter{Since: time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC), Until: time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC), TeamID: "t3"}, []uint64{11, 7, 3}, 3)
	check("page 2", store.SpendLogFilter{Page: store.Page{Page: 2, Size: 5}}, []uint64{7, 6, 5, 4, 3}, 12)
	check("page past end", store.SpendLogFilter{Page: store.Page{Page: 9, Size: 5}}, []uint64{}, 12)
}

// testPutEndUser: PutEndUser upserts an end user (spend, alias, budget,
// blocked), keeps its created_at, and request spend adds to it.
func testPutEndUser(t *testing.T, s store.Store) {
	ctx := t.Context()
	get := func() store.EndUser {
		t.Helper()
		e, err := s.Read().GetEndUser(ctx, "cust-1")
		if err != nil {
			t.Fatalf("GetEndUser: %v", err)
		}
		return e
	}
	budget := int64(25_000_000)
	put := func(e store.EndUser) {
		t.Helper()
		write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.PutEndUser(ctx, e) })
	}
	put(store.EndUser{EndUserID: "cust-1", Spend: 1_500_000, Alias: "Acme", MaxBudget: &budget, Blocked: true, CreatedAt: at(1), UpdatedAt: at(2)})
	e := get()
	if e.EndUserID != "cust-1" || e.Spend != 1_500_000 || e.Alias != "Acme" || e.MaxBudget == nil || *e.MaxBudget != budget || !e.Blocked ||
		!e.CreatedAt.Equal(at(1)) || !e.UpdatedAt.Equal(at(2)) {
		t.Fatalf("after PutEndUser: %+v", e)
	}
	// Putting the same end user again is idempotent.
	put(store.EndUser{EndUserID: "cust-1", Spend: 1_500_000, Alias: "Acme", MaxBudget: &budget, Blocked: true, CreatedAt: at(1), UpdatedAt: at(2)})
	if got := get(); got.Spend != 1_500_000 || !got.CreatedAt.Equal(at(1)) {
		t.Fatalf("after a second PutEndUser: %+v", got)
	}
	// Request spend adds to it and keeps the rest.
	waitHead(t, s, 2) // each put was a change set
	spendFixture(t, s)
	apply(t, s, batch("p1", "ob1", spendRec(1, 100)))
	e = get()
	if e.Spend != 1_500_100 || e.Alias != "Acme" || e.MaxBudget == nil || *e.MaxBudget != budget || !e.Blocked || !e.CreatedAt.Equal(at(1)) {
		t.Fatalf("after ApplySpend: %+v", e)
	}
	// A replace keeps created_at and clears what it leaves out.
	put(store.EndUser{EndUserID: "cust-1", Spend: 7, CreatedAt: at(9), UpdatedAt: at(10)})
	e = get()
	if e.Spend != 7 || e.Alias != "" || e.MaxBudget != nil || e.Blocked || !e.CreatedAt.Equal(at(1)) || !e.UpdatedAt.Equal(at(10)) {
		t.Fatalf("after a replacing PutEndUser: %+v", e)
	}
	// Zero times are filled in.
	put(store.EndUser{EndUserID: "cust-2"})
	if e, err := s.Read().GetEndUser(ctx, "cust-2"); err != nil || e.CreatedAt.IsZero() || e.UpdatedAt.IsZero() {
		t.Fatalf("cust-2: %+v, %v", e, err)
	}
	// An end user needs an id.
	if err := s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		return tx.PutEndUser(ctx, store.EndUser{Spend: 1})
	}); err == nil {
		t.Fatal("PutEndUser without end_user_id succeeded")
	}
}

// Soft budgets: the batch that takes spend from below to at-or-above a soft
// budget reports the crossing, once; later batches and replays do not.
func testSoftBudgetCrossing(t *testing.T, s store.Store) {
	spendFixture(t, s)
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		k, err := tx.GetKey(ctx, "k1")
		if err != nil {
			return err
		}
		k.SoftBudget, k.MaxBudget, k.KeyAlias = ptr(int64(100)), ptr(int64(1000)), "soft"
		if err := tx.UpdateKey(ctx, k); err != nil {
			return err
		}
		tm, err := tx.GetTeam(ctx, "t1")
		if err != nil {
			return err
		}
		tm.SoftBudget = ptr(int64(150))
		if err := tx.UpdateTeam(ctx, tm); err != nil {
			return err
		}
		u, err := tx.GetUser(ctx, "u1")
		if err != nil {
			return err
		}
		u.SoftBudget = ptr(int64(10))
		return tx.UpdateUser(ctx, u)
	})
	kinds := func(r store.SpendResult) []string {
		out := []string{}
		for _, c := range r.SoftBudgetCrossings {
			out = append(out, fmt.Sprintf("%s:%s:%d/%d", c.Kind, c.ID, c.Spend, c.SoftBudget))
		}
		return out
	}
	// Key spend starts at 7: 7+50 = 57 < 100; user 0 -> 50 crosses 10.
	first := applyResult(t, s, batch("p1", "ob1", spendRec(1, 50)))
	if got := kinds(first); fmt.Sprint(got) != "[user:u1:50/10]" {
		t.Fatalf("first batch crossings = %v", got)
	}
	// Spends: every touched key, team, user, org and end user with its
	// spend after.
	after := map[string]int64{}
	for _, o := range first.Spends {
		after[o.Kind+":"+o.ID] = o.Spend
	}
	if fmt.Sprint(after) != "map[end_user:cust-1:50 key:k1:57 organization:o1:50 team:t1:50 team_member:t1/u1:50 user:u1:50]" {
		t.Fatalf("spends after the first batch = %v", after)
	}
	// Key 57 -> 107 crosses 100; team 50 -> 100 does not reach 150.
	res := applyResult(t, s, batch("p1", "ob1", spendRec(2, 50)))
	if got := kinds(res); fmt.Sprint(got) != "[key:k1:107/100]" {
		t.Fatalf("second batch crossings = %v", got)
	}
	if c := res.SoftBudgetCrossings[0]; c.KeyAlias != "soft" || c.UserID != "u1" || c.TeamID != "t1" || c.MaxBudget == nil || *c.MaxBudget != 1000 {
		t.Fatalf("key crossing details = %+v", c)
	}
	// A replay applies nothing and crosses nothing.
	if got := applyResult(t, s, batch("p1", "ob1", spendRec(2, 50))); got.Applied != 0 || len(got.SoftBudgetCrossings) != 0 {
		t.Fatalf("replay = %+v", got)
	}
	// Team 100 -> 160 crosses 150; the key is already above and stays quiet.
	if got := kinds(applyResult(t, s, batch("p1", "ob1", spendRec(3, 60)))); fmt.Sprint(got) != "[team:t1:160/150]" {
		t.Fatalf("third batch crossings = %v", got)
	}
}

// SpendReport sums per UTC day and group in one pass: days split at
// midnight UTC, a log without the grouped field is group "", the filter's
// bounds and fields apply, and rows come ordered by day, then group.
func testSpendReport(t *testing.T, s store.Store) {
	spendFixture(t, s)
	rep, ok := s.Read().(store.SpendReporter)
	if !ok {
		t.Fatal("the backend's reader does not implement store.SpendReporter")
	}
	day1 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	rec := func(seq uint64, at time.Time, user, model string, cost int64) store.SpendRecord {
		r := spendRec(seq, cost)
		r.StartTime, r.EndTime, r.UserID, r.Model = at, at.Add(time.Second), user, model
		if user == "" {
			r.TokenID, r.TeamID, r.OrganizationID = "", "", ""
		}
		return r
	}
	apply(t, s, batch("p1", "ob", rec(1, day1.Add(-time.Nanosecond), "u1", "m-a", 100), // the day before
		rec(2, day1, "u1", "m-a", 10), rec(3, day1.Add(23*time.Hour), "u2", "m-b", 20),
		rec(4, day1.Add(24*time.Hour), "u1", "m-b", 40), rec(5, day1.Add(25*time.Hour), "", "m-b", 80)))

	ctx := t.Context()
	f := store.SpendLogFilter{Since: day1, Until: day1.Add(48 * time.Hour)}
	got, err := rep.SpendReport(ctx, f, store.SpendByUser)
	if err != nil {
		t.Fatal(err)
	}
	day2 := day1.Add(24 * time.Hour)
	want := []store.SpendDay{
		{Day: day1, Group: "u1", Cost: 10, Requests: 1, Tokens: 15},
		{Day: day1, Group: "u2", Cost: 20, Requests: 1, Tokens: 15},
		{Day: day2, Group: "", Cost: 80, Requests: 1, Tokens: 15},
		{Day: day2, Group: "u1", Cost: 40, Requests: 1, Tokens: 15},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("by user:\n got %+v\nwant %+v", got, want)
	}
	got, err = rep.SpendReport(ctx, store.SpendLogFilter{UserID: "u1"}, store.SpendByModel)
	if err != nil {
		t.Fatal(err)
	}
	want = []store.SpendDay{
		{Day: day1.Add(-24 * time.Hour), Group: "m-a", Cost: 100, Requests: 1, Tokens: 15},
		{Day: day1, Group: "m-a", Cost: 10, Requests: 1, Tokens: 15},
		{Day: day2, Group: "m-b", Cost: 40, Requests: 1, Tokens: 15},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("u1 by model:\n got %+v\nwant %+v", got, want)
	}
	if got, err := rep.SpendReport(ctx, store.SpendLogFilter{TeamID: "nope"}, store.SpendByTeam); err != nil || len(got) != 0 {
		t.Errorf("no match: %v %v", got, err)
	}
	if _, err := rep.SpendReport(ctx, f, "prompt"); err == nil {
		t.Error("an unknown group is not refused")
	}
}

// testEndUserChanges: every end-user write is a change the proxies see
// (PutEndUser a put with the post-image, DeleteEndUser a tombstone), and
// DeleteEndUser of an unknown end user is ErrNotFound and changes nothing.
func testEndUserChanges(t *testing.T, s store.Store) {
	ctx := t.Context()
	budget := int64(3)
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		return tx.PutEndUser(ctx, store.EndUser{EndUserID: "cust-1", Alias: "A", MaxBudget: &budget, Blocked: true})
	})
	cs := changeSet(t, s, 1)
	expectChanges(t, cs, "end_user/cust-1/put")
	e, err := s.Read().GetEndUser(ctx, "cust-1")
	if err != nil {
		t.Fatalf("GetEndUser: %v", err)
	}
	expectPostImage(t, findChange(t, cs, store.KindEndUser, "cust-1"), e)

	err = s.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error { return tx.DeleteEndUser(ctx, "nobody") })
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("DeleteEndUser(nobody) = %v, want ErrNotFound", err)
	}
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.DeleteEndUser(ctx, "cust-1") })
	expectChanges(t, changeSet(t, s, 2), "end_user/cust-1/delete")
	if _, err := s.Read().GetEndUser(ctx, "cust-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetEndUser after delete = %v, want ErrNotFound", err)
	}
	// Spend naming it again creates it afresh, with a change.
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.CreateKey(ctx, newKey("k1", at(2))) })
	waitHead(t, s, 3)
	r := spendRec(1, 4)
	r.TeamID, r.UserID, r.OrganizationID = "", "", ""
	apply(t, s, batch("p1", "ob1", r))
	cs = changeSet(t, s, 4)
	expectChanges(t, cs, "key/k1/put", "end_user/cust-1/put")
	e, err = s.Read().GetEndUser(ctx, "cust-1")
	if err != nil || e.Spend != 4 || e.MaxBudget != nil || e.Blocked {
		t.Fatalf("end user after spend = %+v, %v", e, err)
	}
	expectPostImage(t, findChange(t, cs, store.KindEndUser, "cust-1"), e)
	expectReplayed(t, s.Read(), replay(t, allChanges(t, s)))
}

// testListEndUsers: ListEndUsers pages in id order; EachEndUser visits all.
func testListEndUsers(t *testing.T, s store.Store) {
	ctx := t.Context()
	ids := []string{"c", "a", "e", "b", "d"}
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		for _, id := range ids {
			if err := tx.PutEndUser(ctx, store.EndUser{EndUserID: id}); err != nil {
				return err
			}
		}
		return nil
	})
	got, total, err := s.Read().ListEndUsers(ctx, store.Page{Page: 2, Size: 2})
	if err != nil || total != 5 || len(got) != 2 || got[0].EndUserID != "c" || got[1].EndUserID != "d" {
		t.Fatalf("ListEndUsers page 2 = %+v, %d, %v", got, total, err)
	}
	got, total, err = s.Read().ListEndUsers(ctx, store.Page{Page: 9, Size: 2})
	if err != nil || total != 5 || got == nil || len(got) != 0 {
		t.Fatalf("ListEndUsers past the end = %+v, %d, %v", got, total, err)
	}
	n := 0
	if err := s.Read().EachEndUser(ctx, func(store.EndUser) error { n++; return nil }); err != nil || n != 5 {
		t.Fatalf("EachEndUser visited %d, %v", n, err)
	}
}

// testKeyModelSpendReported: the spend a batch left on a key's budgeted
// models is in SpendResult.Spends (KindKeyModel), for the proxies'
// per-model reservations; unbudgeted models are not.
func testKeyModelSpendReported(t *testing.T, s store.Store) {
	spendFixture(t, s)
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		k, err := tx.GetKey(ctx, "k1")
		if err != nil {
			return err
		}
		k.ModelMaxBudget = map[string]store.ModelBudget{"gpt-4o-mini": {BudgetLimit: 100}}
		return tx.UpdateKey(ctx, k)
	})
	other := spendRec(2, 7)
	other.Model = "gpt-4o"
	res := applyResult(t, s, batch("p1", "ob1", spendRec(1, 30), other))
	got := map[string]int64{}
	for _, o := range res.Spends {
		if o.Kind == store.KindKeyModel {
			got[o.ID] = o.Spend
		}
	}
	if fmt.Sprint(got) != "map[k1/gpt-4o-mini:30]" {
		t.Fatalf("key model spends = %v", got)
	}
	k, err := s.Read().GetKey(t.Context(), "k1")
	if err != nil || k.ModelSpend["gpt-4o-mini"] != 30 || k.ModelSpend["gpt-4o"] != 7 {
		t.Fatalf("model spend = %v, %v", k.ModelSpend, err)
	}
}

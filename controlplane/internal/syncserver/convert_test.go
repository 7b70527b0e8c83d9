package syncserver

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

func TestKeyConversion(t *testing.T) {
	plain := newPlaintext()
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	valid := time.Date(2029, 1, 1, 0, 0, 0, 0, time.UTC)
	k := store.Key{
		TokenID: "tok", KeyHash: sha256Hex(plain), KeyAlias: "a", UserID: "u", TeamID: "t", OrganizationID: "o",
		ServiceAccount: true, Models: []string{"m1", "m2"},
		Limits:         store.Limits{MaxBudget: ptr[int64](7), BudgetDuration: "30d", BudgetResetAt: &valid, TPMLimit: ptr[int64](0)},
		ModelMaxBudget: map[string]store.ModelBudget{"m1": {BudgetLimit: 5, TimePeriod: "1d"}},
		ModelTPMLimit:  map[string]int64{"m2": 9},
		EnforcedParams: []string{"user"}, AllowedRoutes: []string{"/chat/completions"}, Tags: []string{"x"},
		Blocked: true, Expires: &exp, Spend: 42, Metadata: json.RawMessage(` {"a":1} `),
		// Only the spend of budgeted models is sent.
		ModelSpend: map[string]int64{"m1": 3, "m2": 30},
		PreviousHashes: []store.PreviousHash{
			{KeyHash: sha256Hex("old"), ValidUntil: valid},
			{KeyHash: "not-hex", ValidUntil: valid},                // dropped
			{KeyHash: sha256Hex("older"), ValidUntil: time.Time{}}, // no usable grace: dropped
		},
	}
	e, err := keyEntity(&k)
	if err != nil {
		t.Fatal(err)
	}
	pk := e.GetKey()
	wantHash, _ := hex.DecodeString(sha256Hex(plain))
	oldHash, _ := hex.DecodeString(sha256Hex("old"))
	want := &syncv1.Key{
		TokenId: "tok", KeyHash: wantHash, KeyAlias: "a", UserId: "u", TeamId: "t", OrganizationId: "o",
		ServiceAccount: true, Models: []string{"m1", "m2"},
		Limits: &syncv1.Limits{MaxBudget: 7, SoftBudget: -1, BudgetDuration: "30d", BudgetResetAtUnix: valid.Unix(),
			RpmLimit: -1, TpmLimit: 0, MaxParallelRequests: -1},
		ModelMaxBudget: map[string]*syncv1.ModelBudget{"m1": {BudgetLimit: 5, TimePeriod: "1d"}},
		ModelSpend:     map[string]int64{"m1": 3},
		ModelTpmLimit:  map[string]int64{"m2": 9},
		EnforcedParams: []string{"user"}, AllowedRoutes: []string{"/chat/completions"}, Tags: []string{"x"},
		Blocked: true, ExpiresUnix: exp.Unix(), Spend: 42, Metadata: []byte(`{"a":1}`),
		PreviousHashes: []*syncv1.PreviousHash{{KeyHash: oldHash, ValidUntilUnix: valid.Unix(), ValidUntilUnixMs: valid.UnixMilli()}},
	}
	if e.GetKind() != "key" || e.GetId() != "tok" || e.GetDeleted() || !proto.Equal(pk, want) {
		t.Fatalf("got %v\nwant %v", e, want)
	}
	if len(pk.GetKeyHash()) != 32 {
		t.Fatalf("hash is %d bytes", len(pk.GetKeyHash()))
	}

	// No expiry is 0; an expiry at the epoch must not read as "never".
	k.Expires = nil
	if e, _ := keyEntity(&k); e.GetKey().GetExpiresUnix() != 0 {
		t.Error("no expiry must be 0")
	}
	epoch := time.Unix(0, 0)
	k.Expires = &epoch
	if e, _ := keyEntity(&k); e.GetKey().GetExpiresUnix() != 1 {
		t.Errorf("expiry at the epoch sent as %d", e.GetKey().GetExpiresUnix())
	}
	k.Metadata = json.RawMessage("null")
	if e, _ := keyEntity(&k); e.GetKey().GetMetadata() != nil {
		t.Error("null metadata must be empty")
	}
}

func TestEndUserConversion(t *testing.T) {
	e, err := changeEntity(store.Change{Kind: store.KindEndUser, ID: "cust", Op: store.OpPut,
		Data: json.RawMessage(`{"end_user_id":"cust","spend":12,"alias":"A","max_budget":30,"blocked":true}`)})
	if err != nil {
		t.Fatal(err)
	}
	want := &syncv1.EndUser{EndUserId: "cust", Spend: 12, MaxBudget: 30, Blocked: true}
	if e.GetKind() != "end_user" || e.GetId() != "cust" || !proto.Equal(e.GetEndUser(), want) {
		t.Fatalf("got %v, want %v", e, want)
	}
	// No budget of its own is -1 on the wire (the proxy's default applies).
	e, _ = changeEntity(store.Change{Kind: store.KindEndUser, ID: "c2", Op: store.OpPut, Data: json.RawMessage(`{"end_user_id":"c2"}`)})
	if e.GetEndUser().GetMaxBudget() != -1 {
		t.Fatalf("max_budget without one = %d, want -1", e.GetEndUser().GetMaxBudget())
	}
	e, _ = changeEntity(store.Change{Kind: store.KindEndUser, ID: "c2", Op: store.OpDelete})
	if !e.GetDeleted() || e.GetKind() != "end_user" {
		t.Fatalf("tombstone = %v", e)
	}
}

func TestKeyWithMalformedHashIsRefusedWithoutEchoingIt(t *testing.T) {
	plain := newPlaintext()
	for _, h := range []string{"", plain, sha256Hex("x")[:62], strings.Repeat("z", 64)} {
		k := store.Key{TokenID: "tok", KeyHash: h}
		_, err := keyEntity(&k)
		if err == nil {
			t.Fatalf("hash %q accepted", h)
		}
		if h != "" && strings.Contains(err.Error(), h) {
			t.Fatalf("error echoes the stored value: %v", err)
		}
	}
}

func TestLimitsAndMembers(t *testing.T) {
	tm := store.Team{TeamID: "t", OrganizationID: "o", Models: []string{"m"}, Blocked: true, Spend: 3,
		Members: []store.TeamMember{{UserID: "u1", Role: "admin", MaxBudgetInTeam: ptr[int64](10), Spend: 1}, {UserID: "u2", Role: "user"}}}
	got := teamEntity(&tm).GetTeam()
	want := &syncv1.Team{TeamId: "t", OrganizationId: "o", Models: []string{"m"}, Blocked: true, Spend: 3, TeamMemberBudget: -1,
		Limits:  &syncv1.Limits{MaxBudget: -1, SoftBudget: -1, RpmLimit: -1, TpmLimit: -1, MaxParallelRequests: -1},
		Members: []*syncv1.TeamMember{{UserId: "u1", Role: "admin", MaxBudgetInTeam: 10, Spend: 1}, {UserId: "u2", Role: "user", MaxBudgetInTeam: -1}}}
	if !proto.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	u := store.User{UserID: "u", Limits: store.Limits{MaxBudget: ptr[int64](-5), RPMLimit: ptr[int64](0)}}
	if l := userEntity(&u).GetUser().GetLimits(); l.GetMaxBudget() != 0 || l.GetRpmLimit() != 0 || l.GetTpmLimit() != -1 {
		t.Fatalf("a stored negative limit must not become unlimited: %v", l)
	}
	m := store.Model{ID: "1", ModelName: "n", UpstreamModel: "openai/x", APIKey: "os.environ/K", RPM: ptr[int64](5), AccessGroups: []string{"g"}}
	gm := modelEntity(&m).GetModel()
	if gm.GetApiKey() != "os.environ/K" || gm.GetRpm() != 5 || gm.GetTpm() != -1 || gm.GetAccessGroups()[0] != "g" {
		t.Fatalf("model %v", gm)
	}
}

func TestSettingsLoseControlPlaneSecrets(t *testing.T) {
	s := store.Settings{GeneralSettings: json.RawMessage(`{"master_key":"sk-m","database_url":"postgres://x","max_parallel_requests":5}`)}
	e, err := settingsEntity(&s)
	if err != nil {
		t.Fatal(err)
	}
	if e.GetId() != settingsID || string(e.GetSettings().GetGeneralSettings()) != `{"max_parallel_requests":5}` {
		t.Fatalf("got %v", e)
	}
	// Untouched when there is nothing to strip: bytes as stored.
	s.GeneralSettings = json.RawMessage(`{"b":1, "a":2}`)
	if e, _ := settingsEntity(&s); string(e.GetSettings().GetGeneralSettings()) != `{"b":1, "a":2}` {
		t.Fatalf("got %s", e.GetSettings().GetGeneralSettings())
	}
	s.GeneralSettings = nil
	if e, _ := settingsEntity(&s); string(e.GetSettings().GetGeneralSettings()) != `{}` {
		t.Fatalf("got %s", e.GetSettings().GetGeneralSettings())
	}
	for _, bad := range []string{`[1]`, `"x"`, `{`, `null `} {
		s.GeneralSettings = json.RawMessage(bad)
		if _, err := settingsEntity(&s); err == nil && bad != `null ` {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestChangeEntity(t *testing.T) {
	k := testKey("tok", newPlaintext())
	data, _ := json.Marshal(k)
	e, err := changeEntity(store.Change{Kind: store.KindKey, ID: "tok", Op: store.OpPut, Data: data})
	if err != nil || e.GetKey().GetTokenId() != "tok" {
		t.Fatalf("%v %v", e, err)
	}
	e, err = changeEntity(store.Change{Kind: store.KindTeam, ID: "t", Op: store.OpDelete})
	if err != nil || !proto.Equal(e, &syncv1.Entity{Kind: "team", Id: "t", Deleted: true}) {
		t.Fatalf("%v %v", e, err)
	}
	for _, c := range []store.Change{
		{Kind: store.KindKey, ID: "k", Op: store.OpPut, Data: json.RawMessage(`{"token_id":"k","key_hash":"nope"}`)},
		{Kind: store.KindTeam, ID: "t", Op: store.OpPut, Data: json.RawMessage(`{`)},
		{Kind: "gadget", ID: "g", Op: store.OpPut, Data: json.RawMessage(`{}`)},
		{Kind: store.KindUser, ID: "u", Op: "upsert", Data: json.RawMessage(`{}`)},
	} {
		if _, err := changeEntity(c); err == nil {
			t.Errorf("%+v converted", c)
		}
	}
}

// A change that cannot be converted must not leave the old version live on
// the proxies: it becomes a tombstone.
func TestUnconvertibleChangeBecomesTombstone(t *testing.T) {
	good := testKey("good", newPlaintext())
	data, _ := json.Marshal(good)
	cs := store.ChangeSet{Revision: 7, CommittedAt: time.Unix(100, 5), Changes: []store.Change{
		{Kind: store.KindKey, ID: "bad", Op: store.OpPut, Data: json.RawMessage(`{"token_id":"bad","key_hash":"sk-plaintext-by-mistake"}`)},
		{Kind: store.KindKey, ID: "good", Op: store.OpPut, Data: data},
		{Kind: store.KindUser, ID: "bad\xffutf8", Op: store.OpPut, Data: json.RawMessage(`{"user_id":"x"}`)},
	}}
	var logs bytes.Buffer
	d := encodeChangeSet(slog.New(slog.NewTextHandler(&logs, nil)), cs)
	var m syncv1.ControlMessage
	if err := proto.Unmarshal(d.raw, &m); err != nil {
		t.Fatal(err)
	}
	delta := m.GetDelta()
	if d.rev != 7 || delta.GetRevision() != 7 || delta.GetPrevRevision() != 6 || delta.GetCommittedAtUnixNano() != time.Unix(100, 5).UnixNano() {
		t.Fatalf("delta header %v", delta)
	}
	ch := delta.GetChanges()
	if len(ch) != 3 || !ch[0].GetDeleted() || ch[0].GetId() != "bad" || ch[1].GetDeleted() || !ch[2].GetDeleted() {
		t.Fatalf("changes %v", ch)
	}
	if strings.Contains(logs.String(), "sk-plaintext-by-mistake") {
		t.Fatal("the malformed hash was logged")
	}
	if !strings.Contains(logs.String(), "revision=7") {
		t.Fatalf("logs: %s", logs.String())
	}
}

func TestChunker(t *testing.T) {
	st := newMemStore()
	seed(t, st, 12) // 17 entities
	for _, tc := range []struct {
		entities, bytes int
		wantChunks      int
	}{
		{5, 1 << 20, 4},
		{17, 1 << 20, 1},
		{100, 600, 0}, // byte-bound: several
		{1, 1 << 20, 17},
	} {
		var sn *snapshot
		err := st.Snapshot(context.Background(), func(rev int64, r store.Reader) error {
			var err error
			sn, err = buildSnapshot(context.Background(), slog.New(slog.DiscardHandler), rev, r, tc.entities, tc.bytes)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if tc.wantChunks != 0 && len(sn.chunks) != tc.wantChunks {
			t.Errorf("limits %d/%d: %d chunks, want %d", tc.entities, tc.bytes, len(sn.chunks), tc.wantChunks)
		}
		total := 0
		for i, raw := range sn.chunks {
			var m syncv1.ControlMessage
			if err := proto.Unmarshal(raw, &m); err != nil {
				t.Fatal(err)
			}
			c := m.GetSnapshot()
			if c.GetRevision() != sn.revision || c.GetSeq() != int32(i) || c.GetLast() != (i == len(sn.chunks)-1) {
				t.Fatalf("chunk %d: rev %d seq %d last %v", i, c.GetRevision(), c.GetSeq(), c.GetLast())
			}
			if n := len(c.GetEntities()); n > tc.entities || n == 0 {
				t.Fatalf("chunk %d holds %d entities (limit %d)", i, n, tc.entities)
			}
			if len(c.GetEntities()) > 1 && len(raw) > tc.bytes+64 {
				t.Fatalf("chunk %d is %d bytes (limit %d)", i, len(raw), tc.bytes)
			}
			// The hand-framed chunk decodes to what proto would have built.
			again, _ := proto.Marshal(&m)
			var m2 syncv1.ControlMessage
			if err := proto.Unmarshal(again, &m2); err != nil || !proto.Equal(&m, &m2) {
				t.Fatal("chunk does not round-trip")
			}
			total += len(c.GetEntities())
		}
		if total != 17 || sn.entities != 17 {
			t.Fatalf("%d entities in chunks, %d counted; want 17", total, sn.entities)
		}
	}
}

func TestEmptyStoreSnapshotIsOneEmptyLastChunk(t *testing.T) {
	st := newMemStore()
	var sn *snapshot
	_ = st.Snapshot(context.Background(), func(rev int64, r store.Reader) error {
		var err error
		sn, err = buildSnapshot(context.Background(), slog.New(slog.DiscardHandler), rev, r, 10, 1<<20)
		return err
	})
	var m syncv1.ControlMessage
	if len(sn.chunks) != 1 || proto.Unmarshal(sn.chunks[0], &m) != nil || !m.GetSnapshot().GetLast() || len(m.GetSnapshot().GetEntities()) != 0 {
		t.Fatalf("got %d chunks: %v", len(sn.chunks), &m)
	}
}

func TestSnapshotCarriesEndUsers(t *testing.T) {
	r := &memReader{endUsers: []store.EndUser{{EndUserID: "c1", Spend: 3, MaxBudget: ptr[int64](9), Blocked: true}}}
	sn, err := buildSnapshot(context.Background(), slog.New(slog.DiscardHandler), 1, r, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var m syncv1.ControlMessage
	if len(sn.chunks) != 1 || proto.Unmarshal(sn.chunks[0], &m) != nil {
		t.Fatalf("got %d chunks", len(sn.chunks))
	}
	es := m.GetSnapshot().GetEntities()
	want := &syncv1.EndUser{EndUserId: "c1", Spend: 3, MaxBudget: 9, Blocked: true}
	if len(es) != 1 || es[0].GetKind() != "end_user" || es[0].GetId() != "c1" || !proto.Equal(es[0].GetEndUser(), want) {
		t.Fatalf("snapshot entities %v", es)
	}
}

func TestPreencodedSendsTheBytesVerbatim(t *testing.T) {
	d := &syncv1.ControlMessage{Msg: &syncv1.ControlMessage_Heartbeat{Heartbeat: &syncv1.Heartbeat{HeadRevision: 9}}}
	raw, _ := proto.Marshal(d)
	out, err := proto.Marshal(preencoded(raw))
	if err != nil || !bytes.Equal(out, raw) {
		t.Fatalf("%x != %x (%v)", out, raw, err)
	}
}

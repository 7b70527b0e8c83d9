package litellmimport

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/nacl/secretbox"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store/embedded"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
)

// usdN is an amount in USD as the store holds it (nano-USD).
func usdN(v float64) int64 {
	n, err := money.FromUSD(v)
	if err != nil {
		panic(err)
	}
	return n
}

func f64(v float64) *float64 { return &v }
func i64(v int64) *int64     { return &v }
func ts(s string) Timestamp {
	var t Timestamp
	if err := t.UnmarshalJSON([]byte(`"` + s + `"`)); err != nil {
		panic(err)
	}
	return t
}

func source(plain string) *Source {
	return &Source{
		Budgets: []Budget{
			{BudgetID: "b-org", MaxBudget: f64(100), RPMLimit: i64(1000), BudgetDuration: "30d", BudgetResetAt: ts("2030-01-01T00:00:00")},
			{BudgetID: "b-member", MaxBudget: f64(5)},
			{BudgetID: "b-key", SoftBudget: f64(0.5)},
			{BudgetID: "b-cust", MaxBudget: f64(7), RPMLimit: i64(3)},
		},
		Organizations:  []Organization{{OrganizationID: "org1", OrganizationAlias: "Acme", BudgetID: "b-org", Spend: 1.25, Models: []string{"gpt-4o-mini"}}},
		OrgMemberships: []OrgMembership{{UserID: "alice", OrganizationID: "org1", UserRole: "org_admin"}},
		Teams: []Team{{
			TeamID: "t1", TeamAlias: "eng", OrganizationID: "org1", Spend: 0.75, MaxBudget: f64(50),
			MembersWithRoles: Raw(`[{"user_id":"alice","role":"admin","user_email":null},{"user_id":"bob","role":"user"}]`),
			Metadata:         Raw(`{}`), ModelMaxBudget: Raw(`{"gpt-4":{"budget_limit":1}}`),
			TeamMemberPermissions: []string{"/key/generate", "/key/info", "/team/update", "/key/info"},
		}},
		TeamMemberships: []TeamMembership{{UserID: "bob", TeamID: "t1", Spend: 0.5, BudgetID: "b-member"}},
		Users: []User{
			{UserID: "alice", UserRole: "proxy_admin", UserEmail: "alice@example.com", Spend: 0.1},
			{UserID: "bob", UserRole: "customer", MaxBudget: f64(10), BudgetDuration: "1mo", BudgetResetAt: ts("2030-02-01T00:00:00.123")},
		},
		Keys: []Key{
			{
				Token: keys.Hash(plain), KeyName: keys.DisplayName(plain), KeyAlias: "bob-key", Spend: 2.5,
				MaxBudget: f64(3), BudgetDuration: "7d", BudgetResetAt: ts("2030-01-08T00:00:00"), BudgetID: "b-key",
				Expires: ts("2031-01-01T00:00:00"), Models: []string{"gpt-4o-mini", ""}, UserID: "bob", TeamID: "t1",
				RPMLimit: i64(60), TPMLimit: i64(10000), MaxParallelRequests: i64(4),
				Metadata:       Raw(`{"tags":["prod"],"model_rpm_limit":{"gpt-4o-mini":5},"team":"x"}`),
				ModelMaxBudget: Raw(`{"gpt-4o-mini":{"budget_limit":"0.5","time_period":"1d"}}`),
				ModelSpend:     Raw(`{"gpt-4o-mini":0.25}`), Blocked: new(bool), Aliases: Raw(`{"a":"b"}`),
				AllowedCacheControls: []string{"no-cache"},
			},
			{Token: "sk-legacy-plaintext", KeyAlias: "bob-key", TeamID: "t1", Metadata: Raw(`{"service_account_id":"svc"}`)},
			{Token: "not-a-hash"},
		},
		EndUsers: []EndUser{{UserID: "cust1", Alias: "Customer One", Spend: 0.3, Blocked: true}, {UserID: "cust2", BudgetID: "b-member"},
			{UserID: "cust3", BudgetID: "b-cust"}, {UserID: ""}},
		ProxyModels: []ProxyModel{{ModelID: "m1", ModelName: "db-model", LiteLLMParams: Raw(`{"model":"openai/gpt-4o","api_key":"os.environ/OPENAI_API_KEY"}`), ModelInfo: Raw(`{"input_cost_per_token":0.000001}`)}},
		Unread:      map[string]int{"LiteLLM_TagTable": 2},
	}
}

func TestMap(t *testing.T) {
	plain := "sk-" + strings.Repeat("A", 22)
	now := time.Date(2029, 1, 1, 0, 0, 0, 0, time.UTC)
	p := Map(source(plain), Options{Now: now})

	if len(p.Organizations) != 1 || len(p.Teams) != 1 || len(p.Users) != 2 || len(p.Keys) != 2 || len(p.Models) != 1 {
		t.Fatalf("counts: %d orgs %d teams %d users %d keys %d models", len(p.Organizations), len(p.Teams), len(p.Users), len(p.Keys), len(p.Models))
	}
	org := p.Organizations[0]
	if org.Spend != usdN(1.25) || *org.MaxBudget != usdN(100) || *org.RPMLimit != 1000 || org.BudgetDuration != "30d" ||
		!org.BudgetResetAt.Equal(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)) || len(org.Members) != 1 || org.Members[0].Role != "org_admin" {
		t.Fatalf("org %+v", org)
	}
	team := p.Teams[0]
	bob, ok := team.Member("bob")
	if !ok || bob.Spend != usdN(0.5) || *bob.MaxBudgetInTeam != usdN(5) || team.Spend != usdN(0.75) || len(team.Members) != 2 || team.Metadata != nil {
		t.Fatalf("team %+v", team)
	}
	if a, _ := team.Member("alice"); a.Role != store.TeamRoleAdmin {
		t.Fatalf("alice %+v", a)
	}
	if u := p.Users[1]; u.UserRole != store.RoleInternalUser || *u.MaxBudget != usdN(10) || u.BudgetDuration != "1mo" ||
		!u.BudgetResetAt.Equal(time.Date(2030, 2, 1, 0, 0, 0, 123e6, time.UTC)) {
		t.Fatalf("bob user %+v", u)
	}
	k := p.Keys[0]
	if k.KeyHash != keys.Hash(plain) || k.TokenID != TokenID(keys.Hash(plain)) || len(k.TokenID) != 32 || k.KeyAlias != "bob-key" ||
		k.Spend != usdN(2.5) || *k.MaxBudget != usdN(3) || *k.SoftBudget != usdN(0.5) || k.BudgetDuration != "7d" ||
		*k.RPMLimit != 60 || *k.TPMLimit != 10000 || *k.MaxParallelRequests != 4 || k.Expires == nil ||
		len(k.Models) != 1 || k.Tags[0] != "prod" || k.ModelRPMLimit["gpt-4o-mini"] != 5 ||
		k.ModelMaxBudget["gpt-4o-mini"] != (store.ModelBudget{BudgetLimit: usdN(0.5), TimePeriod: "1d"}) ||
		k.ModelSpend["gpt-4o-mini"] != usdN(0.25) || k.ServiceAccount || k.KeyName != keys.DisplayName(plain) {
		t.Fatalf("key %+v", k)
	}
	legacy := p.Keys[1]
	if legacy.KeyHash != keys.Hash("sk-legacy-plaintext") || legacy.KeyAlias != "" || !legacy.ServiceAccount {
		t.Fatalf("legacy key %+v", legacy)
	}
	m := p.Models[0]
	if m.ID != "m1" || m.UpstreamModel != "openai/gpt-4o" || m.InputCostPerToken != 1_000_000 || m.FromConfig {
		t.Fatalf("model %+v", m)
	}
	if len(p.EndUsers) != 3 {
		t.Fatalf("end users %+v", p.EndUsers)
	}
	if e := p.EndUsers[0]; e.EndUserID != "cust1" || e.Alias != "Customer One" || e.Spend != usdN(0.3) || !e.Blocked || e.MaxBudget != nil {
		t.Fatalf("cust1 %+v", e)
	}
	if e := p.EndUsers[1]; e.EndUserID != "cust2" || e.MaxBudget == nil || *e.MaxBudget != usdN(5) || e.Blocked {
		t.Fatalf("cust2 %+v", e)
	}
	if e := p.EndUsers[2]; e.MaxBudget == nil || *e.MaxBudget != usdN(7) {
		t.Fatalf("cust3 %+v", e)
	}
	if got := p.Teams[0].TeamMemberPermissions; !slices.Equal(got, []string{"/key/generate", "/key/info"}) {
		t.Fatalf("team_member_permissions %v", got)
	}
	for _, want := range []string{"end-user rate limits", "end users with an empty", "per-model budgets on teams", "user role \"customer\"", "key model aliases", "allowed_cache_controls", "tag budgets", "duplicate key aliases", "neither a SHA-256"} {
		found := false
		for f := range p.Unsupported {
			found = found || strings.Contains(f, want)
		}
		if !found {
			t.Errorf("unsupported lacks %q: %v", want, p.Unsupported)
		}
	}
	if !strings.Contains(strings.Join(p.Notes, "\n"), `team_member_permissions entry "/team/update"`) {
		t.Errorf("no note about the dropped permission: %v", p.Notes)
	}
}

func TestApplyIdempotent(t *testing.T) {
	st, err := embedded.Open(filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	now := time.Now()
	p := Map(source("sk-"+strings.Repeat("B", 22)), Options{Now: now})

	dry, err := Apply(ctx, st, p, true, now)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := st.Head(ctx); h != 0 || dry.Totals().Created != 10 {
		t.Fatalf("dry run: head %d, %+v", h, dry.Totals())
	}
	res, err := Apply(ctx, st, p, false, now)
	if err != nil {
		t.Fatal(err)
	}
	if res.Totals() != (Counts{Created: 10}) {
		t.Fatalf("first import %+v", res.Totals())
	}
	head, _ := st.Head(ctx)
	p2 := Map(source("sk-"+strings.Repeat("B", 22)), Options{Now: now.Add(time.Hour)})
	res, err = Apply(ctx, st, p2, false, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if res.Totals() != (Counts{Unchanged: 10}) {
		t.Fatalf("second import %+v", res.Totals())
	}
	if h, _ := st.Head(ctx); h != head {
		t.Fatalf("second import moved head %d -> %d", head, h)
	}

	// Spend accrued in Tollgate survives a re-import; a changed limit is updated.
	k := p.Keys[0]
	if err := st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		cur, err := tx.GetKey(ctx, k.TokenID)
		if err != nil {
			return err
		}
		cur.Spend += usdN(1)
		return tx.UpdateKey(ctx, cur)
	}); err != nil {
		t.Fatal(err)
	}
	// End-user spend accrued in Tollgate survives too.
	if err := st.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		cur, err := tx.GetEndUser(ctx, "cust1")
		if err != nil {
			return err
		}
		cur.Spend += usdN(1)
		return tx.PutEndUser(ctx, cur)
	}); err != nil {
		t.Fatal(err)
	}
	src := source("sk-" + strings.Repeat("B", 22))
	src.Keys[0].RPMLimit = i64(61)
	res, err = Apply(ctx, st, Map(src, Options{Now: now}), false, now)
	if err != nil {
		t.Fatal(err)
	}
	if c := res.Kinds[store.KindKey]; c.Updated != 1 || c.Unchanged != 1 {
		t.Fatalf("keys %+v", c)
	}
	got, err := st.Read().GetKey(ctx, k.TokenID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Spend != usdN(3.5) || *got.RPMLimit != 61 {
		t.Fatalf("key after re-import: spend %d rpm %d", got.Spend, *got.RPMLimit)
	}
	if c := res.Kinds[KindEndUser]; c.Unchanged != 3 {
		t.Fatalf("end users %+v", c)
	}
	if e, err := st.Read().GetEndUser(ctx, "cust1"); err != nil || e.Spend != usdN(1.3) || !e.Blocked || e.Alias != "Customer One" {
		t.Fatalf("cust1 after re-import: %+v, %v", e, err)
	}
	var sb strings.Builder
	Report(&sb, src, p, res, false)
	if !strings.Contains(sb.String(), "total: created=0 updated=1 unchanged=9") {
		t.Fatalf("report:\n%s", sb.String())
	}
	_ = json.Valid
}

func TestMapDeprecatedAndEncrypted(t *testing.T) {
	now := time.Date(2029, 1, 1, 0, 0, 0, 0, time.UTC)
	cur, old := keys.Hash("sk-current"), keys.Hash("sk-old")
	salt := "sk-litellm-salt"
	seal := func(s string) string {
		key := sha256.Sum256([]byte(salt))
		var nonce [24]byte
		nonce[0] = 7
		return base64.URLEncoding.EncodeToString(secretbox.Seal(nonce[:], []byte(s), &nonce, &key))
	}
	src := &Source{
		Keys: []Key{{Token: cur}},
		DeprecatedTokens: []DeprecatedToken{
			{Token: old, ActiveTokenID: cur, RevokeAt: ts("2029-01-02T00:00:00")},
			{Token: keys.Hash("sk-gone"), ActiveTokenID: cur, RevokeAt: ts("2028-12-31T00:00:00")},
		},
		ProxyModels: []ProxyModel{{ModelID: "enc", ModelName: "secret-model",
			LiteLLMParams: Raw(`{"model":"` + seal("openai/gpt-4o") + `","api_key":"` + seal("sk-upstream-literal") + `"}`)}},
	}
	p := Map(src, Options{Now: now})
	if ph := p.Keys[0].PreviousHashes; len(ph) != 1 || ph[0].KeyHash != old {
		t.Fatalf("previous hashes %+v", ph)
	}
	if len(p.Models) != 0 || p.Unsupported["encrypted database models without the right --salt-key (skipped)"] != 1 {
		t.Fatalf("without salt: %+v %v", p.Models, p.Unsupported)
	}
	p = Map(src, Options{Now: now, SaltKey: salt})
	if len(p.Models) != 1 || p.Models[0].UpstreamModel != "openai/gpt-4o" || p.Models[0].APIKey != "sk-upstream-literal" {
		t.Fatalf("with salt: %+v (%v)", p.Models, p.Notes)
	}
}

// LiteLLM's USD floats become nano-USD, rounded to the nearest nano-USD; an
// amount beyond the largest (1e9 USD) is capped with a note, never 0 (a 0
// budget would refuse every request).
func TestUSDToNano(t *testing.T) {
	m := &mapper{plan: &Plan{}}
	for _, tc := range []struct {
		in   float64
		want int64
	}{{0.000855, 855_000}, {0.0000001, 100}, {1.5, 1_500_000_000}, {5e9, 1e18}, {-1, 0}} {
		if got := m.usd("max_budget", tc.in); got != tc.want {
			t.Errorf("usd(%v) = %d, want %d", tc.in, got, tc.want)
		}
	}
	if len(m.plan.Notes) != 2 {
		t.Fatalf("notes %q, want one for the cap and one for the negative amount", m.plan.Notes)
	}
}

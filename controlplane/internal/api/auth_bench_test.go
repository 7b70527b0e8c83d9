package api

import (
	"context"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
)

// memReader answers the three reads caller resolution makes from memory, so
// that the benchmark measures authorization without the store round trip.
type memReader struct {
	store.Reader
	key  store.Key
	user store.User
	team store.Team
}

func (m *memReader) GetKeyByHash(context.Context, string) (store.Key, error) { return m.key, nil }
func (m *memReader) GetUser(context.Context, string) (store.User, error)     { return m.user, nil }
func (m *memReader) ListTeams(context.Context, store.TeamFilter) ([]store.Team, int, error) {
	return []store.Team{m.team}, 1, nil
}

type memStore struct {
	store.Store
	r *memReader
}

func (m memStore) Read() store.Reader { return m.r }

var sinkCaller authz.Caller

// BenchmarkAuthorize measures a management call's authorization beyond the
// store round trip: credential parsing, master-key comparison, key hashing,
// building the caller (user, role, team roles) and the decision.
func BenchmarkAuthorize(b *testing.B) {
	secret := keys.Generate()
	budget := int64(10e6)
	r := &memReader{
		key:  store.Key{TokenID: "tok", UserID: "u1", TeamID: "t1", Models: []string{"gpt-4o-mini"}},
		user: store.User{UserID: "u1", UserRole: store.RoleInternalUser, Models: []string{"gpt-4o-mini"}, Limits: store.Limits{MaxBudget: &budget}},
		team: store.Team{TeamID: "t1", Members: []store.TeamMember{{UserID: "u0", Role: "admin"}, {UserID: "u1", Role: "user"}}},
	}
	s := New(memStore{r: r}, "sk-master-"+keys.Generate())
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+secret))
	before := keyObj(&r.key)
	after := before
	after.MaxBudget = &budget
	tg := authz.Target{Before: &before, After: &after}
	b.ReportAllocs()
	for b.Loop() {
		c, err := s.authenticate(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := decide(c, authz.KeyUpdate, tg); err != nil {
			b.Fatal(err)
		}
		sinkCaller = c
	}
}

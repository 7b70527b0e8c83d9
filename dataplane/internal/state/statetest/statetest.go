// Package statetest generates deterministic sync entities for tests and
// benchmarks of the data plane's replica (state, cache, replica).
package statetest

import (
	"crypto/sha256"
	"fmt"
	"strconv"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// Secret is the plaintext of test key i.
func Secret(i int) string { return "sk-test-" + strconv.Itoa(i) }

// Hash is the SHA-256 of Secret(i), as keys are looked up.
func Hash(i int) [32]byte { return sha256.Sum256([]byte(Secret(i))) }

// PrevHash is the hash of key i's previous secret (see Key).
func PrevHash(i int) [32]byte { return sha256.Sum256([]byte("sk-old-" + strconv.Itoa(i))) }

// TokenID is key i's token id: 32 hex digits like the control plane's, in
// the same order as i.
func TokenID(i int) string { return fmt.Sprintf("%032x", i) }

// PrevValidUntil is the grace deadline of key i's previous hash (every
// 1000th key has one).
const PrevValidUntil = 2_000_000_000

// Key returns key entity i: owners spread over 100k users, 1000 teams and
// 10 orgs; a handful of distinct policies and limit profiles; every 1000th
// key regenerated with a previous hash.
func Key(i int) *syncv1.Entity {
	h := Hash(i)
	k := &syncv1.Key{
		TokenId:        TokenID(i),
		KeyHash:        h[:],
		KeyAlias:       "alias-" + strconv.Itoa(i),
		UserId:         "user-" + strconv.Itoa(i%100_000),
		TeamId:         "team-" + strconv.Itoa(i%1000),
		OrganizationId: "org-" + strconv.Itoa(i%10),
		Limits: &syncv1.Limits{
			MaxBudget: -1, SoftBudget: -1, RpmLimit: -1, TpmLimit: -1, MaxParallelRequests: -1,
		},
		Spend:       int64(i),
		ExpiresUnix: int64(i%2) * 1_900_000_000,
	}
	switch i % 4 {
	case 1:
		k.Models = []string{"gpt-4o"}
	case 2:
		k.Models = []string{"gpt-4o", "gpt-4o-mini"}
		k.Tags = []string{"prod"}
	case 3:
		k.Models = []string{"gpt-4o-mini"}
		k.ModelRpmLimit = map[string]int64{"gpt-4o-mini": 100}
		k.EnforcedParams = []string{"user"}
	}
	switch i % 3 {
	case 1:
		k.Limits.RpmLimit = 60
		k.Limits.MaxBudget = 10_000_000
		k.Limits.BudgetDuration = "30d"
		k.Limits.BudgetResetAtUnix = 1_800_000_000 + int64(i)
	case 2:
		k.Limits.TpmLimit = 100_000
	}
	if i%1000 == 7 {
		p := PrevHash(i)
		k.PreviousHashes = []*syncv1.PreviousHash{{KeyHash: p[:], ValidUntilUnix: PrevValidUntil}}
	}
	return &syncv1.Entity{Kind: "key", Id: k.TokenId, Value: &syncv1.Entity_Key{Key: k}}
}

// Team returns team entity i.
func Team(i int) *syncv1.Entity {
	id := "team-" + strconv.Itoa(i)
	return &syncv1.Entity{Kind: "team", Id: id, Value: &syncv1.Entity_Team{Team: &syncv1.Team{
		TeamId:         id,
		OrganizationId: "org-" + strconv.Itoa(i%10),
		Models:         []string{"gpt-4o", "gpt-4o-mini"},
		Limits:         &syncv1.Limits{MaxBudget: 100_000_000, SoftBudget: -1, RpmLimit: -1, TpmLimit: -1, MaxParallelRequests: -1},
		Members: []*syncv1.TeamMember{
			{UserId: "user-" + strconv.Itoa(i), Role: "admin", MaxBudgetInTeam: -1},
		},
		TeamMemberBudget: -1,
	}}}
}

// User returns user entity i.
func User(i int) *syncv1.Entity {
	id := "user-" + strconv.Itoa(i)
	return &syncv1.Entity{Kind: "user", Id: id, Value: &syncv1.Entity_User{User: &syncv1.User{
		UserId: id, UserRole: "internal_user",
		Limits: &syncv1.Limits{MaxBudget: -1, SoftBudget: -1, RpmLimit: -1, TpmLimit: -1, MaxParallelRequests: -1},
	}}}
}

// Org returns organization entity i.
func Org(i int) *syncv1.Entity {
	id := "org-" + strconv.Itoa(i)
	return &syncv1.Entity{Kind: "organization", Id: id, Value: &syncv1.Entity_Organization{Organization: &syncv1.Organization{
		OrganizationId: id,
		Limits:         &syncv1.Limits{MaxBudget: -1, SoftBudget: -1, RpmLimit: -1, TpmLimit: -1, MaxParallelRequests: -1},
	}}}
}

// Model returns a deployment of name with id.
func Model(id, name string, groups ...string) *syncv1.Entity {
	return &syncv1.Entity{Kind: "model", Id: id, Value: &syncv1.Entity_Model{Model: &syncv1.Model{
		Id: id, ModelName: name, UpstreamModel: "openai/" + name, ApiBase: "http://127.0.0.1:1/v1",
		ApiKey: "os.environ/OPENAI_API_KEY", InputCostPerToken: 2500, OutputCostPerToken: 10000,
		AccessGroups: groups, Rpm: -1, Tpm: -1,
	}}}
}

// Settings returns the settings entity with general_settings json.
func Settings(json string) *syncv1.Entity {
	return &syncv1.Entity{Kind: "settings", Id: "settings", Value: &syncv1.Entity_Settings{Settings: &syncv1.Settings{GeneralSettings: []byte(json)}}}
}

// Tombstone deletes (kind, id).
func Tombstone(kind, id string) *syncv1.Entity {
	return &syncv1.Entity{Kind: kind, Id: id, Deleted: true}
}

// Snapshot calls fn with every entity of a deployment with nKeys keys, in
// the control plane's order: settings, models, orgs, teams, users, keys.
// Teams, users and orgs scale with nKeys (at most 1000, 100k and 10).
// Every entity is a new object.
func Snapshot(nKeys int, fn func(*syncv1.Entity) error) error {
	emit := fn
	if err := emit(Settings(`{"service_account_settings":{"enforced_params":["user"]}}`)); err != nil {
		return err
	}
	for _, m := range []*syncv1.Entity{
		Model("m1", "gpt-4o", "premium"), Model("m2", "gpt-4o", "premium"), Model("m3", "gpt-4o-mini", "basic", "premium"),
	} {
		if err := emit(m); err != nil {
			return err
		}
	}
	for i := 0; i < min(10, nKeys); i++ {
		if err := emit(Org(i)); err != nil {
			return err
		}
	}
	for i := 0; i < min(1000, nKeys); i++ {
		if err := emit(Team(i)); err != nil {
			return err
		}
	}
	for i := 0; i < min(100_000, nKeys); i++ {
		if err := emit(User(i)); err != nil {
			return err
		}
	}
	for i := 0; i < nKeys; i++ {
		if err := emit(Key(i)); err != nil {
			return err
		}
	}
	return nil
}

// Chunks cuts Snapshot(nKeys) into chunks of at most per entities at
// revision rev and calls fn with each, in order (the last has Last set).
// Only one chunk exists at a time.
func Chunks(rev int64, nKeys, per int, fn func(*syncv1.SnapshotChunk) error) error {
	c := &syncv1.SnapshotChunk{Revision: rev}
	err := Snapshot(nKeys, func(e *syncv1.Entity) error {
		if len(c.Entities) == per {
			if err := fn(c); err != nil {
				return err
			}
			c = &syncv1.SnapshotChunk{Revision: rev, Seq: c.Seq + 1}
		}
		c.Entities = append(c.Entities, e)
		return nil
	})
	if err != nil {
		return err
	}
	c.Last = true
	return fn(c)
}

package embedded

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// Bucket names. Primary buckets map an id to the entity's JSON; index
// buckets map a derived key to nothing (the id is the key's suffix) or to an
// id. See doc.go for the layout.
var (
	bucketMeta = []byte("meta")

	bucketKeys        = []byte("keys")            // token_id → Key JSON
	bucketKeysHash    = []byte("keys_by_hash")    // key_hash → token_id
	bucketKeysAlias   = []byte("keys_by_alias")   // key_alias → token_id
	bucketKeysCreated = []byte("keys_by_created") // order(created_at, token_id) → nil
	bucketKeysUser    = []byte("keys_by_user")    // lp(user_id) + order → nil
	bucketKeysTeam    = []byte("keys_by_team")    // lp(team_id) + order → nil
	bucketKeysOrg     = []byte("keys_by_org")     // lp(organization_id) + order → nil

	bucketTeams        = []byte("teams")
	bucketTeamsCreated = []byte("teams_by_created")
	bucketUsers        = []byte("users")
	bucketUsersCreated = []byte("users_by_created")
	bucketOrgs         = []byte("organizations")
	bucketOrgsCreated  = []byte("organizations_by_created")

	bucketModels   = []byte("models")   // id → Model JSON
	bucketSettings = []byte("settings") // settingsKey → Settings JSON

	bucketAudit    = []byte("audit")     // time(created_at) + seq → AuditEntry JSON
	bucketAuditIDs = []byte("audit_ids") // id → audit key

	bucketChanges = []byte("changes") // big-endian revision → changeRecord JSON

	bucketSpendSources = []byte("spend_sources")     // lp(proxy_id) + outbox_id → big-endian last applied seq
	bucketSpendLogs    = []byte("spend_logs")        // time(start) + big-endian insert seq → SpendLog JSON
	bucketSpendReqs    = []byte("spend_logs_by_req") // request_id + 0 + log key → nil
	bucketEndUsers     = []byte("end_users")         // end_user_id → EndUser JSON

	bucketEvents          = []byte("events")           // big-endian seq → Event JSON
	bucketEventIDs        = []byte("events_by_id")     // event_id → big-endian seq
	bucketEventsDue       = []byte("events_due")       // time(next_attempt_at) + seq → nil, pending only
	bucketEventsDelivered = []byte("events_delivered") // time(delivered_at) + seq → nil
	bucketKeysRotation    = []byte("keys_by_rotation") // time(key_rotation_at) + token_id → nil, auto_rotate only

	bucketBudgetResets = []byte("budget_resets") // time(budget_reset_at) + kind + 0 + id → nil (keys, teams, users, orgs)

	bucketModelGroups = []byte("model_groups")        // group_name → ModelGroup JSON
	bucketJobs        = []byte("jobs")                // job_id → Job JSON
	bucketJobsTeam    = []byte("jobs_by_team")        // lp(team_id) + big-endian seq → job_id
	bucketJobCalls    = []byte("job_calls")           // lp(job_id) + big-endian seq → JobCall JSON
	bucketJobCallIDs  = []byte("job_call_ids")        // call_id → nil
	bucketCreditTxns  = []byte("credit_transactions") // lp(team_id) + big-endian seq → CreditTransaction JSON
	bucketCreditTxIDs = []byte("credit_transaction_ids")

	bucketBudgets = []byte("budgets") // budget_id → Budget JSON
)

var (
	metaSchemaVersion = []byte("schema_version")
	metaHead          = []byte("head")
	settingsKey       = []byte("settings")
)

// SettingsID is the entity id of the settings in change records (there is
// one settings object); the same id the Postgres backend uses.
const SettingsID = "settings"

// migrations[i] brings a file from schema version i to i+1; the current
// version is len(migrations). Version 0 is a new, empty file. Every pending
// step runs in one bbolt transaction, so a crash mid-migration leaves the
// file at its old version.
var migrations = []func(*bolt.Tx) error{
	migrateV1,
	migrateV2,
	migrateV3,
	migrateV4,
	migrateV5,
	migrateV6,
	migrateV7,
}

// migrateV6 moves money from micro-USD to nano-USD: every amount stored in
// the keys, teams (and their members), users, organizations, end users,
// spend logs, job calls and the change log's documents is multiplied by
// 1000 (saturating at the int64 bounds). Prices stay pico-USD per token;
// credits are counts.
func migrateV6(tx *bolt.Tx) error {
	doc := func(kind string) func([]byte) ([]byte, error) {
		return func(v []byte) ([]byte, error) { return nanoDoc(kind, v) }
	}
	for _, e := range []struct {
		bucket []byte
		fn     func([]byte) ([]byte, error)
	}{
		{bucketKeys, doc(store.KindKey)}, {bucketTeams, doc(store.KindTeam)}, {bucketUsers, doc(store.KindUser)},
		{bucketOrgs, doc(store.KindOrganization)}, {bucketEndUsers, doc(store.KindEndUser)},
		{bucketSpendLogs, doc("spend log")}, {bucketJobCalls, doc("job call")},
		{bucketChanges, nanoChanges},
	} {
		if err := rewrite(tx.Bucket(e.bucket), e.fn); err != nil {
			return fmt.Errorf("%s: %w", e.bucket, err)
		}
	}
	return nil
}

// rewrite replaces every value of b with fn's result (collected first:
// bbolt forbids writes during ForEach).
func rewrite(b *bolt.Bucket, fn func([]byte) ([]byte, error)) error {
	if b == nil {
		return nil
	}
	var ks, vs [][]byte
	err := b.ForEach(func(k, v []byte) error {
		if v == nil { // a nested bucket
			return nil
		}
		nv, err := fn(v)
		if err != nil {
			return fmt.Errorf("decode %q: %w", k, err)
		}
		ks, vs = append(ks, append([]byte(nil), k...)), append(vs, nv)
		return nil
	})
	if err != nil {
		return err
	}
	for i := range ks {
		if err := b.Put(ks[i], vs[i]); err != nil {
			return err
		}
	}
	return nil
}

// nanoChanges converts the documents of a change record.
func nanoChanges(v []byte) ([]byte, error) {
	var rec changeRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return nil, err
	}
	for i, c := range rec.Changes {
		if c.Data == nil {
			continue
		}
		d, err := nanoDoc(c.Kind, c.Data)
		if err != nil {
			return nil, err
		}
		rec.Changes[i].Data = d
	}
	return json.Marshal(rec)
}

// nanoDoc converts the money fields of one stored document (kind as in
// change records, or "spend log" / "job call"); other kinds are returned
// unchanged.
func nanoDoc(kind string, v []byte) ([]byte, error) {
	var x any
	switch kind {
	case store.KindKey:
		var k store.Key
		if err := json.Unmarshal(v, &k); err != nil {
			return nil, err
		}
		nanoLimits(&k.Limits)
		k.Spend = nano(k.Spend)
		for m, b := range k.ModelMaxBudget {
			b.BudgetLimit = nano(b.BudgetLimit)
			k.ModelMaxBudget[m] = b
		}
		for m, s := range k.ModelSpend {
			k.ModelSpend[m] = nano(s)
		}
		x = k
	case store.KindTeam:
		var t store.Team
		if err := json.Unmarshal(v, &t); err != nil {
			return nil, err
		}
		nanoLimits(&t.Limits)
		t.Spend = nano(t.Spend)
		nanoPtr(t.TeamMemberBudget)
		for i := range t.Members {
			nanoPtr(t.Members[i].MaxBudgetInTeam)
			t.Members[i].Spend = nano(t.Members[i].Spend)
		}
		x = t
	case store.KindUser:
		var u store.User
		if err := json.Unmarshal(v, &u); err != nil {
			return nil, err
		}
		nanoLimits(&u.Limits)
		u.Spend = nano(u.Spend)
		x = u
	case store.KindOrganization:
		var o store.Organization
		if err := json.Unmarshal(v, &o); err != nil {
			return nil, err
		}
		nanoLimits(&o.Limits)
		o.Spend = nano(o.Spend)
		x = o
	case store.KindEndUser:
		var e store.EndUser
		if err := json.Unmarshal(v, &e); err != nil {
			return nil, err
		}
		e.Spend = nano(e.Spend)
		nanoPtr(e.MaxBudget)
		x = e
	case "spend log":
		var l store.SpendLog
		if err := json.Unmarshal(v, &l); err != nil {
			return nil, err
		}
		l.Cost = nano(l.Cost)
		x = l
	case "job call":
		var c store.JobCall
		if err := json.Unmarshal(v, &c); err != nil {
			return nil, err
		}
		c.Cost = nano(c.Cost)
		x = c
	default:
		return v, nil
	}
	return json.Marshal(x)
}

func nanoLimits(l *store.Limits) {
	nanoPtr(l.MaxBudget)
	nanoPtr(l.SoftBudget)
}

func nanoPtr(p *int64) {
	if p != nil {
		*p = nano(*p)
	}
}

// nano converts micro-USD to nano-USD, saturating.
func nano(micros int64) int64 {
	switch {
	case micros > math.MaxInt64/1000:
		return math.MaxInt64
	case micros < math.MinInt64/1000:
		return math.MinInt64
	}
	return micros * 1000
}

// migrateV7 adds the budget table's bucket.
func migrateV7(tx *bolt.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(bucketBudgets); err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketBudgets, err)
	}
	return nil
}

// migrateV4 adds the budget-reset schedule, filled from the keys, teams,
// users and organizations that have a budget_reset_at.
func migrateV4(tx *bolt.Tx) error {
	resets, err := tx.CreateBucketIfNotExists(bucketBudgetResets)
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketBudgetResets, err)
	}
	for _, e := range []struct {
		bucket []byte
		kind   string
	}{{bucketKeys, store.KindKey}, {bucketTeams, store.KindTeam}, {bucketUsers, store.KindUser}, {bucketOrgs, store.KindOrganization}} {
		b := tx.Bucket(e.bucket)
		if b == nil {
			continue
		}
		err := b.ForEach(func(id, v []byte) error {
			var x struct {
				BudgetResetAt *time.Time `json:"budget_reset_at"`
			}
			if err := json.Unmarshal(v, &x); err != nil {
				return fmt.Errorf("decode %s %s: %w", e.kind, id, err)
			}
			if x.BudgetResetAt != nil {
				return resets.Put(resetKey(*x.BudgetResetAt, e.kind, string(id)), empty)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// resetKey is the budget_resets key of an object's next reset.
func resetKey(at time.Time, kind, id string) []byte {
	k := append(timeKey(at), kind...)
	k = append(k, 0)
	return append(k, id...)
}

// migrateV5 adds the SaaS team API's buckets.
func migrateV5(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketModelGroups, bucketJobs, bucketJobsTeam, bucketJobCalls, bucketJobCallIDs, bucketCreditTxns, bucketCreditTxIDs} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// migrateV3 adds the event outbox and the rotation index (filled from the
// keys that already rotate).
func migrateV3(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketEvents, bucketEventIDs, bucketEventsDue, bucketEventsDelivered, bucketKeysRotation} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	keys := tx.Bucket(bucketKeys)
	if keys == nil {
		return nil
	}
	rot := tx.Bucket(bucketKeysRotation)
	return keys.ForEach(func(id, v []byte) error {
		var k struct {
			AutoRotate    bool       `json:"auto_rotate"`
			KeyRotationAt *time.Time `json:"key_rotation_at"`
		}
		if err := json.Unmarshal(v, &k); err != nil {
			return fmt.Errorf("decode key %s: %w", id, err)
		}
		if k.AutoRotate && k.KeyRotationAt != nil {
			return rot.Put(join(timeKey(*k.KeyRotationAt), id), empty)
		}
		return nil
	})
}

// migrateV2 adds the spend buckets.
func migrateV2(tx *bolt.Tx) error {
	for _, name := range [][]byte{bucketSpendSources, bucketSpendLogs, bucketSpendReqs, bucketEndUsers} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// migrateV1 creates every bucket of the first schema.
func migrateV1(tx *bolt.Tx) error {
	for _, name := range [][]byte{
		bucketMeta,
		bucketKeys, bucketKeysHash, bucketKeysAlias, bucketKeysCreated, bucketKeysUser, bucketKeysTeam, bucketKeysOrg,
		bucketTeams, bucketTeamsCreated, bucketUsers, bucketUsersCreated, bucketOrgs, bucketOrgsCreated,
		bucketModels, bucketSettings, bucketAudit, bucketAuditIDs, bucketChanges,
	} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// schemaVersion reads the file's version (0 when it has none yet).
func schemaVersion(tx *bolt.Tx) (int, error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return 0, nil
	}
	v := meta.Get(metaSchemaVersion)
	if v == nil {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("malformed schema version (%d bytes)", len(v))
	}
	return int(binary.BigEndian.Uint64(v)), nil
}

// migrate applies the pending migrations of a file at version from.
func migrate(tx *bolt.Tx, from int) error {
	for v := from; v < len(migrations); v++ {
		if err := migrations[v](tx); err != nil {
			return fmt.Errorf("migrate to schema version %d: %w", v+1, err)
		}
	}
	return tx.Bucket(bucketMeta).Put(metaSchemaVersion, u64(uint64(len(migrations))))
}

// u64 encodes n big-endian, so that byte order is numeric order.
func u64(n uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), n)
}

// readHead returns the revision head stored in meta.
func readHead(tx *bolt.Tx) int64 {
	v := tx.Bucket(bucketMeta).Get(metaHead)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

// timeKeyLen is the length of timeKey's output.
const timeKeyLen = 12

// timeKey encodes t so that byte order is time order: seconds since the
// Unix epoch with the sign bit flipped, then nanoseconds (UnixNano would
// overflow for the zero time).
func timeKey(t time.Time) []byte {
	b := make([]byte, 0, timeKeyLen)
	b = binary.BigEndian.AppendUint64(b, uint64(t.Unix())^(1<<63))
	return binary.BigEndian.AppendUint32(b, uint32(t.Nanosecond()))
}

// timeFromKey decodes a timeKey (in UTC).
func timeFromKey(b []byte) time.Time {
	sec := int64(binary.BigEndian.Uint64(b[:8]) ^ (1 << 63))
	return time.Unix(sec, int64(binary.BigEndian.Uint32(b[8:12]))).UTC()
}

// orderKey is the creation-order key: created_at, then id (ties by id).
func orderKey(created time.Time, id string) []byte {
	return append(timeKey(created), id...)
}

// lp is s prefixed with its length, so that prefixes of different values
// never overlap (a prefix scan for "ab" never sees "abc").
func lp(s string) []byte {
	b := binary.AppendUvarint(make([]byte, 0, len(s)+2), uint64(len(s)))
	return append(b, s...)
}

// join concatenates byte slices into a new one.
func join(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, 0, n)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

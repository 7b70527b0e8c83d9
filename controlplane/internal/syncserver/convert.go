package syncserver

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// settingsID is the entity id of the (single) settings object, the same id
// the store backends use in change records.
const settingsID = "settings"

// strippedSettings are general_settings fields that are control-plane
// secrets: a data plane has no use for them and must never hold them.
var strippedSettings = []string{"master_key", "database_url"}

// errBadEntity marks a stored object that cannot be converted (a key hash
// that is not 32 bytes of hex, undecodable JSON). Callers fail closed: the
// object is left out of a snapshot and sent as a tombstone in a delta.
var errBadEntity = errors.New("unconvertible entity")

func badEntity(kind, id, why string) error {
	return fmt.Errorf("%w: %s %q: %s", errBadEntity, kind, id, why)
}

func tombstone(kind, id string) *syncv1.Entity {
	return &syncv1.Entity{Kind: kind, Id: id, Deleted: true}
}

// changeEntity converts one change record. Data is the JSON post-image of
// the store struct matching Kind.
func changeEntity(c store.Change) (*syncv1.Entity, error) {
	switch c.Op {
	case store.OpDelete:
		return tombstone(c.Kind, c.ID), nil
	case store.OpPut:
	default:
		return nil, badEntity(c.Kind, c.ID, "unknown op "+c.Op)
	}
	var (
		e   *syncv1.Entity
		err error
	)
	switch c.Kind {
	case store.KindKey:
		var k store.Key
		if err = decode(c, &k); err == nil {
			e, err = keyEntity(&k)
		}
	case store.KindTeam:
		var t store.Team
		if err = decode(c, &t); err == nil {
			e = teamEntity(&t)
		}
	case store.KindUser:
		var u store.User
		if err = decode(c, &u); err == nil {
			e = userEntity(&u)
		}
	case store.KindOrganization:
		var o store.Organization
		if err = decode(c, &o); err == nil {
			e = orgEntity(&o)
		}
	case store.KindModel:
		var m store.Model
		if err = decode(c, &m); err == nil {
			e = modelEntity(&m)
		}
	case store.KindSettings:
		var s store.Settings
		if err = decode(c, &s); err == nil {
			e, err = settingsEntity(&s)
		}
	case store.KindEndUser:
		var u store.EndUser
		if err = decode(c, &u); err == nil {
			e = endUserEntity(&u)
		}
	default:
		return nil, badEntity(c.Kind, c.ID, "unknown kind")
	}
	if err != nil {
		return nil, err
	}
	// The change record's id is authoritative: tombstones carry it too, so
	// a put under another id could never be deleted on the proxies.
	e.Id = c.ID
	return e, nil
}

func decode(c store.Change, v any) error {
	if err := store.DecodeJSON(c.Data, v); err != nil {
		return badEntity(c.Kind, c.ID, "decode post-image: "+err.Error())
	}
	return nil
}

func keyEntity(k *store.Key) (*syncv1.Entity, error) {
	return new(keyScratch).fill(k)
}

// keyScratch holds the messages of one converted key. The snapshot builder
// reuses one for every key (each is encoded before the next is filled),
// which keeps a million-key build to a handful of allocations per key.
type keyScratch struct {
	e    syncv1.Entity
	wrap syncv1.Entity_Key
	k    syncv1.Key
	lim  syncv1.Limits
	hash [32]byte
}

// fill converts k into s and returns s's entity, valid until the next fill.
func (s *keyScratch) fill(k *store.Key) (*syncv1.Entity, error) {
	if !decodeHash(s.hash[:], k.KeyHash) {
		// Never echo the value: a malformed "hash" may be a plaintext key.
		return nil, badEntity(store.KindKey, k.TokenID, "key_hash is not a SHA-256 hex digest")
	}
	limitsInto(&s.lim, &k.Limits)
	s.k = syncv1.Key{
		TokenId:        k.TokenID,
		KeyHash:        s.hash[:],
		KeyAlias:       k.KeyAlias,
		UserId:         k.UserID,
		TeamId:         k.TeamID,
		OrganizationId: k.OrganizationID,
		ServiceAccount: k.ServiceAccount,
		Models:         k.Models,
		Limits:         &s.lim,
		EnforcedParams: k.EnforcedParams,
		AllowedRoutes:  k.AllowedRoutes,
		Blocked:        k.Blocked,
		ExpiresUnix:    expiresUnix(k.Expires),
		Spend:          k.Spend,
		Tags:           k.Tags,
		Metadata:       jsonObject(k.Metadata),
	}
	if len(k.ModelMaxBudget) > 0 {
		s.k.ModelMaxBudget = make(map[string]*syncv1.ModelBudget, len(k.ModelMaxBudget))
		for m, b := range k.ModelMaxBudget {
			s.k.ModelMaxBudget[m] = &syncv1.ModelBudget{BudgetLimit: b.BudgetLimit, TimePeriod: b.TimePeriod}
			// Only the budgeted models' spend: the rest is no proxy's
			// business and would grow every key's message.
			if sp := k.ModelSpend[m]; sp != 0 {
				if s.k.ModelSpend == nil {
					s.k.ModelSpend = make(map[string]int64, len(k.ModelMaxBudget))
				}
				s.k.ModelSpend[m] = sp
			}
		}
	}
	if len(k.ModelRPMLimit) > 0 {
		s.k.ModelRpmLimit = k.ModelRPMLimit
	}
	if len(k.ModelTPMLimit) > 0 {
		s.k.ModelTpmLimit = k.ModelTPMLimit
	}
	for _, p := range k.PreviousHashes {
		h := make([]byte, 32)
		// An undecodable old secret, or one without a usable end of grace,
		// is dropped: the old secret stops working (fail closed).
		if !decodeHash(h, p.KeyHash) || p.ValidUntil.Unix() <= 0 {
			continue
		}
		s.k.PreviousHashes = append(s.k.PreviousHashes, &syncv1.PreviousHash{KeyHash: h, ValidUntilUnix: p.ValidUntil.Unix(), ValidUntilUnixMs: (p.ValidUntil.UnixMicro() + 999) / 1000})
	}
	s.wrap.Key = &s.k
	s.e = syncv1.Entity{Kind: store.KindKey, Id: k.TokenID, Value: &s.wrap}
	return &s.e, nil
}

// decodeHash decodes the SHA-256 hex digest of a key into dst (32 bytes).
func decodeHash(dst []byte, h string) bool {
	if len(h) != 64 {
		return false
	}
	_, err := hex.Decode(dst, []byte(h))
	return err == nil
}

// expiresUnix maps "never" to 0. An expiry at or before the epoch would
// read as "never" on the wire, so it is sent as 1 (long expired).
func expiresUnix(t *time.Time) int64 {
	if t == nil {
		return 0
	}
	if u := t.Unix(); u > 0 {
		return u
	}
	return 1
}

func unixOrZero(t *time.Time) int64 {
	if t == nil {
		return 0
	}
	return t.Unix()
}

// orNone maps a nil limit to -1 ("no limit" on the wire). A stored
// negative limit has no defined meaning and must not turn into "no limit":
// it is sent as 0.
func orNone(p *int64) int64 {
	if p == nil {
		return -1
	}
	return max(*p, 0)
}

func limits(l *store.Limits) *syncv1.Limits {
	dst := new(syncv1.Limits)
	limitsInto(dst, l)
	return dst
}

func limitsInto(dst *syncv1.Limits, l *store.Limits) {
	*dst = syncv1.Limits{
		MaxBudget:           orNone(l.MaxBudget),
		SoftBudget:          orNone(l.SoftBudget),
		BudgetDuration:      l.BudgetDuration,
		BudgetResetAtUnix:   unixOrZero(l.BudgetResetAt),
		RpmLimit:            orNone(l.RPMLimit),
		TpmLimit:            orNone(l.TPMLimit),
		MaxParallelRequests: orNone(l.MaxParallelRequests),
	}
}

// jsonObject returns raw JSON as bytes, with JSON null and absence both as
// empty ("no metadata").
func jsonObject(raw json.RawMessage) []byte {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil
	}
	return t
}

func teamEntity(t *store.Team) *syncv1.Entity {
	pt := &syncv1.Team{
		TeamId:           t.TeamID,
		OrganizationId:   t.OrganizationID,
		Models:           t.Models,
		Limits:           limits(&t.Limits),
		Blocked:          t.Blocked,
		Spend:            t.Spend,
		TeamMemberBudget: orNone(t.TeamMemberBudget),
		ModelAliases:     t.ModelAliases,
	}
	if len(t.Members) > 0 {
		pt.Members = make([]*syncv1.TeamMember, len(t.Members))
		for i, m := range t.Members {
			pt.Members[i] = &syncv1.TeamMember{
				UserId:          m.UserID,
				Role:            m.Role,
				MaxBudgetInTeam: orNone(m.MaxBudgetInTeam),
				Spend:           m.Spend,
			}
		}
	}
	if sa := t.SaaS; sa != nil {
		ps := &syncv1.TeamSaaS{
			Status:           sa.Status,
			CreditsAllocated: sa.CreditsAllocated,
			CreditsUsed:      sa.CreditsUsed,
			CreditsRemaining: sa.CreditsRemaining,
			KeyName:          sa.KeyName,
			TeamAlias:        t.TeamAlias,
		}
		for _, g := range sa.ModelGroups {
			ps.ModelGroups = append(ps.ModelGroups, &syncv1.TeamModelGroup{Name: g.Name, Models: g.Models})
		}
		pt.Saas = ps
	}
	return &syncv1.Entity{Kind: store.KindTeam, Id: t.TeamID, Value: &syncv1.Entity_Team{Team: pt}}
}

func userEntity(u *store.User) *syncv1.Entity {
	return &syncv1.Entity{Kind: store.KindUser, Id: u.UserID, Value: &syncv1.Entity_User{User: &syncv1.User{
		UserId:   u.UserID,
		UserRole: u.UserRole,
		Models:   u.Models,
		Limits:   limits(&u.Limits),
		Blocked:  u.Blocked,
		Spend:    u.Spend,
	}}}
}

func orgEntity(o *store.Organization) *syncv1.Entity {
	return &syncv1.Entity{Kind: store.KindOrganization, Id: o.OrganizationID, Value: &syncv1.Entity_Organization{Organization: &syncv1.Organization{
		OrganizationId: o.OrganizationID,
		Models:         o.Models,
		Limits:         limits(&o.Limits),
		Blocked:        o.Blocked,
		Spend:          o.Spend,
	}}}
}

func endUserEntity(u *store.EndUser) *syncv1.Entity {
	e := &syncv1.EndUser{
		EndUserId: u.EndUserID,
		Spend:     u.Spend,
		MaxBudget: orNone(u.MaxBudget),
		Blocked:   u.Blocked,
	}
	if u.RPMLimit != nil {
		v := max(*u.RPMLimit, 0)
		e.RpmLimit = &v
	}
	if u.TPMLimit != nil {
		v := max(*u.TPMLimit, 0)
		e.TpmLimit = &v
	}
	return &syncv1.Entity{Kind: store.KindEndUser, Id: u.EndUserID, Value: &syncv1.Entity_EndUser{EndUser: e}}
}

// modelEntity copies api_key as stored: normally a reference such as
// "os.environ/NAME" that each proxy resolves from its own environment.
func modelEntity(m *store.Model) *syncv1.Entity {
	sm := &syncv1.Model{
		Id:                 m.ID,
		ModelName:          m.ModelName,
		UpstreamModel:      m.UpstreamModel,
		ApiBase:            m.APIBase,
		ApiKey:             m.APIKey,
		ApiVersion:         m.APIVersion,
		InputCostPerToken:  m.InputCostPerToken,
		OutputCostPerToken: m.OutputCostPerToken,
		AccessGroups:       m.AccessGroups,
		Rpm:                orNone(m.RPM),
		Tpm:                orNone(m.TPM),
	}
	setUnitPrices(m, sm)
	return &syncv1.Entity{Kind: store.KindModel, Id: m.ID, Value: &syncv1.Entity_Model{Model: sm}}
}

// settingsEntity sends general_settings without the control plane's own
// secrets. Anything but a JSON object (or nothing) is refused.
func settingsEntity(s *store.Settings) (*syncv1.Entity, error) {
	gs := jsonObject(s.GeneralSettings)
	if gs != nil {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(gs, &obj); err != nil || obj == nil {
			return nil, badEntity(store.KindSettings, settingsID, "general_settings is not a JSON object")
		}
		stripped := false
		for _, f := range strippedSettings {
			if _, ok := obj[f]; ok {
				delete(obj, f)
				stripped = true
			}
		}
		if stripped {
			b, err := json.Marshal(obj)
			if err != nil {
				return nil, badEntity(store.KindSettings, settingsID, "re-encode general_settings: "+err.Error())
			}
			gs = b
		}
	}
	if gs == nil {
		gs = []byte("{}")
	}
	return &syncv1.Entity{Kind: store.KindSettings, Id: settingsID, Value: &syncv1.Entity_Settings{Settings: &syncv1.Settings{GeneralSettings: gs}}}, nil
}

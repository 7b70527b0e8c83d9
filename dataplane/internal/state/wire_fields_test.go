package state

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"
)

// The wire parser's field numbers are written out by hand: this checks
// them against the generated descriptors, and that every field of the
// messages it reads is one it knows (parsed, or skipped on purpose). A
// field added to the proto fails here until wire.go handles it; without
// this, the parser would skip it silently and the key table would differ
// from proto.Unmarshal's only where that field is set.
func TestWireFieldsMatchTheProto(t *testing.T) {
	type want struct {
		name string
		num  protoreflect.FieldNumber
		kind protoreflect.Kind
	}
	check := func(m protoreflect.Message, fields []want, skipped ...string) {
		t.Helper()
		d := m.Descriptor()
		known := map[protoreflect.Name]bool{}
		for _, s := range skipped {
			known[protoreflect.Name(s)] = true
		}
		for _, w := range fields {
			f := d.Fields().ByName(protoreflect.Name(w.name))
			if f == nil {
				t.Errorf("%s.%s: no such field", d.Name(), w.name)
				continue
			}
			if f.Number() != w.num || f.Kind() != w.kind {
				t.Errorf("%s.%s is %d (%v); wire.go reads %d (%v)", d.Name(), w.name, f.Number(), f.Kind(), w.num, w.kind)
			}
			known[f.Name()] = true
		}
		for i := 0; i < d.Fields().Len(); i++ {
			if f := d.Fields().Get(i); !known[f.Name()] {
				t.Errorf("%s.%s (%d) is neither parsed nor skipped on purpose by wire.go", d.Name(), f.Name(), f.Number())
			}
		}
	}
	check((&syncv1.Entity{}).ProtoReflect(), []want{
		{"kind", entityKind, protoreflect.StringKind},
		{"id", entityID, protoreflect.StringKind},
		{"deleted", entityDeleted, protoreflect.BoolKind},
		{"key", entityKey, protoreflect.MessageKind},
	}, "team", "user", "organization", "model", "settings", "end_user") // parse gives up on them (11..entityLastVal)
	if n := (&syncv1.Entity{}).ProtoReflect().Descriptor().Fields().ByName("end_user").Number(); n != entityLastVal {
		t.Errorf("Entity's last value case is %d, wire.go's entityLastVal %d", n, entityLastVal)
	}
	check((&syncv1.Key{}).ProtoReflect(), []want{
		{"token_id", keyTokenID, protoreflect.StringKind},
		{"key_hash", keyHash, protoreflect.BytesKind},
		{"key_alias", keyAlias, protoreflect.StringKind},
		{"user_id", keyUser, protoreflect.StringKind},
		{"team_id", keyTeam, protoreflect.StringKind},
		{"organization_id", keyOrg, protoreflect.StringKind},
		{"service_account", keyService, protoreflect.BoolKind},
		{"models", keyModels, protoreflect.StringKind},
		{"limits", keyLimits, protoreflect.MessageKind},
		{"model_max_budget", keyMaxBudget, protoreflect.MessageKind},
		{"model_rpm_limit", keyRPM, protoreflect.MessageKind},
		{"model_tpm_limit", keyTPM, protoreflect.MessageKind},
		{"enforced_params", keyEnforced, protoreflect.StringKind},
		{"allowed_routes", keyRoutes, protoreflect.StringKind},
		{"blocked", keyBlocked, protoreflect.BoolKind},
		{"expires_unix", keyExpires, protoreflect.Int64Kind},
		{"previous_hashes", keyPrevs, protoreflect.MessageKind},
		{"spend", keySpend, protoreflect.Int64Kind},
		{"tags", keyTags, protoreflect.StringKind},
		{"model_spend", keyModelSp, protoreflect.MessageKind},
	}, "metadata") // the key table does not keep it
	check((&syncv1.Limits{}).ProtoReflect(), []want{
		{"max_budget", 1, protoreflect.Int64Kind},
		{"soft_budget", 2, protoreflect.Int64Kind},
		{"budget_duration", 3, protoreflect.StringKind},
		{"budget_reset_at_unix", 4, protoreflect.Int64Kind},
		{"rpm_limit", 5, protoreflect.Int64Kind},
		{"tpm_limit", 6, protoreflect.Int64Kind},
		{"max_parallel_requests", 7, protoreflect.Int64Kind},
	})
	check((&syncv1.PreviousHash{}).ProtoReflect(), []want{
		{"key_hash", 1, protoreflect.BytesKind},
		{"valid_until_unix", 2, protoreflect.Int64Kind},
		{"valid_until_unix_ms", 70, protoreflect.Int64Kind},
	})
	check((&syncv1.ModelBudget{}).ProtoReflect(), []want{
		{"budget_limit", 1, protoreflect.Int64Kind},
		{"time_period", 2, protoreflect.StringKind},
	})
	check((&syncv1.SnapshotChunk{}).ProtoReflect(), []want{
		{"revision", chunkRevision, protoreflect.Int64Kind},
		{"seq", chunkSeq, protoreflect.Int32Kind},
		{"last", chunkLast, protoreflect.BoolKind},
		{"entities", chunkEntities, protoreflect.MessageKind},
		{"keys_hint", chunkKeysHint, protoreflect.Int64Kind},
	})
	if f := (&syncv1.ControlMessage{}).ProtoReflect().Descriptor().Fields().ByName("snapshot"); f == nil || f.Number() != controlSnapshot {
		t.Errorf("ControlMessage.snapshot is not field %d", controlSnapshot)
	}
}

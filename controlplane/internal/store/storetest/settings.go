package storetest

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

var settingsTests = []test{
	{"EmptyStoreHasZeroSettings", testSettingsEmpty},
	{"PutReplaces", testSettingsPut},
}

func testSettingsEmpty(t *testing.T, s store.Store) {
	ctx := t.Context()
	check := func(where string, r store.Reader) {
		t.Helper()
		got, err := r.GetSettings(ctx)
		if err != nil {
			t.Errorf("%s GetSettings on an empty store: %v", where, err)
		}
		expectEqual(t, where+" GetSettings on an empty store", store.Settings{}, got)
		if len(got.GeneralSettings) != 0 || !got.UpdatedAt.IsZero() {
			t.Errorf("%s GetSettings on an empty store = %+v, want the zero value", where, got)
		}
	}
	check("Read()", s.Read())
	write(t, s, func(ctx context.Context, tx store.Tx) error { check("in a transaction:", tx); return nil })
	snapshot(t, s, func(_ int64, r store.Reader) { check("in a snapshot:", r) })
}

func testSettingsPut(t *testing.T, s store.Store) {
	ctx := t.Context()
	first := fullSettings()
	write(t, s, func(ctx context.Context, tx store.Tx) error {
		if err := tx.PutSettings(ctx, first); err != nil {
			return err
		}
		got, err := tx.GetSettings(ctx)
		if err != nil {
			return err
		}
		expectEqual(t, "settings in the writing transaction", first, got)
		return nil
	})
	got, err := s.Read().GetSettings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	expectEqual(t, "settings", first, got)
	cs := changeSet(t, s, 1)
	if len(cs.Changes) != 1 || cs.Changes[0].Kind != store.KindSettings || cs.Changes[0].Op != store.OpPut {
		t.Fatalf("PutSettings change set = %v", changeIDs(cs))
	}
	expectPostImage(t, cs.Changes[0], first)

	// A second put replaces the whole object under the same change id.
	second := store.Settings{GeneralSettings: json.RawMessage(`{"master_key":"os.environ/MASTER"}`), UpdatedAt: at(9)}
	write(t, s, func(ctx context.Context, tx store.Tx) error { return tx.PutSettings(ctx, second) })
	got, err = s.Read().GetSettings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	expectEqual(t, "replaced settings", second, got)
	cs2 := changeSet(t, s, 2)
	if len(cs2.Changes) != 1 || cs2.Changes[0].Kind != store.KindSettings || cs2.Changes[0].ID != cs.Changes[0].ID {
		t.Fatalf("second PutSettings change set = %v, first was %v", changeIDs(cs2), changeIDs(cs))
	}
	expectPostImage(t, cs2.Changes[0], second)
}

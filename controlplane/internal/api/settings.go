package api

import (
	"context"
	"encoding/json"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/events"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/settings"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

type settingsService struct {
	adminv1.UnimplementedSettingsServiceServer
	s *Server
}

// secretSettings never enter the store: they would be synced to every proxy.
var secretSettings = []string{"master_key", "database_url"}

func settingsOut(st store.Settings) *adminv1.Settings {
	out := &adminv1.Settings{GeneralSettings: structOf(st.GeneralSettings), UpdatedAt: tsOf(st.UpdatedAt)}
	return out
}

func (ss *settingsService) GetSettings(ctx context.Context, _ *adminv1.GetSettingsRequest) (*adminv1.Settings, error) {
	s := ss.s
	if _, err := s.authorize(ctx, authz.SettingsRead, authz.Target{}); err != nil {
		return nil, err
	}
	st, err := s.store.Read().GetSettings(ctx)
	if err != nil {
		return nil, storeError(ctx, err, "settings")
	}
	return settingsOut(st), nil
}

// MergeSettings merges patch into base at the top level; a null value removes
// the key. Secret keys are refused.
func MergeSettings(base, patch json.RawMessage) (json.RawMessage, error) {
	cur := map[string]json.RawMessage{}
	if len(base) > 0 {
		if err := json.Unmarshal(base, &cur); err != nil {
			return nil, err
		}
	}
	upd := map[string]json.RawMessage{}
	if len(patch) > 0 {
		if err := json.Unmarshal(patch, &upd); err != nil {
			return nil, err
		}
	}
	for k, v := range upd {
		if string(v) == "null" {
			delete(cur, k)
			continue
		}
		cur[k] = v
	}
	for _, k := range secretSettings {
		delete(cur, k)
	}
	return json.Marshal(cur)
}

func (ss *settingsService) UpdateSettings(ctx context.Context, req *adminv1.UpdateSettingsRequest) (*adminv1.Settings, error) {
	s := ss.s
	c, err := s.authorize(ctx, authz.SettingsUpdate, authz.Target{})
	if err != nil {
		return nil, err
	}
	if req.GetGeneralSettings() == nil {
		return nil, badRequest("general_settings", "general_settings is required")
	}
	for _, k := range secretSettings {
		if _, ok := req.GetGeneralSettings().GetFields()[k]; ok {
			return nil, badRequest("general_settings."+k, k+" cannot be set through the API; use the control plane's flags")
		}
	}
	if v, ok := req.GetGeneralSettings().GetFields()["webhook_secret"]; ok && !events.SecretReference(v.GetStringValue()) {
		return nil, badRequest("general_settings.webhook_secret", "webhook_secret must be an os.environ/NAME reference (settings are stored and readable); or set "+events.EnvWebhookSecret)
	}
	patch, err := protojson.Marshal(req.GetGeneralSettings())
	if err != nil || len(patch) > maxJSONObject {
		return nil, badRequest("general_settings", "general_settings must be a JSON object of at most 64 KiB")
	}
	var out store.Settings
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		cur, err := tx.GetSettings(ctx)
		if err != nil {
			return err
		}
		merged, err := MergeSettings(cur.GeneralSettings, patch)
		if err != nil {
			return badRequest("general_settings", "general_settings must be a JSON object")
		}
		if err := settings.Validate(merged); err != nil {
			return badRequest("general_settings", err.Error())
		}
		before := cur
		out = store.Settings{GeneralSettings: merged, UpdatedAt: s.now()}
		if err := tx.PutSettings(ctx, out); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, "updated", "settings", "general_settings", settingsOut(before), settingsOut(out))
	})
	if err != nil {
		return nil, storeError(ctx, err, "settings")
	}
	return settingsOut(out), nil
}

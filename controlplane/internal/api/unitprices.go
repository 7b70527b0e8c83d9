package api

import (
	"encoding/json"

	"google.golang.org/protobuf/types/known/wrapperspb"

	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
)

// unitPrice names a model_info price beyond input/output tokens and its
// field in adminv1.ModelInfo. They are kept in the model's model_info JSON,
// where the config file puts them too; the sync conversion reads them from
// there (syncserver.setUnitPrices).
type unitPrice struct {
	name string
	get  func(*adminv1.ModelInfo) *wrapperspb.DoubleValue
	set  func(*adminv1.ModelInfo, *wrapperspb.DoubleValue)
}

var unitPrices = []unitPrice{
	{"cache_creation_input_token_cost", (*adminv1.ModelInfo).GetCacheCreationInputTokenCost, func(m *adminv1.ModelInfo, v *wrapperspb.DoubleValue) { m.CacheCreationInputTokenCost = v }},
	{"cache_read_input_token_cost", (*adminv1.ModelInfo).GetCacheReadInputTokenCost, func(m *adminv1.ModelInfo, v *wrapperspb.DoubleValue) { m.CacheReadInputTokenCost = v }},
	{"input_cost_per_image", (*adminv1.ModelInfo).GetInputCostPerImage, func(m *adminv1.ModelInfo, v *wrapperspb.DoubleValue) { m.InputCostPerImage = v }},
	{"output_cost_per_image", (*adminv1.ModelInfo).GetOutputCostPerImage, func(m *adminv1.ModelInfo, v *wrapperspb.DoubleValue) { m.OutputCostPerImage = v }},
	{"input_cost_per_second", (*adminv1.ModelInfo).GetInputCostPerSecond, func(m *adminv1.ModelInfo, v *wrapperspb.DoubleValue) { m.InputCostPerSecond = v }},
	{"output_cost_per_second", (*adminv1.ModelInfo).GetOutputCostPerSecond, func(m *adminv1.ModelInfo, v *wrapperspb.DoubleValue) { m.OutputCostPerSecond = v }},
	{"input_cost_per_character", (*adminv1.ModelInfo).GetInputCostPerCharacter, func(m *adminv1.ModelInfo, v *wrapperspb.DoubleValue) { m.InputCostPerCharacter = v }},
	{"input_cost_per_query", (*adminv1.ModelInfo).GetInputCostPerQuery, func(m *adminv1.ModelInfo, v *wrapperspb.DoubleValue) { m.InputCostPerQuery = v }},
}

// applyUnitPrices validates the request's unit prices and merges them into
// m.ModelInfo (a price of 0 removes it).
func applyUnitPrices(mi *adminv1.ModelInfo, m *store.Model) error {
	var info map[string]any
	for _, u := range unitPrices {
		v := u.get(mi)
		if v == nil {
			continue
		}
		if _, err := money.PriceFromUSD(v.GetValue()); err != nil {
			return badRequest("model_info."+u.name, "model_info."+u.name+" must be a finite, non-negative number of USD per unit")
		}
		if info == nil {
			if err := json.Unmarshal(m.ModelInfo, &info); err != nil || info == nil {
				info = map[string]any{}
			}
		}
		if v.GetValue() == 0 {
			delete(info, u.name)
		} else {
			info[u.name] = v.GetValue()
		}
	}
	if info == nil {
		return nil
	}
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	m.ModelInfo = b
	return nil
}

// unitPricesOut copies the unit prices of m.ModelInfo to out.
func unitPricesOut(m *store.Model, out *adminv1.ModelInfo) {
	if len(m.ModelInfo) == 0 {
		return
	}
	var info map[string]json.RawMessage
	if json.Unmarshal(m.ModelInfo, &info) != nil {
		return
	}
	for _, u := range unitPrices {
		var usd float64
		if raw, ok := info[u.name]; ok && json.Unmarshal(raw, &usd) == nil && usd > 0 {
			u.set(out, wrapperspb.Double(usd))
		}
	}
}

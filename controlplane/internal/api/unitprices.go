package api

import (
	"encoding/json"

	"google.golang.org/protobuf/types/known/wrapperspb"

	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
)

// unitPrices are the prices beyond input/output tokens that model_info and
// litellm_params may carry (the same names in both). They are kept in the
// model's model_info / params JSON, where the config file puts them too;
// the sync conversion reads them from there (syncserver.setUnitPrices).
var unitPrices = []string{
	"cache_creation_input_token_cost", "cache_read_input_token_cost",
	"input_cost_per_image", "output_cost_per_image",
	"input_cost_per_second", "output_cost_per_second",
	"input_cost_per_character", "input_cost_per_query",
}

// pricer is adminv1.ModelInfo or adminv1.LiteLLMParams.
type pricer interface {
	GetCacheCreationInputTokenCost() *wrapperspb.DoubleValue
	GetCacheReadInputTokenCost() *wrapperspb.DoubleValue
	GetInputCostPerImage() *wrapperspb.DoubleValue
	GetOutputCostPerImage() *wrapperspb.DoubleValue
	GetInputCostPerSecond() *wrapperspb.DoubleValue
	GetOutputCostPerSecond() *wrapperspb.DoubleValue
	GetInputCostPerCharacter() *wrapperspb.DoubleValue
	GetInputCostPerQuery() *wrapperspb.DoubleValue
}

// values lists p's unit prices in unitPrices' order.
func values(p pricer) [8]*wrapperspb.DoubleValue {
	return [8]*wrapperspb.DoubleValue{
		p.GetCacheCreationInputTokenCost(), p.GetCacheReadInputTokenCost(),
		p.GetInputCostPerImage(), p.GetOutputCostPerImage(),
		p.GetInputCostPerSecond(), p.GetOutputCostPerSecond(),
		p.GetInputCostPerCharacter(), p.GetInputCostPerQuery(),
	}
}

// applyUnitPrices validates the request's unit prices (model_info and
// litellm_params) and merges them into m.ModelInfo and m.Params (a price
// of 0 removes it).
func applyUnitPrices(mi *adminv1.ModelInfo, lp *adminv1.LiteLLMParams, m *store.Model) error {
	var err error
	if m.ModelInfo, err = mergePrices("model_info", values(mi), m.ModelInfo); err != nil {
		return err
	}
	m.Params, err = mergePrices("litellm_params", values(lp), m.Params)
	return err
}

func mergePrices(path string, vals [8]*wrapperspb.DoubleValue, doc json.RawMessage) (json.RawMessage, error) {
	var obj map[string]any
	for i, v := range vals {
		if v == nil {
			continue
		}
		name := unitPrices[i]
		if _, err := money.PriceFromUSD(v.GetValue()); err != nil {
			return doc, badRequest(path+"."+name, path+"."+name+" must be a finite, non-negative number of USD per unit")
		}
		if obj == nil {
			if err := json.Unmarshal(doc, &obj); err != nil || obj == nil {
				obj = map[string]any{}
			}
		}
		if v.GetValue() == 0 {
			delete(obj, name)
		} else {
			obj[name] = v.GetValue()
		}
	}
	if obj == nil {
		return doc, nil
	}
	return json.Marshal(obj)
}

// unitPricesOut copies the unit prices of m's model_info and params JSON to
// the answer.
func unitPricesOut(m *store.Model, mi *adminv1.ModelInfo, lp *adminv1.LiteLLMParams) {
	read := func(doc json.RawMessage) (out [8]*wrapperspb.DoubleValue) {
		var obj map[string]json.RawMessage
		if len(doc) == 0 || json.Unmarshal(doc, &obj) != nil {
			return out
		}
		for i, name := range unitPrices {
			var usd float64
			if raw, ok := obj[name]; ok && json.Unmarshal(raw, &usd) == nil && usd > 0 {
				out[i] = wrapperspb.Double(usd)
			}
		}
		return out
	}
	v := read(m.ModelInfo)
	mi.CacheCreationInputTokenCost, mi.CacheReadInputTokenCost = v[0], v[1]
	mi.InputCostPerImage, mi.OutputCostPerImage = v[2], v[3]
	mi.InputCostPerSecond, mi.OutputCostPerSecond = v[4], v[5]
	mi.InputCostPerCharacter, mi.InputCostPerQuery = v[6], v[7]
	v = read(m.Params)
	lp.CacheCreationInputTokenCost, lp.CacheReadInputTokenCost = v[0], v[1]
	lp.InputCostPerImage, lp.OutputCostPerImage = v[2], v[3]
	lp.InputCostPerSecond, lp.OutputCostPerSecond = v[4], v[5]
	lp.InputCostPerCharacter, lp.InputCostPerQuery = v[6], v[7]
}

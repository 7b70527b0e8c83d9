package syncserver

import (
	"encoding/json"

	syncv1 "github.com/tollgate-gw/tollgate/gen/tollgate/sync/v1"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
)

// setUnitPrices copies the prices beyond input/output tokens into the
// synced model: LiteLLM's model_info names (a model_info price wins over the
// same name in litellm_params, as for the token prices). A price that is not
// a valid non-negative number is left unset (0), so the request is billed
// at the token prices alone.
func setUnitPrices(m *store.Model, out *syncv1.Model) {
	var info, params map[string]json.RawMessage
	_ = json.Unmarshal(m.ModelInfo, &info)
	_ = json.Unmarshal(m.Params, &params)
	price := func(name string) int64 {
		for _, src := range []map[string]json.RawMessage{info, params} {
			raw, ok := src[name]
			if !ok {
				continue
			}
			var usd float64
			if json.Unmarshal(raw, &usd) != nil {
				continue
			}
			if p, err := money.PriceFromUSD(usd); err == nil {
				return p
			}
		}
		return 0
	}
	first := func(names ...string) int64 {
		for _, n := range names {
			if p := price(n); p > 0 {
				return p
			}
		}
		return 0
	}
	out.CacheCreationInputTokenCost = price("cache_creation_input_token_cost")
	out.CacheReadInputTokenCost = price("cache_read_input_token_cost")
	out.CostPerImage = first("output_cost_per_image", "input_cost_per_image")
	out.CostPerSecond = first("input_cost_per_second", "output_cost_per_second")
	out.InputCostPerCharacter = price("input_cost_per_character")
	out.InputCostPerQuery = price("input_cost_per_query")
}

package syncserver

import (
	"encoding/json"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

func TestModelEntityUnitPrices(t *testing.T) {
	m := &store.Model{ID: "m1", ModelName: "claude", UpstreamModel: "anthropic/claude",
		ModelInfo: json.RawMessage(`{"cache_creation_input_token_cost":0.00000375,"cache_read_input_token_cost":3e-7,"output_cost_per_image":0.04,"input_cost_per_image":0.01,"input_cost_per_character":"x","input_cost_per_query":-1}`),
		Params:    json.RawMessage(`{"cache_read_input_token_cost":0.5,"output_cost_per_second":0.0001,"input_cost_per_character":0.000015,"input_cost_per_query":0.002}`)}
	got := modelEntity(m).GetModel()
	if got.CacheCreationInputTokenCost != 3_750_000 || got.CacheReadInputTokenCost != 300_000 ||
		got.CostPerImage != 40_000_000_000 || got.CostPerSecond != 100_000_000 ||
		got.InputCostPerCharacter != 15_000_000 || got.InputCostPerQuery != 2_000_000_000 {
		t.Fatalf("prices %+v", got)
	}
	if got := modelEntity(&store.Model{ID: "m2"}).GetModel(); got.CacheReadInputTokenCost != 0 || got.CostPerImage != 0 {
		t.Fatalf("unset prices %+v", got)
	}
}

package proxy

import (
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// Cost prices usage at a deployment's prices, in money's amount unit,
// rounded up once (money.Cost). It is the one pricing function: the spend
// record and the budget gate's settlement both use it, so what a record
// bills is exactly what the gate settles.
//
// Prompt tokens read from or written to a prompt cache are billed at
// cache_read_input_token_cost / cache_creation_input_token_cost when the
// model has them, else at input_cost_per_token; the other prompt tokens at
// input_cost_per_token, completion tokens at output_cost_per_token. Per-unit
// usage (images, audio seconds, characters, rerank queries) adds its
// price × count. A nil deployment costs nothing.
func Cost(d *state.Model, u Usage) int64 {
	if d == nil {
		return 0
	}
	prompt := max(u.PromptTokens, 0)
	cc := min(max(u.CacheCreationTokens, 0), prompt)
	cr := min(max(u.CacheReadTokens, 0), prompt-cc)
	ccPrice, crPrice := d.CacheCreationCost, d.CacheReadCost
	if ccPrice == 0 {
		ccPrice = d.InputCost
	}
	if crPrice == 0 {
		crPrice = d.InputCost
	}
	var s money.Sum // exact in 128 bits: absurd usage saturates, never wraps
	s.Add(prompt-cc-cr, d.InputCost)
	s.Add(cc, ccPrice)
	s.Add(cr, crPrice)
	s.Add(u.CompletionTokens, d.OutputCost)
	s.Add(u.Images, d.ImageCost)
	s.Add(u.Characters, d.CharacterCost)
	s.Add(u.Queries, d.QueryCost)
	if ms := max(u.AudioMillis, 0); ms > 0 && d.SecondCost > 0 {
		// A price per second, usage in ms: ⌈ms × price / 1000⌉ pico-USD.
		var a money.Sum
		a.Add(ms, d.SecondCost)
		s.Add(1, a.Nano())
	}
	return s.Nano()
}

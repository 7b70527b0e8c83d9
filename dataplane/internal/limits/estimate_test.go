package limits

import (
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
	"github.com/tollgate-gw/tollgate/dataplane/internal/state"
)

// The first estimate of a short exchange (the e2e upstream's 10 prompt + 5
// completion tokens) is within a few times its cost, not 20-50 times.
func TestFirstEstimateOfAShortExchange(t *testing.T) {
	l := newLimiter()
	f := newFixture(t, smallBody)
	f.dep.InputCost, f.dep.OutputCost = 1_000_000, 4_000_000
	a := &proxy.Admission{Route: enforce.RouteChat, Principal: &f.p, Body: &f.body, Deployment: &f.dep, Header: http.Header{}}
	est := l.estimateCost(a, int64(f.body.Size()/4+1))
	actual := int64(10*1+5*4) * 1000 // nano-USD (prices are pico-USD per token)
	if est > 5*actual {
		t.Fatalf("first estimate %d nano-USD for an exchange costing %d", est, actual)
	}
}

// TestEstimateErrorOnAMixedWorkload measures the completion estimate on a
// mixed workload (seeded, so the figures are exact and repeatable; the
// README quotes them): short chat, medium answers, long generations and
// summaries of long prompts through one deployment, none with max_tokens.
func TestEstimateErrorOnAMixedWorkload(t *testing.T) {
	type kind struct {
		share                  float64
		promptLo, promptHi     int
		completeLo, completeHi int64
	}
	mix := []kind{
		{0.40, 40, 200, 5, 60},       // short chat
		{0.30, 200, 1000, 100, 400},  // medium answers
		{0.15, 50, 300, 500, 1500},   // long generations
		{0.15, 2000, 6000, 100, 300}, // summaries
	}
	rng := rand.New(rand.NewPCG(17, 1))
	l := newLimiter()
	dep := state.Model{ID: "dep", ModelName: "m", InputCost: 1_000_000, OutputCost: 4_000_000}
	var ratios []float64
	var sumEst, sumActual int64
	first := 0.0
	const n = 2000
	for i := range n {
		x, k := rng.Float64(), mix[len(mix)-1]
		for _, m := range mix {
			if x < m.share {
				k = m
				break
			}
			x -= m.share
		}
		prompt := k.promptLo + rng.IntN(k.promptHi-k.promptLo+1)
		completion := k.completeLo + rng.Int64N(k.completeHi-k.completeLo+1)
		var body enforce.Body
		raw := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("w", prompt*4-60) + `"}]}`
		if rej := enforce.ParseBody([]byte(raw), &body); rej != nil {
			t.Fatal(rej.Message)
		}
		estTok := int64(body.Size()/4 + 1)
		est := l.estimateCost(&proxy.Admission{Body: &body, Deployment: &dep}, estTok)
		actual := (int64(prompt)*1 + completion*4) * 1000 // nano-USD
		r := float64(est) / float64(actual)
		if i == 0 {
			first = r
		}
		ratios = append(ratios, r)
		sumEst += est
		sumActual += actual
		l.observeOutTokens(dep.ID, completion)
	}
	slices.Sort(ratios)
	q := func(p float64) float64 { return ratios[int(p*float64(len(ratios)-1))] }
	total := float64(sumEst) / float64(sumActual)
	t.Logf("first request %.2fx; per request p10 %.2fx, median %.2fx, p90 %.2fx, max %.2fx; whole workload %.2fx", first, q(0.1), q(0.5), q(0.9), ratios[len(ratios)-1], total)
	if first > 20 || total < 1 || total > 1.6 || q(0.5) > 3 {
		t.Fatalf("estimate off: first %.2fx, median %.2fx, whole workload %.2fx", first, q(0.5), total)
	}
}

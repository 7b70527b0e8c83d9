package money

import (
	"encoding/json"
	"math"
	"math/big"
	"testing"
)

func TestFromUSD(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want int64
		ok   bool
	}{
		{0, 0, true}, {10, 10_000_000_000, true}, {0.000001, 1000, true}, {1.5, 1_500_000_000, true},
		{0.0000001, 100, true}, {0.000000855, 855, true}, {1e-9, 1, true}, {4e-10, 0, true},
		{MaxUSD, 1e18, true}, {-1, 0, false}, {math.NaN(), 0, false}, {math.Inf(1), 0, false}, {2e9, 0, false},
	} {
		got, err := FromUSD(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("FromUSD(%v) = %d, %v", tc.in, got, err)
		}
	}
	if ToUSD(1_500_000_000) != 1.5 {
		t.Fatal("ToUSD")
	}
}

// ToUSD gives the float64 nearest the exact decimal amount, which JSON
// encodes without noise, and which FromUSD maps back to the same integer.
func TestToUSDRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		nanos int64
		json  string
	}{{855_000, "0.000855"}, {855, "8.55e-7"}, {100, "1e-7"}, {1, "1e-9"}, {123_456_789_012, "123.456789012"}, {1e18, "1000000000"}} {
		b, err := json.Marshal(ToUSD(tc.nanos))
		if err != nil || string(b) != tc.json {
			t.Errorf("json(ToUSD(%d)) = %s, want %s", tc.nanos, b, tc.json)
		}
	}
	for n := int64(0); n < 2_000_000; n += 997 {
		for _, v := range []int64{n, n * 1_000_003, n * 1_000_000_007} {
			if back, err := FromUSD(ToUSD(v)); v <= 1e18 && (err != nil || back != v) {
				t.Fatalf("FromUSD(ToUSD(%d)) = %d, %v", v, back, err)
			}
		}
	}
}

func TestPriceAndCost(t *testing.T) {
	p, err := PriceFromUSD(0.0000025) // $2.50 per million tokens
	if err != nil || p != 2_500_000 {
		t.Fatalf("PriceFromUSD = %d, %v", p, err)
	}
	if c := Cost(1_000_000, p); c != 2_500_000_000 {
		t.Fatalf("a million tokens cost %d nano-USD, want 2,500,000,000", c)
	}
	if c := Cost(1, p); c != 2500 { // exact: 2.5 micro-USD
		t.Fatalf("Cost(1) = %d", c)
	}
	if c := Cost(1, 1); c != 1 { // a pico-USD rounds up to a nano-USD
		t.Fatalf("Cost(1, 1 pico) = %d", c)
	}
	if Cost(0, p) != 0 || Cost(10, 0) != 0 || Cost(-5, p) != 0 {
		t.Fatal("zero cost")
	}
	if _, err := PriceFromUSD(-1); err == nil {
		t.Fatal("negative price accepted")
	}
	// An embedding of 3 tokens at $0.02 per million tokens: 60 nano-USD.
	if p, _ := PriceFromUSD(0.02 / 1e6); Cost(3, p) != 60 {
		t.Fatalf("3 tokens at $0.02/M = %d nano-USD, want 60", Cost(3, p))
	}
}

// RequestCost sums both sides exactly before its one rounding, and never
// overflows: products beyond int64 are computed in 128 bits.
func TestRequestCostExactAndBounded(t *testing.T) {
	if c := RequestCost(9, 150_000, 12, 600_000); c != 8550 {
		t.Fatalf("9 + 12 tokens at $0.15/$0.60 per M = %d nano-USD, want 8550", c)
	}
	if c := RequestCost(1, 400, 1, 700); c != 2 { // 1100 pico rounds up once
		t.Fatalf("RequestCost sub-nano = %d, want 2", c)
	}
	if c := RequestCost(-3, 150_000, 12, 600_000); c != 7200 {
		t.Fatalf("negative prompt tokens = %d", c)
	}
	maxPrice, _ := PriceFromUSD(1e3)
	for _, tc := range []struct{ p, in, c, out int64 }{
		{math.MaxInt64, maxPrice, math.MaxInt64, maxPrice},
		{1 << 40, maxPrice, 1 << 40, maxPrice},
		{9_000_000, maxPrice, 0, 0},
		{math.MaxInt64, 1, math.MaxInt64, 1},
		{math.MaxInt64, 1000, 0, 0},
		{math.MaxInt64, 1001, 0, 0},
	} {
		want := new(big.Int).Mul(big.NewInt(tc.p), big.NewInt(tc.in))
		want.Add(want, new(big.Int).Mul(big.NewInt(tc.c), big.NewInt(tc.out)))
		want.Add(want, big.NewInt(999))
		want.Quo(want, big.NewInt(1000))
		if !want.IsInt64() {
			want.SetInt64(math.MaxInt64)
		}
		if got := RequestCost(tc.p, tc.in, tc.c, tc.out); got != want.Int64() {
			t.Errorf("RequestCost(%d, %d, %d, %d) = %d, want %d", tc.p, tc.in, tc.c, tc.out, got, want.Int64())
		}
	}
}

// No rounding drift: a million requests of 9 prompt and 12 completion
// tokens at $0.15 / $0.60 per million tokens cost, summed as integers,
// exactly the closed form 1e6 × (9 × 0.15 + 12 × 0.60) / 1e6 USD = $8.55,
// and the same for embeddings of a few tokens at $0.02 per million. (With
// micro-USD amounts they came to $9.00 (+5.3%) and $1.00 (+400% at 1
// token) or more.)
func TestNoRoundingDriftOverAMillionRequests(t *testing.T) {
	in, err1 := PriceFromUSD(0.15 / 1e6)
	out, err2 := PriceFromUSD(0.60 / 1e6)
	emb, err3 := PriceFromUSD(0.02 / 1e6)
	if err1 != nil || err2 != nil || err3 != nil || in != 150_000 || out != 600_000 || emb != 20_000 {
		t.Fatalf("prices %d %d %d", in, out, emb)
	}
	const n = 1_000_000
	var chat, embeddings, embTokens int64
	for i := range n {
		chat += RequestCost(9, in, 12, out)
		tokens := int64(1 + i%5) // 1 to 5 tokens
		embTokens += tokens
		embeddings += RequestCost(tokens, emb, 0, 0)
	}
	wantChat, _ := FromUSD(8.55)
	if chat != wantChat || ToUSD(chat) != 8.55 {
		t.Fatalf("a million chat requests cost %d nano-USD ($%v), want %d ($8.55): drift %d", chat, ToUSD(chat), wantChat, chat-wantChat)
	}
	if want := embTokens * 20; embeddings != want { // 20 nano-USD per token
		t.Fatalf("a million embeddings cost %d nano-USD, want %d: drift %d", embeddings, want, embeddings-want)
	}
	if ToUSD(embeddings) != 0.06 { // 3e6 tokens × $0.02 per million
		t.Fatalf("embeddings total $%v, want $0.06", ToUSD(embeddings))
	}
}

// Sum is exact over several kinds of usage and saturates instead of
// wrapping when a (hostile or broken) usage report is absurdly large.
func TestSumExactAndSaturating(t *testing.T) {
	var s Sum
	s.Add(9, 150_000)  // 9 tokens at $0.15 per million
	s.Add(12, 600_000) // 12 tokens at $0.60 per million
	s.Add(-5, 1_000)   // negative counts are zero
	if got := s.Nano(); got != 9*150+12*600 {
		t.Fatalf("sum %d nano-USD, want %d", got, 9*150+12*600)
	}
	var big Sum
	big.Add(math.MaxInt64, math.MaxInt64)
	big.Add(math.MaxInt64, math.MaxInt64)
	big.Add(math.MaxInt64, math.MaxInt64)
	big.Add(math.MaxInt64, math.MaxInt64)
	if got := big.Nano(); got != math.MaxInt64 {
		t.Fatalf("absurd usage costs %d, want saturation at MaxInt64", got)
	}
}

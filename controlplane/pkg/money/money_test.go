package money

import (
	"math"
	"testing"
)

func TestFromUSD(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want int64
		ok   bool
	}{
		{0, 0, true}, {10, 10_000_000, true}, {0.000001, 1, true}, {1.5, 1_500_000, true},
		{-1, 0, false}, {math.NaN(), 0, false}, {math.Inf(1), 0, false}, {2e12, 0, false},
	} {
		got, err := FromUSD(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("FromUSD(%v) = %d, %v", tc.in, got, err)
		}
	}
	if ToUSD(1_500_000) != 1.5 {
		t.Fatal("ToUSD")
	}
}

func TestPriceAndCost(t *testing.T) {
	p, err := PriceFromUSD(0.0000025) // $2.50 per million tokens
	if err != nil || p != 2_500_000 {
		t.Fatalf("PriceFromUSD = %d, %v", p, err)
	}
	if c := Cost(1_000_000, p); c != 2_500_000 {
		t.Fatalf("a million tokens cost %d micro-USD, want 2,500,000", c)
	}
	if c := Cost(1, p); c != 3 { // 2.5 micro-USD rounds up
		t.Fatalf("Cost(1) = %d", c)
	}
	if Cost(0, p) != 0 || Cost(10, 0) != 0 {
		t.Fatal("zero cost")
	}
	if _, err := PriceFromUSD(-1); err == nil {
		t.Fatal("negative price accepted")
	}
}

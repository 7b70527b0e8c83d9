// Package money converts between USD on the wire and the integers Tollgate
// computes with: nano-USD (1e-9 USD) for amounts (spend, budgets, costs,
// credits' worth) and pico-USD (1e-12 USD) per token for prices.
//
// A nano-USD int64 covers ±9.2 billion USD. Every price that is a whole
// number of nano-USD per token ($0.001 per million tokens and its
// multiples: $0.02/M is 20 nano-USD per token, $0.15/M 150) gives exact costs;
// only a sub-nano part of a price is rounded up, once per request.
package money

import (
	"errors"
	"math"
	"math/bits"
)

// MaxUSD bounds any amount accepted on the wire (a billion dollars), so
// conversions never overflow int64 nano-USD (9.2e9 USD) and sums of many
// such amounts stay far from it.
const MaxUSD = 1e9

// ErrInvalid reports a negative, non-finite or absurdly large amount.
var ErrInvalid = errors.New("amount must be a finite, non-negative number of USD")

// FromUSD converts USD to nano-USD, rounding to the nearest nano-dollar.
func FromUSD(usd float64) (int64, error) {
	if math.IsNaN(usd) || math.IsInf(usd, 0) || usd < 0 || usd > MaxUSD {
		return 0, ErrInvalid
	}
	return int64(math.Round(usd * 1e9)), nil
}

// ToUSD converts nano-USD to USD: the float64 nearest to the exact decimal
// amount (so 855 nano-USD is 8.55e-07, encoded without noise).
func ToUSD(nanos int64) float64 { return float64(nanos) / 1e9 }

// PriceFromUSD converts a per-token price in USD to pico-USD per token.
func PriceFromUSD(usdPerToken float64) (int64, error) {
	if math.IsNaN(usdPerToken) || math.IsInf(usdPerToken, 0) || usdPerToken < 0 || usdPerToken > 1e3 {
		return 0, ErrInvalid
	}
	return int64(math.Round(usdPerToken * 1e12)), nil
}

// PriceToUSD converts pico-USD per token to USD per token.
func PriceToUSD(pico int64) float64 { return float64(pico) / 1e12 }

// Cost returns the nano-USD cost of tokens at a pico-USD-per-token price,
// exact when the price is a whole number of nano-USD, else rounded up so
// that fractions of a nano-dollar are never given away.
func Cost(tokens, picoPerToken int64) int64 {
	return RequestCost(tokens, picoPerToken, 0, 0)
}

// RequestCost returns the nano-USD cost of a request: prompt tokens at the
// input price plus completion tokens at the output price (pico-USD per
// token), summed exactly and rounded up once. Negative arguments count as
// zero; a cost beyond int64 saturates at math.MaxInt64.
func RequestCost(prompt, inPico, completion, outPico int64) int64 {
	var s Sum
	s.Add(prompt, inPico)
	s.Add(completion, outPico)
	return s.Nano()
}

// Sum adds counts × pico-USD prices exactly (128 bits) and converts the
// total to nano-USD once, rounded up: the pricing of a request with several
// kinds of usage (cached tokens, images, seconds, ...). The zero value is an
// empty sum; it never allocates.
type Sum struct {
	hi, lo   uint64
	overflow bool
}

// Add adds n × picoPer (negative arguments count as zero).
func (s *Sum) Add(n, picoPer int64) {
	hi, lo := bits.Mul64(uint64(max(n, 0)), uint64(max(picoPer, 0)))
	var c uint64
	s.lo, c = bits.Add64(s.lo, lo, 0)
	var c2 uint64
	s.hi, c2 = bits.Add64(s.hi, hi, c)
	if c2 != 0 {
		s.overflow = true
	}
}

// Nano is the sum in nano-USD, rounded up once; beyond int64 it saturates
// at math.MaxInt64.
func (s *Sum) Nano() int64 {
	if s.overflow || s.hi >= 1000 { // the quotient would not fit in 64 bits
		return math.MaxInt64
	}
	q, r := bits.Div64(s.hi, s.lo, 1000)
	if q >= math.MaxInt64 {
		return math.MaxInt64
	}
	if r != 0 {
		q++ // rounded up once
	}
	return int64(q)
}

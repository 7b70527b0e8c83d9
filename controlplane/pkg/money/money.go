// Package money converts between USD on the wire and the integers Tollgate
// computes with: micro-USD for amounts, pico-USD per token for prices.
package money

import (
	"errors"
	"math"
)

// MaxUSD bounds any amount accepted on the wire (a trillion dollars), so
// conversions never overflow int64 micro-USD.
const MaxUSD = 1e12

// ErrInvalid reports a negative, non-finite or absurdly large amount.
var ErrInvalid = errors.New("amount must be a finite, non-negative number of USD")

// FromUSD converts USD to micro-USD, rounding to the nearest micro-dollar.
func FromUSD(usd float64) (int64, error) {
	if math.IsNaN(usd) || math.IsInf(usd, 0) || usd < 0 || usd > MaxUSD {
		return 0, ErrInvalid
	}
	return int64(math.Round(usd * 1e6)), nil
}

// ToUSD converts micro-USD to USD.
func ToUSD(micros int64) float64 { return float64(micros) / 1e6 }

// PriceFromUSD converts a per-token price in USD to pico-USD per token.
func PriceFromUSD(usdPerToken float64) (int64, error) {
	if math.IsNaN(usdPerToken) || math.IsInf(usdPerToken, 0) || usdPerToken < 0 || usdPerToken > 1e3 {
		return 0, ErrInvalid
	}
	return int64(math.Round(usdPerToken * 1e12)), nil
}

// PriceToUSD converts pico-USD per token to USD per token.
func PriceToUSD(pico int64) float64 { return float64(pico) / 1e12 }

// Cost returns the micro-USD cost of tokens at a pico-USD-per-token price,
// rounded up so that fractions of a micro-dollar are never given away.
func Cost(tokens, picoPerToken int64) int64 {
	if tokens <= 0 || picoPerToken <= 0 {
		return 0
	}
	p := tokens * picoPerToken
	return (p + 999_999) / 1_000_000
}

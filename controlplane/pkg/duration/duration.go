// Package duration parses LiteLLM-style durations ("30s", "30m", "30h",
// "30d", "2w", "1mo") and applies them to times, calendar-aware for months.
package duration

import (
	"errors"
	"strconv"
	"strings"
	"time"
)

// ErrFormat reports a malformed duration.
var ErrFormat = errors.New(`duration must be a positive whole number followed by s, m, h, d, w or mo (e.g. "30d")`)

// D is a parsed duration: N units.
type D struct {
	N    int
	Unit string // s, m, h, d, w, mo
}

// maxN keeps every duration under ~100 years.
const maxN = 1_000_000_000

// Parse parses "<n>s|m|h|d|w|mo".
func Parse(s string) (D, error) {
	s = strings.TrimSpace(s)
	unit := ""
	switch {
	case strings.HasSuffix(s, "mo"):
		unit = "mo"
	case len(s) > 0 && strings.ContainsRune("smhdw", rune(s[len(s)-1])):
		unit = s[len(s)-1:]
	default:
		return D{}, ErrFormat
	}
	num := s[:len(s)-len(unit)]
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 || n > maxN || num[0] == '+' {
		return D{}, ErrFormat
	}
	d := D{N: n, Unit: unit}
	if float64(n)*unitSeconds[unit] > 100*365*24*3600 {
		return D{}, ErrFormat // beyond a century (and beyond time.Duration's range)
	}
	return d, nil
}

var unitSeconds = map[string]float64{"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 31 * 86400}

func (d D) approx() time.Duration {
	n := time.Duration(d.N)
	switch d.Unit {
	case "s":
		return n * time.Second
	case "m":
		return n * time.Minute
	case "h":
		return n * time.Hour
	case "d":
		return n * 24 * time.Hour
	case "w":
		return n * 7 * 24 * time.Hour
	default:
		return n * 31 * 24 * time.Hour
	}
}

// AddTo returns t advanced by d; months are calendar months (Jan 31 + 1mo is
// the last day of February, not March 3).
func (d D) AddTo(t time.Time) time.Time {
	if d.Unit != "mo" {
		return t.Add(d.approx())
	}
	y, m, day := t.Date()
	first := time.Date(y, m+time.Month(d.N), 1, t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), t.Location())
	last := first.AddDate(0, 1, -1).Day()
	if day > last {
		day = last
	}
	return time.Date(first.Year(), first.Month(), day, t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), t.Location())
}

// String formats d back to its wire form.
func (d D) String() string { return strconv.Itoa(d.N) + d.Unit }

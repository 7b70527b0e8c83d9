package duration

import (
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	base := time.Date(2026, 1, 31, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"30s", base.Add(30 * time.Second)},
		{"30m", base.Add(30 * time.Minute)},
		{"30h", base.Add(30 * time.Hour)},
		{"30d", base.Add(30 * 24 * time.Hour)},
		{"2w", base.Add(14 * 24 * time.Hour)},
		{"1mo", time.Date(2026, 2, 28, 12, 0, 0, 0, time.UTC)},
		{"13mo", time.Date(2027, 2, 28, 12, 0, 0, 0, time.UTC)},
	} {
		d, err := Parse(tc.in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.in, err)
		}
		if got := d.AddTo(base); !got.Equal(tc.want) {
			t.Errorf("%s: %v, want %v", tc.in, got, tc.want)
		}
		if d.String() != tc.in {
			t.Errorf("String() = %q", d.String())
		}
	}
	for _, bad := range []string{"", "d", "0d", "-5d", "+5d", "10x", "1.5h", "5 d", "99999999999d", "200000w"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

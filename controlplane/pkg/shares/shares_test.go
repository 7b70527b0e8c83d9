package shares

import "testing"

func TestSharesAddUpToTheLimit(t *testing.T) {
	for _, limit := range []int64{0, 1, 2, 7, 100, 101} {
		for n := int64(1); n <= 5; n++ {
			var sum int64
			for i := range n {
				sum += Of(limit, n, i)
			}
			if sum != limit {
				t.Fatalf("limit %d over %d proxies: shares add up to %d", limit, n, sum)
			}
		}
	}
	if Of(7, 3, 0) != 3 || Of(7, 3, 2) != 2 || Of(9, 0, 0) != 9 {
		t.Fatal("split")
	}
}

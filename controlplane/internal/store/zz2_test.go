package store

import (
	"encoding/json"
	"testing"
)

func BenchmarkZZDirect(b *testing.B) {
	doc, _ := json.Marshal(sampleKeys(b)[2])
	for b.Loop() {
		var k Key
		if err := k.UnmarshalJSON(doc); err != nil {
			b.Fatal(err)
		}
	}
}

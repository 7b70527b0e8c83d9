package store

import (
	"encoding/json"
	"syscall"
	"testing"
	"time"
)

func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestZZCPU(t *testing.T) {
	doc, _ := json.Marshal(sampleKeys(t)[2])
	t.Logf("%s", doc)
	const n = 300000
	for round := 0; round < 3; round++ {
		for _, v := range []struct {
			name string
			f    func() error
		}{
			{"fast-direct", func() error { var k Key; return k.UnmarshalJSON(doc) }},
			{"fast", func() error { var k Key; return json.Unmarshal(doc, &k) }},
			{"std", func() error { var k Key; return json.Unmarshal(doc, (*keyJSON)(&k)) }},
			{"valid", func() error { json.Valid(doc); return nil }},
		} {
			c := cpuNow()
			for range n {
				if err := v.f(); err != nil {
					t.Fatal(err)
				}
			}
			t.Logf("%-12s %v/op cpu", v.name, (cpuNow()-c)/n)
		}
	}
}

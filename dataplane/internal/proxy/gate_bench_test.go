package proxy_test

import (
	"github.com/tollgate-gw/tollgate/dataplane/internal/limits"
	"github.com/tollgate-gw/tollgate/dataplane/internal/proxy"
)

// The decision benchmarks include the real gate (package limits imports
// proxy, so only the external test package can build it).
func init() {
	proxy.NewBenchGate = func() proxy.Gate { return limits.New(limits.Options{}) }
}

package storetest

import (
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// Run runs the whole suite against one backend. Every subtest calls
// newStore(t) for a fresh, empty store; closing and removing it when t ends
// is the factory's job (t.Cleanup).
//
// The suite only relies on what the store package documents. Revisions may
// be assigned shortly after ReadWriteTx returns, so the suite waits for them
// with a deadline instead of expecting them at once.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	groups := []struct {
		name  string
		tests []test
	}{
		{"CRUD", crudTests},
		{"RoundTrip", roundTripTests},
		{"Uniqueness", uniquenessTests},
		{"Lookup", lookupTests},
		{"Transactions", txTests},
		{"Listing", listTests},
		{"Cascades", cascadeTests},
		{"Settings", settingsTests},
		{"Audit", auditTests},
		{"Spend", spendTests},
		{"Events", eventTests},
		{"Sessions", sessionTests},
		{"SaaS", saasTests},
		{"Budgets", budgetTests},
		{"Revisions", revisionTests},
		{"Concurrency", concurrencyTests},
		{"Snapshot", snapshotTests},
		{"KeyDocs", keyDocsTests},
		{"Subscribe", subscribeTests},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			for _, tc := range g.tests {
				t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
			}
		})
	}
}

// test is one conformance test; it gets a fresh, empty store.
type test struct {
	name string
	fn   func(t *testing.T, s store.Store)
}

// Package storetest is the conformance suite that every store.Store backend runs.
package storetest

// Package observability holds what deploy/observability ships besides the
// files themselves: the list of every metric series Tollgate documents
// (README "Observability"), which the Grafana dashboard, the Prometheus
// rules and the end-to-end scrape test (deploy/e2e TestMetricsScrapedAndParsed)
// are all checked against.
package observability

// Series is one documented metric family.
type Series struct {
	Name   string
	Type   string // counter, gauge, histogram
	Plane  string // "proxy" or "controlplane"
	Labels []string
	// Sparse families appear only once something happened (a labelled
	// series with no observation yet is not exposed): an error, a webhook.
	Sparse bool
}

// Documented is every Tollgate series (Go runtime and process collectors,
// go_* and process_*, are on both planes too).
var Documented = []Series{
	// Proxy: requests.
	{Name: "tollgate_proxy_requests_total", Type: "counter", Plane: "proxy", Labels: []string{"route", "outcome"}},
	{Name: "tollgate_proxy_model_requests_total", Type: "counter", Plane: "proxy", Labels: []string{"route", "model", "status"}},
	{Name: "tollgate_proxy_decision_seconds", Type: "histogram", Plane: "proxy"},
	{Name: "tollgate_proxy_upstream_seconds", Type: "histogram", Plane: "proxy", Labels: []string{"route"}},
	// Proxy: sync.
	{Name: "tollgate_sync_connected", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_sync_revision", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_sync_head_revision", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_sync_revision_lag", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_sync_state_age_seconds", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_sync_last_contact_age_seconds", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_sync_sessions_total", Type: "counter", Plane: "proxy"},
	{Name: "tollgate_sync_session_errors_total", Type: "counter", Plane: "proxy", Labels: []string{"reason"}, Sparse: true},
	{Name: "tollgate_sync_snapshots_applied_total", Type: "counter", Plane: "proxy"},
	{Name: "tollgate_sync_deltas_applied_total", Type: "counter", Plane: "proxy"},
	{Name: "tollgate_sync_apply_seconds", Type: "histogram", Plane: "proxy", Labels: []string{"kind"}},
	// Proxy: spend outbox.
	{Name: "tollgate_spend_records_sent_total", Type: "counter", Plane: "proxy"},
	{Name: "tollgate_spend_outbox_queued", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_spend_outbox_unacked", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_spend_outbox_last_seq", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_spend_outbox_oldest_unacked_age_seconds", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_spend_outbox_committed_total", Type: "counter", Plane: "proxy"},
	// Proxy: rate-limit leases.
	{Name: "tollgate_limits_degraded", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_limits_lease_proxies", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_limits_leased_scopes", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_limits_lease_grants_total", Type: "counter", Plane: "proxy"},
	{Name: "tollgate_limits_lease_allowances_total", Type: "counter", Plane: "proxy"},
	// Proxy: requests waiting for held budget or a rate-limit grant.
	{Name: "tollgate_limits_waiting", Type: "gauge", Plane: "proxy"},
	{Name: "tollgate_limits_waited_total", Type: "counter", Plane: "proxy"},
	{Name: "tollgate_limits_held_total", Type: "counter", Plane: "proxy"},
	// Proxy: the scheduler's width (package procs); absent when the
	// governor is off (GOMAXPROCS set, one CPU, --adaptive-procs=false).
	{Name: "tollgate_proxy_gomaxprocs_changes_total", Type: "counter", Plane: "proxy", Sparse: true},

	// Control plane: management API.
	{Name: "tollgate_cp_http_requests_total", Type: "counter", Plane: "controlplane", Labels: []string{"method", "route", "code"}},
	{Name: "tollgate_cp_http_request_seconds", Type: "histogram", Plane: "controlplane", Labels: []string{"route"}},
	{Name: "tollgate_cp_grpc_requests_total", Type: "counter", Plane: "controlplane", Labels: []string{"method", "code"}},
	{Name: "tollgate_cp_grpc_request_seconds", Type: "histogram", Plane: "controlplane", Labels: []string{"method"}},
	// Control plane: store.
	{Name: "tollgate_cp_store_seconds", Type: "histogram", Plane: "controlplane", Labels: []string{"op"}},
	{Name: "tollgate_cp_store_errors_total", Type: "counter", Plane: "controlplane", Labels: []string{"op"}, Sparse: true},
	// Control plane: sync, spend, leases.
	{Name: "tollgate_cp_sync_streams", Type: "gauge", Plane: "controlplane"},
	{Name: "tollgate_cp_sync_head_revision", Type: "gauge", Plane: "controlplane"},
	{Name: "tollgate_cp_sync_max_lag_revisions", Type: "gauge", Plane: "controlplane"},
	{Name: "tollgate_cp_sync_oldest_stream_age_seconds", Type: "gauge", Plane: "controlplane"},
	{Name: "tollgate_cp_snapshot_build_seconds", Type: "histogram", Plane: "controlplane"},
	{Name: "tollgate_cp_snapshot_build_errors_total", Type: "counter", Plane: "controlplane"},
	{Name: "tollgate_cp_spend_batches_applied_total", Type: "counter", Plane: "controlplane"},
	{Name: "tollgate_cp_spend_records_applied_total", Type: "counter", Plane: "controlplane"},
	{Name: "tollgate_cp_spend_apply_errors_total", Type: "counter", Plane: "controlplane"},
	{Name: "tollgate_cp_spend_apply_seconds", Type: "histogram", Plane: "controlplane"},
	{Name: "tollgate_cp_lease_grants_total", Type: "counter", Plane: "controlplane"},
	{Name: "tollgate_cp_lease_pools", Type: "gauge", Plane: "controlplane"},
	// Control plane: lifecycle event webhook.
	{Name: "tollgate_cp_webhook_deliveries_total", Type: "counter", Plane: "controlplane", Labels: []string{"type", "result"}, Sparse: true},
	{Name: "tollgate_cp_webhook_delivery_seconds", Type: "histogram", Plane: "controlplane"},
}

// Lookup returns the documented family a sample name belongs to: the name
// itself, or a histogram's _bucket, _sum or _count series.
func Lookup(name string) (Series, bool) {
	for _, s := range Documented {
		if s.Name == name {
			return s, true
		}
		if s.Type == "histogram" {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if s.Name+suf == name {
					return s, true
				}
			}
		}
	}
	return Series{}, false
}

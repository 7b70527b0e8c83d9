package syncserver

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// WithRegistry registers the sync service's metrics on reg: connected
// proxies, head revision and the worst proxy lag, snapshot builds, spend
// batches applied, and lease grants.
func WithRegistry(reg prometheus.Registerer) Option {
	return func(o *options) { o.registry = reg }
}

type metrics struct {
	snapshotBuild  prometheus.Observer
	snapshotErrors prometheus.Counter
	spendApply     prometheus.Observer
	spendBatches   prometheus.Counter
	spendRecords   prometheus.Counter
	spendErrors    prometheus.Counter
}

func newMetrics(s *Server, reg prometheus.Registerer) metrics {
	snapshotBuild := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tollgate_cp_snapshot_build_seconds",
		Help:    "Time to build a full snapshot for proxies that need one.",
		Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	})
	snapshotErrors := prometheus.NewCounter(prometheus.CounterOpts{Name: "tollgate_cp_snapshot_build_errors_total", Help: "Snapshot builds that failed."})
	spendApply := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tollgate_cp_spend_apply_seconds",
		Help:    "Time to apply one group of spend batches (one store transaction).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	})
	spendBatches := prometheus.NewCounter(prometheus.CounterOpts{Name: "tollgate_cp_spend_batches_applied_total", Help: "Spend batches from proxies applied and acked."})
	spendRecords := prometheus.NewCounter(prometheus.CounterOpts{Name: "tollgate_cp_spend_records_applied_total", Help: "Spend records applied (replayed records excluded)."})
	spendErrors := prometheus.NewCounter(prometheus.CounterOpts{Name: "tollgate_cp_spend_apply_errors_total", Help: "Spend groups whose transaction failed (their streams are ended; proxies resend)."})
	m := metrics{snapshotBuild, snapshotErrors, spendApply, spendBatches, spendRecords, spendErrors}
	if reg == nil {
		return m
	}
	reg.MustRegister(snapshotBuild, snapshotErrors, spendApply, spendBatches, spendRecords, spendErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tollgate_cp_sync_streams", Help: "Proxies connected on a sync stream to this control plane."}, func() float64 {
			s.connsMu.Lock()
			defer s.connsMu.Unlock()
			return float64(len(s.conns))
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tollgate_cp_sync_head_revision", Help: "Newest revision this control plane has read from the change log."}, func() float64 {
			_, hi := s.feed.bounds()
			return float64(hi)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tollgate_cp_sync_max_lag_revisions", Help: "Largest gap between the head and the revision a connected proxy reported applied (before its first report: the revision it connected with; 0 with no proxy)."}, func() float64 {
			_, hi := s.feed.bounds()
			lag := int64(0)
			s.connsMu.Lock()
			for c := range s.conns {
				applied := c.applied.Load()
				if applied == 0 {
					applied = c.hello // not reported yet: what it held on connecting
				}
				lag = max(lag, hi-applied)
			}
			s.connsMu.Unlock()
			return float64(max(lag, 0))
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tollgate_cp_sync_oldest_stream_age_seconds", Help: "Age of the longest-lived sync stream (0 with none): streams that keep reconnecting keep it low."}, func() float64 {
			var oldest time.Time
			s.connsMu.Lock()
			for c := range s.conns {
				if oldest.IsZero() || c.connectedAt.Before(oldest) {
					oldest = c.connectedAt
				}
			}
			s.connsMu.Unlock()
			if oldest.IsZero() {
				return 0
			}
			return time.Since(oldest).Seconds()
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tollgate_cp_lease_grants_total", Help: "Rate-limit lease grants sent to proxies."}, func() float64 {
			return float64(s.grants.Load())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tollgate_cp_lease_pools", Help: "Rate-limit windows (scope and window) open in the deployment (Postgres: as of the last 10 s cleanup)."}, func() float64 {
			return float64(s.coord.Pools())
		}),
	)
	return m
}

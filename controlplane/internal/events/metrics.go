package events

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Webhook delivery metrics. Labels are the event type (a fixed set) and the
// result: delivered, failed (unreachable, non-2xx or undeliverable) or
// released (not attempted: the batch ran out of time).
var (
	deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_cp_webhook_deliveries_total",
		Help: "Lifecycle event webhook deliveries by event type and result (delivered, failed, released).",
	}, []string{"type", "result"})
	deliveryTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tollgate_cp_webhook_delivery_seconds",
		Help:    "Time of one webhook POST (attempted deliveries only).",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
)

// Collectors are the package's metrics, for the control plane's registry.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{deliveries, deliveryTime}
}

func countDelivery(typ string, err error, released bool, took time.Duration) {
	switch {
	case released:
		deliveries.WithLabelValues(typ, "released").Inc()
	case err != nil:
		deliveries.WithLabelValues(typ, "failed").Inc()
	default:
		deliveries.WithLabelValues(typ, "delivered").Inc()
	}
	if took > 0 {
		deliveryTime.Observe(took.Seconds())
	}
}

package proxy

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate-gw/tollgate/dataplane/internal/enforce"
)

// metrics holds every series pre-resolved, so counting on the hot path is a
// slice index and an atomic add, never a label lookup.
type metrics struct {
	requests [enforce.NumRoutes][numOutcomes]prometheus.Counter
	decision prometheus.Histogram
	upstream [enforce.NumRoutes]prometheus.Observer
	byModel  *prometheus.CounterVec
}

// statusClasses label tollgate_proxy_model_requests_total.
var statusClasses = [...]string{"2xx", "3xx", "4xx", "5xx"}

// modelCounters are one model's series, resolved once per deployment
// object (package target cache), so counting is an index and an add.
type modelCounters [enforce.NumRoutes][len(statusClasses)]prometheus.Counter

func (m *metrics) modelCounters(model string) *modelCounters {
	var mc modelCounters
	for r := 1; r < enforce.NumRoutes; r++ {
		for i, cls := range statusClasses {
			mc[r][i] = m.byModel.WithLabelValues(routeLabel(enforce.Route(r)), model, cls)
		}
	}
	return &mc
}

func (mc *modelCounters) count(route enforce.Route, status int) {
	i := status/100 - 2
	if i < 0 || i >= len(statusClasses) {
		i = 3
	}
	mc[route][i].Inc()
}

// routeLabel is the route label; index 0 is any path that is not a route.
func routeLabel(r enforce.Route) string {
	if r == 0 {
		return "other"
	}
	return r.Path()
}

func newMetrics(reg prometheus.Registerer) *metrics {
	requests := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_proxy_requests_total",
		Help: "Proxy requests by route (without /v1) and outcome.",
	}, []string{"route", "outcome"}))
	decision := register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "tollgate_proxy_decision_seconds",
		Help: "Time to decide a request (checks and upstream plan), excluding reading the body.",
		Buckets: []float64{
			250e-9, 500e-9, 1e-6, 2e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 1e-3, 5e-3,
		},
	}))
	upstream := register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tollgate_proxy_upstream_seconds",
		Help:    "Time from sending a request upstream to receiving its response headers.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 14), // 5 ms .. ~41 s
	}, []string{"route"}))
	byModel := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tollgate_proxy_model_requests_total",
		Help: "Requests that passed the decision (a configured model), by route, model name and status class of the answer (rate-limit and budget refusals included).",
	}, []string{"route", "model", "status"}))
	m := &metrics{decision: decision, byModel: byModel}
	for r := 0; r < enforce.NumRoutes; r++ {
		for o := 0; o < numOutcomes; o++ {
			m.requests[r][o] = requests.WithLabelValues(routeLabel(enforce.Route(r)), outcomeName(o))
		}
		if r > 0 {
			m.upstream[r] = upstream.WithLabelValues(routeLabel(enforce.Route(r)))
		}
	}
	return m
}

// register registers c, or returns the collector already registered under
// the same descriptor (New called twice on one registry).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}

func (m *metrics) count(r enforce.Route, outcome int) {
	m.requests[r][outcome].Inc()
}

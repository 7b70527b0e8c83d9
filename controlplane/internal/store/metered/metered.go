// Package metered wraps a store.Store with Prometheus latency and error
// metrics: tollgate_cp_store_seconds{op} and tollgate_cp_store_errors_total{op}.
//
// op is a fixed, small set: the Store's own methods (tx for ReadWriteTx,
// head, changes, oldest, snapshot, ping) and the Reader calls the API makes
// most (get_key, get_key_by_hash, list_keys, get_team, get_user,
// list_spend_logs, get_settings); other Reader calls pass through
// unmeasured. ErrNotFound and conflicts are answers, not errors, and are not
// counted as errors; a cancelled context is not either.
package metered

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

type metrics struct {
	dur  *prometheus.HistogramVec
	errs *prometheus.CounterVec
}

// Wrap returns st with every call measured on reg.
func Wrap(st store.Store, reg prometheus.Registerer) store.Store {
	m := &metrics{
		dur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tollgate_cp_store_seconds",
			Help:    "Store call latency by operation (tx: a whole read-write transaction, retries included).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5},
		}, []string{"op"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_cp_store_errors_total",
			Help: "Store calls that failed, by operation (not found, conflicts and cancellations excluded).",
		}, []string{"op"}),
	}
	reg.MustRegister(m.dur, m.errs)
	return &meteredStore{Store: st, m: m}
}

func (m *metrics) observe(op string, start time.Time, err error) {
	m.dur.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err == nil || errors.Is(err, store.ErrNotFound) || errors.Is(err, context.Canceled) {
		return
	}
	var ce *store.ConflictError
	if errors.As(err, &ce) {
		return
	}
	m.errs.WithLabelValues(op).Inc()
}

type meteredStore struct {
	store.Store
	m *metrics
}

func (s *meteredStore) Read() store.Reader { return &reader{Reader: s.Store.Read(), m: s.m} }

func (s *meteredStore) ReadWriteTx(ctx context.Context, fn func(ctx context.Context, tx store.Tx) error) error {
	start := time.Now()
	err := s.Store.ReadWriteTx(ctx, fn)
	s.m.observe("tx", start, err)
	return err
}

func (s *meteredStore) Head(ctx context.Context) (int64, error) {
	start := time.Now()
	h, err := s.Store.Head(ctx)
	s.m.observe("head", start, err)
	return h, err
}

func (s *meteredStore) Changes(ctx context.Context, after int64, limit int) ([]store.ChangeSet, error) {
	start := time.Now()
	cs, err := s.Store.Changes(ctx, after, limit)
	s.m.observe("changes", start, err)
	return cs, err
}

func (s *meteredStore) Oldest(ctx context.Context) (int64, error) {
	start := time.Now()
	o, err := s.Store.Oldest(ctx)
	s.m.observe("oldest", start, err)
	return o, err
}

func (s *meteredStore) Snapshot(ctx context.Context, fn func(revision int64, r store.Reader) error) error {
	start := time.Now()
	err := s.Store.Snapshot(ctx, fn)
	s.m.observe("snapshot", start, err)
	return err
}

func (s *meteredStore) Ping(ctx context.Context) error {
	start := time.Now()
	err := s.Store.Ping(ctx)
	s.m.observe("ping", start, err)
	return err
}

// Unwrap returns the wrapped store.
func (s *meteredStore) Unwrap() store.Store { return s.Store }

type reader struct {
	store.Reader
	m *metrics
}

func (r *reader) GetKey(ctx context.Context, id string) (store.Key, error) {
	start := time.Now()
	k, err := r.Reader.GetKey(ctx, id)
	r.m.observe("get_key", start, err)
	return k, err
}

func (r *reader) GetKeyByHash(ctx context.Context, h string) (store.Key, error) {
	start := time.Now()
	k, err := r.Reader.GetKeyByHash(ctx, h)
	r.m.observe("get_key_by_hash", start, err)
	return k, err
}

func (r *reader) ListKeys(ctx context.Context, f store.KeyFilter) ([]store.Key, int, error) {
	start := time.Now()
	ks, n, err := r.Reader.ListKeys(ctx, f)
	r.m.observe("list_keys", start, err)
	return ks, n, err
}

func (r *reader) GetTeam(ctx context.Context, id string) (store.Team, error) {
	start := time.Now()
	t, err := r.Reader.GetTeam(ctx, id)
	r.m.observe("get_team", start, err)
	return t, err
}

func (r *reader) GetUser(ctx context.Context, id string) (store.User, error) {
	start := time.Now()
	u, err := r.Reader.GetUser(ctx, id)
	r.m.observe("get_user", start, err)
	return u, err
}

func (r *reader) ListSpendLogs(ctx context.Context, f store.SpendLogFilter) ([]store.SpendLog, int, error) {
	start := time.Now()
	ls, n, err := r.Reader.ListSpendLogs(ctx, f)
	r.m.observe("list_spend_logs", start, err)
	return ls, n, err
}

func (r *reader) GetSettings(ctx context.Context) (store.Settings, error) {
	start := time.Now()
	st, err := r.Reader.GetSettings(ctx)
	r.m.observe("get_settings", start, err)
	return st, err
}

// SpendReport forwards to the wrapped reader (both backends implement
// store.SpendReporter; the API asks for it with a type assertion).
func (r *reader) SpendReport(ctx context.Context, f store.SpendLogFilter, by store.SpendGroup) ([]store.SpendDay, error) {
	rep, ok := r.Reader.(store.SpendReporter)
	if !ok {
		return nil, fmt.Errorf("metered: the store cannot report spend")
	}
	start := time.Now()
	rows, err := rep.SpendReport(ctx, f, by)
	r.m.observe("spend_report", start, err)
	return rows, err
}

var _ store.SpendReporter = (*reader)(nil)

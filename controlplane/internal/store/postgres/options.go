package postgres

import (
	"log/slog"
	"time"
)

// Option configures Open.
type Option func(*options)

type options struct {
	logger          *slog.Logger
	pollInterval    time.Duration
	standbyInterval time.Duration
	maxAttempts     int
	maxConns        int32
	notifyInTx      bool
}

func defaultOptions() options {
	return options{
		logger:          slog.Default(),
		pollInterval:    200 * time.Millisecond,
		standbyInterval: 500 * time.Millisecond,
		maxAttempts:     20,
		maxConns:        16,
	}
}

// WithLogger sets the logger for background work (sequencer, listener).
// Database URLs and key material are never logged.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithPollInterval sets how often the sequencer and subscribers look for new
// changes when no notification arrived (default 200ms). Notifications make
// the usual latency a few milliseconds; polling bounds it when they are lost.
func WithPollInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.pollInterval = d
		}
	}
}

// WithFailoverInterval sets how often a standby replica tries to become the
// sequencer (default 500ms). It bounds how long revisions stall after the
// sequencing replica dies.
func WithFailoverInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.standbyInterval = d
		}
	}
}

// WithMaxAttempts bounds how many times ReadWriteTx runs its callback when
// transactions conflict (default 20).
func WithMaxAttempts(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.maxAttempts = n
		}
	}
}

// WithMaxConns sets the pool size when the database URL does not set
// pool_max_conns (default 16). The sequencer and the listener use two more
// connections outside the pool.
func WithMaxConns(n int32) Option {
	return func(o *options) {
		if n > 0 {
			o.maxConns = n
		}
	}
}

package postgres

// Hooks for the external tests (package postgres_test).

// IsLeader reports whether this replica currently assigns revisions.
func (s *Store) IsLeader() bool { return s.leader.Load() }

// WithNotifyInTx makes writers NOTIFY inside their transaction instead of
// after commit; the benchmark compares both.
func WithNotifyInTx() Option { return func(o *options) { o.notifyInTx = true } }

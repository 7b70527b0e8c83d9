package embedded

import (
	"bytes"
	"context"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// The SaaS entities (store/saas.go). Listings walk a per-team or per-job
// prefix keyed by an insertion sequence; no change records.

func (r *reader) GetModelGroup(_ context.Context, name string) (g store.ModelGroup, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		g, err = get[store.ModelGroup](tx, bucketModelGroups, "model_group", name)
		return err
	})
	return g, err
}

func (r *reader) ListModelGroups(_ context.Context) (gs []store.ModelGroup, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		gs = []store.ModelGroup{}
		return tx.Bucket(bucketModelGroups).ForEach(func(k, v []byte) error {
			g, err := decode[store.ModelGroup]("model_group", k, v)
			if err == nil {
				gs = append(gs, g)
			}
			return err
		})
	})
	return gs, err
}

func (r *reader) GetJob(_ context.Context, jobID string) (j store.Job, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		j, err = get[store.Job](tx, bucketJobs, "job", jobID)
		return err
	})
	return j, err
}

// walkBack visits the values under prefix newest first (highest sequence
// first), counting all of them and calling fn for the page's.
func walkBack(b *bolt.Bucket, prefix []byte, p store.Page, fn func(k, v []byte) error) (total int, err error) {
	p = p.Normalize()
	skip, taken := p.Offset(), 0
	c := b.Cursor()
	// Seek past the prefix, then step back into it.
	end := append(bytes.Clone(prefix), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	k, v := c.Seek(end)
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Prev() {
		total++
		if skip > 0 {
			skip--
			continue
		}
		if taken < p.Size {
			taken++
			if err := fn(k, v); err != nil {
				return 0, err
			}
		}
	}
	return total, nil
}

func (r *reader) ListJobs(_ context.Context, f store.JobFilter) (jobs []store.Job, total int, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		jobs = []store.Job{}
		var err error
		total, err = walkBack(tx.Bucket(bucketJobsTeam), lp(f.TeamID), f.Page, func(_, id []byte) error {
			j, err := get[store.Job](tx, bucketJobs, "job", string(id))
			if err == nil {
				jobs = append(jobs, j)
			}
			return err
		})
		return err
	})
	return jobs, total, err
}

func (r *reader) ListJobCalls(_ context.Context, jobID string) (calls []store.JobCall, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		calls = []store.JobCall{}
		prefix := lp(jobID)
		c := tx.Bucket(bucketJobCalls).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			jc, err := decode[store.JobCall]("job_call", k, v)
			if err != nil {
				return err
			}
			calls = append(calls, jc)
		}
		return nil
	})
	return calls, err
}

func (r *reader) ListCreditTransactions(_ context.Context, teamID string, p store.Page) (out []store.CreditTransaction, total int, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		out = []store.CreditTransaction{}
		var err error
		total, err = walkBack(tx.Bucket(bucketCreditTxns), lp(teamID), p, func(k, v []byte) error {
			c, err := decode[store.CreditTransaction]("credit_transaction", k, v)
			if err == nil {
				out = append(out, c)
			}
			return err
		})
		return err
	})
	return out, total, err
}

func (t *tx) CreateModelGroup(_ context.Context, g store.ModelGroup) error {
	if err := t.check(); err != nil {
		return err
	}
	if err := checkFields("model_group", "*group_name", g.Name); err != nil {
		return err
	}
	if t.btx.Bucket(bucketModelGroups).Get([]byte(g.Name)) != nil {
		return &store.ConflictError{Field: "group_name"}
	}
	doc, err := marshal("model_group", g)
	if err != nil {
		return err
	}
	return t.put(bucketModelGroups, []byte(g.Name), doc)
}

// seq returns the next insertion sequence of bucket, big-endian.
func (t *tx) seq(bucket []byte) ([]byte, error) {
	n, err := t.btx.Bucket(bucket).NextSequence()
	if err != nil {
		return nil, t.fail(err)
	}
	return u64(n), nil
}

func (t *tx) CreateJob(_ context.Context, j store.Job) error {
	if err := t.check(); err != nil {
		return err
	}
	if err := checkFields("job", "*job_id", j.JobID, "*team_id", j.TeamID); err != nil {
		return err
	}
	if t.btx.Bucket(bucketJobs).Get([]byte(j.JobID)) != nil {
		return &store.ConflictError{Field: "job_id"}
	}
	doc, err := marshal("job", j)
	if err != nil {
		return err
	}
	s, err := t.seq(bucketJobsTeam)
	if err != nil {
		return err
	}
	if err := t.put(bucketJobs, []byte(j.JobID), doc); err != nil {
		return err
	}
	return t.put(bucketJobsTeam, join(lp(j.TeamID), s), []byte(j.JobID))
}

func (t *tx) UpdateJob(_ context.Context, j store.Job) error {
	if err := t.check(); err != nil {
		return err
	}
	old, err := get[store.Job](t.btx, bucketJobs, "job", j.JobID)
	if err != nil {
		return err
	}
	if old.TeamID != j.TeamID {
		// The team index is keyed by the team; a job never moves.
		j.TeamID = old.TeamID
	}
	doc, err := marshal("job", j)
	if err != nil {
		return err
	}
	return t.put(bucketJobs, []byte(j.JobID), doc)
}

func (t *tx) AddJobCall(_ context.Context, c store.JobCall) error {
	if err := t.check(); err != nil {
		return err
	}
	if err := checkFields("job_call", "*call_id", c.CallID, "*job_id", c.JobID); err != nil {
		return err
	}
	if t.btx.Bucket(bucketJobCallIDs).Get([]byte(c.CallID)) != nil {
		return &store.ConflictError{Field: "call_id"}
	}
	doc, err := marshal("job_call", c)
	if err != nil {
		return err
	}
	s, err := t.seq(bucketJobCalls)
	if err != nil {
		return err
	}
	if err := t.put(bucketJobCallIDs, []byte(c.CallID), empty); err != nil {
		return err
	}
	return t.put(bucketJobCalls, join(lp(c.JobID), s), doc)
}

func (t *tx) AddCreditTransaction(_ context.Context, c store.CreditTransaction) error {
	if err := t.check(); err != nil {
		return err
	}
	if err := checkFields("credit_transaction", "*transaction_id", c.TransactionID, "*team_id", c.TeamID); err != nil {
		return err
	}
	if t.btx.Bucket(bucketCreditTxIDs).Get([]byte(c.TransactionID)) != nil {
		return &store.ConflictError{Field: "transaction_id"}
	}
	doc, err := marshal("credit_transaction", c)
	if err != nil {
		return err
	}
	s, err := t.seq(bucketCreditTxns)
	if err != nil {
		return err
	}
	if err := t.put(bucketCreditTxIDs, []byte(c.TransactionID), empty); err != nil {
		return err
	}
	return t.put(bucketCreditTxns, join(lp(c.TeamID), s), doc)
}

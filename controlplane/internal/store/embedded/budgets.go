package embedded

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
)

// Budgets (store/budgets.go): one bucket, budget_id → Budget JSON; no
// change records. BudgetRefs has no index: it scans keys, end users,
// organizations and teams, decoding only the documents that contain the
// encoded budget id (a budget update is an operator action, rare next to
// the writes an index would tax).

func (r *reader) GetBudget(_ context.Context, id string) (b store.Budget, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		b, err = get[store.Budget](tx, bucketBudgets, "budget", id)
		return err
	})
	return b, err
}

func (r *reader) ListBudgets(_ context.Context) (bs []store.Budget, err error) {
	err = r.view(func(tx *bolt.Tx) error {
		bs = []store.Budget{}
		return tx.Bucket(bucketBudgets).ForEach(func(k, v []byte) error {
			b, err := decode[store.Budget]("budget", k, v)
			if err == nil {
				bs = append(bs, b)
			}
			return err
		})
	})
	slices.SortFunc(bs, func(a, b store.Budget) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.BudgetID, b.BudgetID)
	})
	return bs, err
}

func (r *reader) BudgetRefs(ctx context.Context, id string) (refs store.BudgetRefs, err error) {
	refs = store.BudgetRefs{Keys: []string{}, EndUsers: []string{}, Organizations: []string{}, TeamMembers: []store.TeamMemberRef{}}
	if id == "" {
		return refs, nil
	}
	q, err := json.Marshal(id)
	if err != nil {
		return refs, err
	}
	needle := append([]byte(`"budget_id":`), q...)
	scan := func(tx *bolt.Tx, bucket []byte, fn func(k, v []byte) error) error {
		n := 0
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			if n++; n%ctxEvery == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if !bytes.Contains(v, needle) {
				return nil
			}
			return fn(k, v)
		})
	}
	err = r.view(func(tx *bolt.Tx) error {
		err := scan(tx, bucketKeys, func(k, v []byte) error {
			key, err := decode[store.Key]("key", k, v)
			if err == nil && key.BudgetID == id {
				refs.Keys = append(refs.Keys, key.TokenID)
			}
			return err
		})
		if err != nil {
			return err
		}
		err = scan(tx, bucketEndUsers, func(k, v []byte) error {
			e, err := decode[store.EndUser]("end user", k, v)
			if err == nil && e.BudgetID == id {
				refs.EndUsers = append(refs.EndUsers, e.EndUserID)
			}
			return err
		})
		if err != nil {
			return err
		}
		err = scan(tx, bucketOrgs, func(k, v []byte) error {
			o, err := decode[store.Organization]("organization", k, v)
			if err == nil && o.BudgetID == id {
				refs.Organizations = append(refs.Organizations, o.OrganizationID)
			}
			return err
		})
		if err != nil {
			return err
		}
		return scan(tx, bucketTeams, func(k, v []byte) error {
			t, err := decode[store.Team]("team", k, v)
			if err != nil {
				return err
			}
			for _, m := range t.Members {
				if m.BudgetID == id {
					refs.TeamMembers = append(refs.TeamMembers, store.TeamMemberRef{TeamID: t.TeamID, UserID: m.UserID})
				}
			}
			return nil
		})
	})
	slices.Sort(refs.Keys)
	slices.Sort(refs.EndUsers)
	slices.Sort(refs.Organizations)
	slices.SortFunc(refs.TeamMembers, func(a, b store.TeamMemberRef) int {
		if c := strings.Compare(a.TeamID, b.TeamID); c != 0 {
			return c
		}
		return strings.Compare(a.UserID, b.UserID)
	})
	return refs, err
}

func (t *tx) CreateBudget(_ context.Context, b store.Budget) error {
	if err := t.check(); err != nil {
		return err
	}
	if err := checkFields("budget", "*budget_id", b.BudgetID); err != nil {
		return err
	}
	if t.btx.Bucket(bucketBudgets).Get([]byte(b.BudgetID)) != nil {
		return &store.ConflictError{Field: "budget_id"}
	}
	doc, err := marshal("budget", b)
	if err != nil {
		return err
	}
	return t.put(bucketBudgets, []byte(b.BudgetID), doc)
}

func (t *tx) UpdateBudget(_ context.Context, b store.Budget) error {
	if err := t.check(); err != nil {
		return err
	}
	old, err := get[store.Budget](t.btx, bucketBudgets, "budget", b.BudgetID)
	if err != nil {
		return err
	}
	b.CreatedAt, b.CreatedBy = old.CreatedAt, old.CreatedBy
	doc, err := marshal("budget", b)
	if err != nil {
		return err
	}
	return t.put(bucketBudgets, []byte(b.BudgetID), doc)
}

func (t *tx) DeleteBudget(_ context.Context, id string) error {
	if err := t.check(); err != nil {
		return err
	}
	if id == "" || t.btx.Bucket(bucketBudgets).Get([]byte(id)) == nil {
		return store.ErrNotFound
	}
	return t.del(bucketBudgets, []byte(id))
}

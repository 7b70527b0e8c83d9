package api

import (
	"context"
	"errors"
	"slices"

	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

// customerService manages end users (/customer/*, /end_user/*). Every write
// goes through the store's end-user writes, which record a change, so the
// proxies enforce the new budget or block within a sync round trip.
type customerService struct {
	adminv1.UnimplementedCustomerServiceServer
	s *Server
}

const auditEndUser = "end_user"

func customerOut(e *store.EndUser) *adminv1.Customer {
	out := &adminv1.Customer{UserId: e.EndUserID, Spend: money.ToUSD(e.Spend), Alias: e.Alias, MaxBudget: usdValue(e.MaxBudget),
		Blocked: e.Blocked, CreatedAt: timestamppb.New(e.CreatedAt), UpdatedAt: timestamppb.New(e.UpdatedAt), BudgetId: e.BudgetID}
	if e.BudgetID != "" {
		out.LitellmBudgetTable = budgetTableOf(e.BudgetID, store.Limits{MaxBudget: e.MaxBudget, RPMLimit: e.RPMLimit, TPMLimit: e.TPMLimit})
	}
	return out
}

// unsupportedFields refuses the LiteLLM end-user fields Tollgate does not
// take directly: budget_duration (end users have no budget period),
// rpm_limit and tpm_limit (which come from a budget). Silently ignoring a
// limit would leave the end user unlimited. budget_id links a budget whose
// max_budget, rpm_limit and tpm_limit become the end user's (budgets.go).
func unsupportedFields(req interface {
	GetBudgetId() string
	GetBudgetDuration() string
	GetRpmLimit() *wrapperspb.Int64Value
	GetTpmLimit() *wrapperspb.Int64Value
}) error {
	if err := checkID("budget_id", req.GetBudgetId(), false); err != nil {
		return err
	}
	switch {
	case req.GetBudgetDuration() != "":
		return badRequest("budget_duration", "budget_duration is not supported on end users: their spend has no budget period")
	case req.GetRpmLimit() != nil:
		return badRequest("rpm_limit", "rpm_limit is not set on end users directly: set it on a budget (/budget/new) and link it with budget_id")
	case req.GetTpmLimit() != nil:
		return badRequest("tpm_limit", "tpm_limit is not set on end users directly: set it on a budget (/budget/new) and link it with budget_id")
	}
	return nil
}

func (cs *customerService) NewCustomer(ctx context.Context, req *adminv1.NewCustomerRequest) (*adminv1.Customer, error) {
	s := cs.s
	c, err := s.authorize(ctx, authz.CustomerNew, authz.Target{})
	if err != nil {
		return nil, err
	}
	if err := checkID("user_id", req.GetUserId(), true); err != nil {
		return nil, err
	}
	if err := checkID("alias", req.GetAlias(), false); err != nil {
		return nil, err
	}
	if err := unsupportedFields(req); err != nil {
		return nil, err
	}
	budget, err := usdPtr("max_budget", req.GetMaxBudget())
	if err != nil {
		return nil, err
	}
	now := s.now()
	e := store.EndUser{EndUserID: req.GetUserId(), Alias: req.GetAlias(), MaxBudget: budget, Blocked: req.GetBlocked(), CreatedAt: now, UpdatedAt: now}
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		if _, err := tx.GetEndUser(ctx, e.EndUserID); err == nil {
			return badRequest("user_id", "end user "+e.EndUserID+" already exists")
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		e.BudgetID = ""
		if err := linkEndUser(ctx, tx, &e, req.GetBudgetId(), budget != nil); err != nil {
			return err
		}
		if err := tx.PutEndUser(ctx, e); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, "created", auditEndUser, e.EndUserID, nil, customerOut(&e))
	})
	if err != nil {
		return nil, storeError(ctx, err, "end user")
	}
	return customerOut(&e), nil
}

func (cs *customerService) UpdateCustomer(ctx context.Context, req *adminv1.UpdateCustomerRequest) (*adminv1.Customer, error) {
	s := cs.s
	c, err := s.authorize(ctx, authz.CustomerUpdate, authz.Target{})
	if err != nil {
		return nil, err
	}
	if err := checkID("user_id", req.GetUserId(), true); err != nil {
		return nil, err
	}
	if req.Alias != nil {
		if err := checkID("alias", req.GetAlias().GetValue(), false); err != nil {
			return nil, err
		}
	}
	if err := unsupportedFields(req); err != nil {
		return nil, err
	}
	budget, err := usdPtr("max_budget", req.GetMaxBudget())
	if err != nil {
		return nil, err
	}
	var out store.EndUser
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		e, err := tx.GetEndUser(ctx, req.GetUserId())
		if errors.Is(err, store.ErrNotFound) {
			return notFound("user_id", "end user "+req.GetUserId()+" not found")
		} else if err != nil {
			return err
		}
		before := customerOut(&e)
		if req.Alias != nil {
			e.Alias = req.GetAlias().GetValue()
		}
		if err := linkEndUser(ctx, tx, &e, req.GetBudgetId(), budget != nil); err != nil {
			return err
		}
		if budget != nil {
			e.MaxBudget = budget
		}
		if req.Blocked != nil {
			e.Blocked = req.GetBlocked().GetValue()
		}
		e.UpdatedAt = s.now()
		if err := tx.PutEndUser(ctx, e); err != nil {
			return err
		}
		out = e
		return s.audit(ctx, tx, c, "updated", auditEndUser, e.EndUserID, before, customerOut(&e))
	})
	if err != nil {
		return nil, storeError(ctx, err, "end user")
	}
	return customerOut(&out), nil
}

func checkIDs(ids []string) error {
	if len(ids) == 0 || len(ids) > maxListLen {
		return badRequest("user_ids", "user_ids must list 1 to 1000 end users")
	}
	for _, id := range ids {
		if err := checkID("user_ids", id, true); err != nil {
			return err
		}
	}
	return nil
}

// DeleteCustomers is all-or-nothing, like the other multi-object deletes.
func (cs *customerService) DeleteCustomers(ctx context.Context, req *adminv1.CustomerIDsRequest) (*adminv1.DeleteResponse, error) {
	s := cs.s
	c, err := s.authorize(ctx, authz.CustomerDelete, authz.Target{})
	if err != nil {
		return nil, err
	}
	if err := checkIDs(req.GetUserIds()); err != nil {
		return nil, err
	}
	var deleted []string
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		deleted = deleted[:0]
		for _, id := range req.GetUserIds() {
			e, err := tx.GetEndUser(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				if slices.Contains(deleted, id) {
					continue // named twice
				}
				return notFound("user_ids", "end user "+id+" not found")
			} else if err != nil {
				return err
			}
			if err := tx.DeleteEndUser(ctx, id); err != nil {
				return err
			}
			if err := s.audit(ctx, tx, c, "deleted", auditEndUser, id, customerOut(&e), nil); err != nil {
				return err
			}
			deleted = append(deleted, id)
		}
		return nil
	})
	if err != nil {
		return nil, storeError(ctx, err, "end user")
	}
	return &adminv1.DeleteResponse{DeletedIds: deleted}, nil
}

// BlockCustomers blocks end users, creating those not seen yet (an operator
// may block a customer before its first request, as LiteLLM allows).
func (cs *customerService) BlockCustomers(ctx context.Context, req *adminv1.CustomerIDsRequest) (*adminv1.CustomersResponse, error) {
	return cs.setBlocked(ctx, req, true)
}

// UnblockCustomers unblocks end users; an unknown one is a 404 and nothing
// changes.
func (cs *customerService) UnblockCustomers(ctx context.Context, req *adminv1.CustomerIDsRequest) (*adminv1.CustomersResponse, error) {
	return cs.setBlocked(ctx, req, false)
}

func (cs *customerService) setBlocked(ctx context.Context, req *adminv1.CustomerIDsRequest, blocked bool) (*adminv1.CustomersResponse, error) {
	s := cs.s
	az, action := authz.CustomerUnblock, "unblocked"
	if blocked {
		az, action = authz.CustomerBlock, "blocked"
	}
	c, err := s.authorize(ctx, az, authz.Target{})
	if err != nil {
		return nil, err
	}
	if err := checkIDs(req.GetUserIds()); err != nil {
		return nil, err
	}
	var out []*adminv1.Customer
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		out = out[:0]
		for _, id := range req.GetUserIds() {
			now := s.now()
			e, err := tx.GetEndUser(ctx, id)
			var before *adminv1.Customer
			switch {
			case errors.Is(err, store.ErrNotFound) && blocked:
				e = store.EndUser{EndUserID: id, CreatedAt: now}
			case errors.Is(err, store.ErrNotFound):
				return notFound("user_ids", "end user "+id+" not found")
			case err != nil:
				return err
			default:
				before = customerOut(&e)
			}
			e.Blocked, e.UpdatedAt = blocked, now
			if err := tx.PutEndUser(ctx, e); err != nil {
				return err
			}
			after := customerOut(&e)
			if err := s.audit(ctx, tx, c, action, auditEndUser, id, before, after); err != nil {
				return err
			}
			out = append(out, after)
		}
		return nil
	})
	if err != nil {
		return nil, storeError(ctx, err, "end user")
	}
	return &adminv1.CustomersResponse{Customers: out}, nil
}

// ListCustomers answers a JSON array (LiteLLM's /customer/list), in id
// order, a page at a time (page_size ≤ 100, default 50).
func (cs *customerService) ListCustomers(ctx context.Context, req *adminv1.ListCustomersRequest) (*adminv1.CustomersResponse, error) {
	s := cs.s
	if _, err := s.authorize(ctx, authz.CustomerList, authz.Target{}); err != nil {
		return nil, err
	}
	if req.GetPage() < 0 || req.GetPageSize() < 0 {
		return nil, badRequest("page", "page and page_size must not be negative")
	}
	es, _, err := s.store.Read().ListEndUsers(ctx, store.Page{Page: int(req.GetPage()), Size: int(req.GetPageSize())})
	if err != nil {
		return nil, storeError(ctx, err, "end user")
	}
	out := make([]*adminv1.Customer, len(es))
	for i := range es {
		out[i] = customerOut(&es[i])
	}
	return &adminv1.CustomersResponse{Customers: out}, nil
}

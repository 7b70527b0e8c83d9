package api

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

type modelService struct {
	adminv1.UnimplementedModelServiceServer
	s *Server
}

func price(param string, a, b *wrapperspb.DoubleValue) (int64, bool, error) {
	v := a
	if b != nil {
		v = b // model_info wins, as in LiteLLM
	}
	if v == nil {
		return 0, false, nil
	}
	p, err := money.PriceFromUSD(v.GetValue())
	if err != nil {
		return 0, true, badRequest(param, param+" must be a finite, non-negative number of USD per token")
	}
	return p, true, nil
}

// applyDeployment validates req onto m; create requires model_name and model.
func applyDeployment(req *adminv1.ModelDeployment, m *store.Model, create bool) error {
	lp, mi := req.GetLitellmParams(), req.GetModelInfo()
	if create || req.GetModelName() != "" {
		if err := checkID("model_name", req.GetModelName(), true); err != nil {
			return err
		}
		m.ModelName = req.GetModelName()
	}
	if create || lp.GetModel() != "" {
		if err := checkID("litellm_params.model", lp.GetModel(), true); err != nil {
			return err
		}
		m.UpstreamModel = lp.GetModel()
	}
	if b := lp.GetApiBase(); b != "" {
		if len(b) > 2048 || !(strings.HasPrefix(b, "http://") || strings.HasPrefix(b, "https://")) {
			return badRequest("litellm_params.api_base", "litellm_params.api_base must be an http(s) URL")
		}
		m.APIBase = b
	}
	if k := lp.GetApiKey(); k != "" && k != "********" {
		if len(k) > 4096 {
			return badRequest("litellm_params.api_key", "litellm_params.api_key is too long")
		}
		m.APIKey = k
	}
	if v := lp.GetApiVersion(); v != "" {
		m.APIVersion = v
	}
	if p, ok, err := price("input_cost_per_token", lp.GetInputCostPerToken(), mi.GetInputCostPerToken()); err != nil {
		return err
	} else if ok {
		m.InputCostPerToken = p
	}
	if p, ok, err := price("output_cost_per_token", lp.GetOutputCostPerToken(), mi.GetOutputCostPerToken()); err != nil {
		return err
	} else if ok {
		m.OutputCostPerToken = p
	}
	var err error
	if lp.GetRpm() != nil {
		if m.RPM, err = limitPtr("litellm_params.rpm", lp.GetRpm()); err != nil {
			return err
		}
	}
	if lp.GetTpm() != nil {
		if m.TPM, err = limitPtr("litellm_params.tpm", lp.GetTpm()); err != nil {
			return err
		}
	}
	if len(mi.GetAccessGroups()) > 0 {
		if m.AccessGroups, err = strList("model_info.access_groups", mi.GetAccessGroups()); err != nil {
			return err
		}
	}
	return applyUnitPrices(mi, lp, m)
}

func (ms *modelService) NewModel(ctx context.Context, req *adminv1.ModelDeployment) (*adminv1.ModelDeployment, error) {
	s := ms.s
	c, err := s.authorize(ctx, authz.ModelNew, authz.Target{})
	if err != nil {
		return nil, err
	}
	now := s.now()
	m := store.Model{ID: req.GetModelInfo().GetId(), CreatedAt: now, UpdatedAt: now}
	if err := checkID("model_info.id", m.ID, false); err != nil {
		return nil, err
	}
	if m.ID == "" {
		m.ID = keys.NewID()
	}
	if err := applyDeployment(req, &m, true); err != nil {
		return nil, err
	}
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		if err := tx.CreateModel(ctx, m); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, "created", "model", m.ID, nil, modelOut(&m))
	})
	if err != nil {
		return nil, storeError(ctx, err, "model")
	}
	return modelOut(&m), nil
}

func (ms *modelService) UpdateModel(ctx context.Context, req *adminv1.ModelDeployment) (*adminv1.ModelDeployment, error) {
	s := ms.s
	c, err := s.authorize(ctx, authz.ModelUpdate, authz.Target{})
	if err != nil {
		return nil, err
	}
	id := req.GetModelInfo().GetId()
	if err := checkID("model_info.id", id, true); err != nil {
		return nil, err
	}
	var out store.Model
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		m, err := tx.GetModel(ctx, id)
		if err != nil {
			return err
		}
		if m.FromConfig {
			return badRequest("model_info.id", "model "+id+" is defined in the config file; change it there")
		}
		before := m
		if err := applyDeployment(req, &m, false); err != nil {
			return err
		}
		m.UpdatedAt = s.now()
		if err := tx.UpdateModel(ctx, m); err != nil {
			return err
		}
		out = m
		return s.audit(ctx, tx, c, "updated", "model", id, modelOut(&before), modelOut(&m))
	})
	if err != nil {
		return nil, storeError(ctx, err, "model")
	}
	return modelOut(&out), nil
}

func (ms *modelService) DeleteModel(ctx context.Context, req *adminv1.DeleteModelRequest) (*adminv1.DeleteResponse, error) {
	s := ms.s
	c, err := s.authorize(ctx, authz.ModelDelete, authz.Target{})
	if err != nil {
		return nil, err
	}
	if err := checkID("id", req.GetId(), true); err != nil {
		return nil, err
	}
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		m, err := tx.GetModel(ctx, req.GetId())
		if err != nil {
			return err
		}
		if m.FromConfig {
			return badRequest("id", "model "+m.ID+" is defined in the config file; remove it there")
		}
		if err := tx.DeleteModel(ctx, m.ID); err != nil {
			return err
		}
		return s.audit(ctx, tx, c, "deleted", "model", m.ID, modelOut(&m), nil)
	})
	if err != nil {
		return nil, storeError(ctx, err, "model")
	}
	return &adminv1.DeleteResponse{DeletedIds: []string{req.GetId()}}, nil
}

func (ms *modelService) GetModelInfo(ctx context.Context, req *adminv1.GetModelInfoRequest) (*adminv1.ModelInfoResponse, error) {
	s := ms.s
	c, err := s.authenticateKey(ctx)
	if err != nil {
		return nil, err
	}
	if err := decide(c, authz.ModelInfo, authz.Target{}); err != nil {
		return nil, err
	}
	r := s.store.Read()
	out := &adminv1.ModelInfoResponse{Data: []*adminv1.ModelDeployment{}}
	if id := req.GetLitellmModelId(); id != "" {
		m, err := r.GetModel(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return nil, notFound("litellm_model_id", "model not found")
		} else if err != nil {
			return nil, storeError(ctx, err, "model")
		}
		out.Data = append(out.Data, modelOut(&m))
		return out, nil
	}
	ms2, err := r.ListModels(ctx)
	if err != nil {
		return nil, storeError(ctx, err, "model")
	}
	for i := range ms2 {
		out.Data = append(out.Data, modelOut(&ms2[i]))
	}
	return out, nil
}

package api

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/tollgate-gw/tollgate/controlplane/internal/authz"
	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/duration"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/keys"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/settings"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

type keyService struct {
	adminv1.UnimplementedKeyServiceServer
	s *Server
}

// buildKey validates a generate request into a Key (without secret, ids or
// references checked against the store).
func (s *Server) buildKey(req *adminv1.GenerateKeyRequest, now time.Time) (store.Key, error) {
	var k store.Key
	var err error
	if err = checkID("key_alias", req.GetKeyAlias(), false); err != nil {
		return k, err
	}
	for _, f := range []struct{ name, v string }{{"user_id", req.GetUserId()}, {"team_id", req.GetTeamId()}, {"organization_id", req.GetOrganizationId()}} {
		if err = checkID(f.name, f.v, false); err != nil {
			return k, err
		}
	}
	k.KeyAlias, k.UserID, k.TeamID, k.OrganizationID = req.GetKeyAlias(), req.GetUserId(), req.GetTeamId(), req.GetOrganizationId()
	if k.Models, err = strList("models", req.GetModels()); err != nil {
		return k, err
	}
	if k.MaxBudget, err = usdPtr("max_budget", req.GetMaxBudget()); err != nil {
		return k, err
	}
	if k.SoftBudget, err = usdPtr("soft_budget", req.GetSoftBudget()); err != nil {
		return k, err
	}
	if req.GetBudgetDuration() != "" {
		d, err := parseDuration("budget_duration", req.GetBudgetDuration())
		if err != nil {
			return k, err
		}
		k.BudgetDuration = d.String()
		at := d.AddTo(now)
		k.BudgetResetAt = &at
	}
	if k.RPMLimit, err = limitPtr("rpm_limit", req.GetRpmLimit()); err != nil {
		return k, err
	}
	if k.TPMLimit, err = limitPtr("tpm_limit", req.GetTpmLimit()); err != nil {
		return k, err
	}
	if k.MaxParallelRequests, err = limitPtr("max_parallel_requests", req.GetMaxParallelRequests()); err != nil {
		return k, err
	}
	if k.ModelMaxBudget, err = modelBudgets("model_max_budget", req.GetModelMaxBudget()); err != nil {
		return k, err
	}
	if k.ModelRPMLimit, err = limitMap("model_rpm_limit", req.GetModelRpmLimit()); err != nil {
		return k, err
	}
	if k.ModelTPMLimit, err = limitMap("model_tpm_limit", req.GetModelTpmLimit()); err != nil {
		return k, err
	}
	if k.Metadata, err = structJSON("metadata", req.GetMetadata()); err != nil {
		return k, err
	}
	if k.Permissions, err = structJSON("permissions", req.GetPermissions()); err != nil {
		return k, err
	}
	if k.Guardrails, err = strList("guardrails", req.GetGuardrails()); err != nil {
		return k, err
	}
	if k.Tags, err = strList("tags", req.GetTags()); err != nil {
		return k, err
	}
	if k.EnforcedParams, err = strList("enforced_params", req.GetEnforcedParams()); err != nil {
		return k, err
	}
	if k.AllowedRoutes, err = strList("allowed_routes", req.GetAllowedRoutes()); err != nil {
		return k, err
	}
	k.Blocked = req.GetBlocked().GetValue()
	if k.Expires, err = timestampPtr("expires", req.GetExpires()); err != nil {
		return k, err
	}
	if req.GetDuration() != "" {
		d, err := parseDuration("duration", req.GetDuration())
		if err != nil {
			return k, err
		}
		exp := d.AddTo(now)
		k.Expires = &exp
	}
	if req.GetAutoRotate() || req.GetRotationInterval() != "" {
		if req.GetRotationInterval() == "" {
			return k, badRequest("rotation_interval", "rotation_interval is required when auto_rotate is true")
		}
		d, err := parseDuration("rotation_interval", req.GetRotationInterval())
		if err != nil {
			return k, err
		}
		k.AutoRotate = req.GetAutoRotate()
		k.RotationInterval = d.String()
		if k.AutoRotate {
			at := d.AddTo(now)
			k.KeyRotationAt = &at
		}
	}
	return k, nil
}

// secretFor validates a caller-chosen secret or generates one.
func (s *Server) secretFor(param, chosen string) (string, error) {
	if chosen == "" {
		return keys.Generate(), nil
	}
	if err := keys.Validate(chosen); err != nil {
		return "", badRequest(param, param+" must start with sk- and be at most 256 printable characters")
	}
	if s.master.matches(chosen) {
		return "", badRequest(param, param+" is not available")
	}
	return chosen, nil
}

// checkRefs verifies, inside tx, that the key's user, team and organization
// exist, and inherits the team's organization.
func checkRefs(ctx context.Context, tx store.Reader, k *store.Key) error {
	if k.UserID != "" {
		if _, err := tx.GetUser(ctx, k.UserID); errors.Is(err, store.ErrNotFound) {
			return badRequest("user_id", "user_id "+k.UserID+" does not exist")
		} else if err != nil {
			return err
		}
	}
	if k.TeamID != "" {
		t, err := tx.GetTeam(ctx, k.TeamID)
		if errors.Is(err, store.ErrNotFound) {
			return badRequest("team_id", "team_id "+k.TeamID+" does not exist")
		} else if err != nil {
			return err
		}
		if k.OrganizationID == "" {
			k.OrganizationID = t.OrganizationID
		} else if t.OrganizationID != "" && t.OrganizationID != k.OrganizationID {
			return badRequest("organization_id", "organization_id does not match the team's organization")
		}
	}
	if k.OrganizationID != "" {
		if _, err := tx.GetOrganization(ctx, k.OrganizationID); errors.Is(err, store.ErrNotFound) {
			return badRequest("organization_id", "organization_id "+k.OrganizationID+" does not exist")
		} else if err != nil {
			return err
		}
	}
	return nil
}

func (ks *keyService) generate(ctx context.Context, req *adminv1.GenerateKeyRequest, serviceAccount bool) (*adminv1.GenerateKeyResponse, error) {
	s := ks.s
	action := authz.KeyGenerate
	if serviceAccount {
		action = authz.KeyServiceAccountGenerate
	}
	c, err := s.begin(ctx, action)
	if err != nil {
		return nil, err
	}
	now := s.now()
	k, err := s.buildKey(req, now)
	if err != nil {
		return nil, err
	}
	if err := checkID("budget_id", req.GetBudgetId(), false); err != nil {
		return nil, err
	}
	k.BudgetID = req.GetBudgetId()
	limitsSet := hasLimits(k.Limits)
	if serviceAccount {
		if k.TeamID == "" {
			return nil, badRequest("team_id", "team_id is required for service account keys")
		}
		if k.UserID != "" {
			return nil, badRequest("user_id", "service account keys belong to a team and have no user_id")
		}
		k.ServiceAccount = true
	} else if k.UserID == "" && !c.Admin() {
		k.UserID = c.ID // a non-admin's key is its own
	}
	if !c.Admin() && !serviceAccount && len(k.Models) == 0 && k.UserID == c.ID {
		k.Models = c.Self.Models // a restricted user's key inherits its models
	}
	secret, err := s.secretFor("key", req.GetKey())
	if err != nil {
		return nil, err
	}
	// Decide (and ask the custom check) before anything is written, outside
	// the transaction: the webhook must not hold a transaction open.
	gen, err := s.generalSettings(ctx)
	if err != nil {
		return nil, storeError(ctx, err, "settings")
	}
	team, err := teamCeiling(ctx, s.store.Read(), &c, k.TeamID)
	if err != nil {
		return nil, storeError(ctx, err, "team")
	}
	after := keyObj(&k)
	if team != nil && after.OrgID == "" {
		after.OrgID = team.OrgID
	}
	if err := decide(c, action, authz.Target{After: &after, Team: team, Params: setFields(req), KeyGeneration: gen.KeyGenerationSettings}); err != nil {
		return nil, err
	}
	if err := s.customKeyCheck(ctx, gen.CustomKeyGenerateWebhook, c, action, req); err != nil {
		return nil, err
	}
	k.TokenID = keys.NewID()
	k.KeyHash = keys.Hash(secret)
	k.KeyName = keys.DisplayName(secret)
	k.CreatedAt, k.UpdatedAt = now, now
	k.CreatedBy, k.UpdatedBy = c.ID, c.ID
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		kk := k
		if c.Admin() && kk.UserID != "" {
			// LiteLLM creates the internal user a key names (scripts pass
			// their own customer ids this way). Non-admins' keys are
			// their own, so only admins create users here.
			if err := s.ensureUser(ctx, tx, c, kk.UserID, ""); err != nil {
				return err
			}
		}
		if err := checkRefs(ctx, tx, &kk); err != nil {
			return err
		}
		if kk.BudgetID != "" {
			budgetID := kk.BudgetID
			kk.BudgetID = ""
			if err := linkKey(ctx, tx, &kk, &budgetID, limitsSet, now); err != nil {
				return err
			}
		}
		if err := tx.CreateKey(ctx, kk); err != nil {
			return err
		}
		k = kk
		return s.audit(ctx, tx, c, "created", "key", kk.TokenID, nil, keyView(&kk))
	})
	if err != nil {
		return nil, storeError(ctx, err, "key")
	}
	return generateOut(secret, &k), nil
}

func (ks *keyService) GenerateKey(ctx context.Context, req *adminv1.GenerateKeyRequest) (*adminv1.GenerateKeyResponse, error) {
	return ks.generate(ctx, req, false)
}

func (ks *keyService) GenerateServiceAccountKey(ctx context.Context, req *adminv1.GenerateKeyRequest) (*adminv1.GenerateKeyResponse, error) {
	return ks.generate(ctx, req, true)
}

// findKey resolves a plaintext key or a token id. The master key is never a
// stored key; naming it is refused explicitly.
func (s *Server) findKey(ctx context.Context, r store.Reader, ref string) (store.Key, error) {
	if ref == "" {
		return store.Key{}, badRequest("key", "key is required")
	}
	if s.master.matches(ref) {
		return store.Key{}, denied(authz.Decide(authz.Caller{}, authz.KeyInfo, authz.Target{MasterKey: true}))
	}
	var k store.Key
	var err error
	if strings.HasPrefix(ref, keys.Prefix) {
		k, err = r.GetKeyByHash(ctx, keys.Hash(ref))
	} else if len(ref) <= maxIDLen {
		k, err = r.GetKey(ctx, ref)
	} else {
		err = store.ErrNotFound
	}
	if errors.Is(err, store.ErrNotFound) {
		return k, notFound("key", "key not found")
	}
	return k, err
}

// mutateKey runs one read-modify-write of a key inside a transaction:
// authorization on the stored key (is it visible, may the caller act on it),
// fn, authorization of the result (nothing wider, no foreign team), the
// reference checks, the write and its audit row. A refusal rolls back.
func (s *Server) mutateKey(ctx context.Context, ref string, action authz.Action, auditAction string, fn func(tx store.Tx, k *store.Key) error) (store.Key, error) {
	c, err := s.begin(ctx, action)
	if err != nil {
		return store.Key{}, err
	}
	var kg settings.KeyGenerationSettings
	if !c.Admin() {
		gen, err := s.generalSettings(ctx)
		if err != nil {
			return store.Key{}, storeError(ctx, err, "settings")
		}
		kg = gen.KeyGenerationSettings
	}
	var out store.Key
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		cc := c
		k, err := s.findKey(ctx, tx, ref)
		if err != nil {
			return err
		}
		if err := withOrg(ctx, tx, &cc, k.OrganizationID); err != nil {
			return err
		}
		before := k
		bo := keyObj(&before)
		if err := decide(cc, action, authz.Target{Before: &bo}); err != nil {
			return err
		}
		if err := fn(tx, &k); err != nil {
			return err
		}
		team, err := teamCeiling(ctx, tx, &cc, k.TeamID)
		if err != nil {
			return err
		}
		ao := keyObj(&k)
		if team != nil && ao.OrgID == "" {
			ao.OrgID = team.OrgID
		}
		if err := decide(cc, action, authz.Target{Before: &bo, After: &ao, Team: team, KeyGeneration: kg}); err != nil {
			return err
		}
		if k.UserID != before.UserID || k.TeamID != before.TeamID || k.OrganizationID != before.OrganizationID {
			if err := checkRefs(ctx, tx, &k); err != nil {
				return err
			}
		}
		k.UpdatedAt = s.now()
		k.UpdatedBy = c.ID
		if err := tx.UpdateKey(ctx, k); err != nil {
			return err
		}
		out = k
		return s.audit(ctx, tx, c, auditAction, "key", k.TokenID, keyView(&before), keyView(&k))
	})
	if err != nil {
		return store.Key{}, storeError(ctx, err, "key")
	}
	return out, nil
}

func (ks *keyService) UpdateKey(ctx context.Context, req *adminv1.UpdateKeyRequest) (*adminv1.Key, error) {
	s := ks.s
	now := s.now()
	// Validate everything before touching the store.
	var (
		err                             error
		maxBudget, softBudget, rpm, tpm *int64
		parallel                        *int64
		models, guardrails, tags        []string
		enforced, routes                []string
		hasModels, hasGuard, hasTags    bool
		hasEnforced, hasRoutes          bool
		modelBudget                     map[string]store.ModelBudget
		modelRPM, modelTPM              map[string]int64
		metadata, permissions           []byte
		expires                         *time.Time
		budgetDur, rotationInterval     *duration.D
		clearExpiry, clearBudgetDur     bool
		aliasSet                        bool
		alias, userID, teamID, orgID    string
		userSet, teamSet, orgSet        bool
	)
	if req.KeyAlias != nil {
		aliasSet, alias = true, req.GetKeyAlias().GetValue()
		if err = checkID("key_alias", alias, false); err != nil {
			return nil, err
		}
	}
	if req.UserId != nil {
		userSet, userID = true, req.GetUserId().GetValue()
		if err = checkID("user_id", userID, false); err != nil {
			return nil, err
		}
	}
	if req.TeamId != nil {
		teamSet, teamID = true, req.GetTeamId().GetValue()
		if err = checkID("team_id", teamID, false); err != nil {
			return nil, err
		}
	}
	if req.OrganizationId != nil {
		orgSet, orgID = true, req.GetOrganizationId().GetValue()
		if err = checkID("organization_id", orgID, false); err != nil {
			return nil, err
		}
	}
	if models, hasModels, err = listValue("models", req.GetModels()); err != nil {
		return nil, err
	}
	if guardrails, hasGuard, err = listValue("guardrails", req.GetGuardrails()); err != nil {
		return nil, err
	}
	if tags, hasTags, err = listValue("tags", req.GetTags()); err != nil {
		return nil, err
	}
	if enforced, hasEnforced, err = listValue("enforced_params", req.GetEnforcedParams()); err != nil {
		return nil, err
	}
	if routes, hasRoutes, err = listValue("allowed_routes", req.GetAllowedRoutes()); err != nil {
		return nil, err
	}
	if maxBudget, err = usdPtr("max_budget", req.GetMaxBudget()); err != nil {
		return nil, err
	}
	if softBudget, err = usdPtr("soft_budget", req.GetSoftBudget()); err != nil {
		return nil, err
	}
	if rpm, err = limitPtr("rpm_limit", req.GetRpmLimit()); err != nil {
		return nil, err
	}
	if tpm, err = limitPtr("tpm_limit", req.GetTpmLimit()); err != nil {
		return nil, err
	}
	if parallel, err = limitPtr("max_parallel_requests", req.GetMaxParallelRequests()); err != nil {
		return nil, err
	}
	if modelBudget, err = modelBudgets("model_max_budget", req.GetModelMaxBudget()); err != nil {
		return nil, err
	}
	if modelRPM, err = limitMap("model_rpm_limit", req.GetModelRpmLimit()); err != nil {
		return nil, err
	}
	if modelTPM, err = limitMap("model_tpm_limit", req.GetModelTpmLimit()); err != nil {
		return nil, err
	}
	if metadata, err = structJSON("metadata", req.GetMetadata()); err != nil {
		return nil, err
	}
	if permissions, err = structJSON("permissions", req.GetPermissions()); err != nil {
		return nil, err
	}
	if expires, err = timestampPtr("expires", req.GetExpires()); err != nil {
		return nil, err
	}
	if req.Duration != nil {
		if v := req.GetDuration().GetValue(); v == "" || v == "-1" {
			clearExpiry = true
		} else {
			d, err := parseDuration("duration", v)
			if err != nil {
				return nil, err
			}
			exp := d.AddTo(now)
			expires = &exp
		}
	}
	if req.BudgetDuration != nil {
		if v := req.GetBudgetDuration().GetValue(); v == "" {
			clearBudgetDur = true
		} else {
			d, err := parseDuration("budget_duration", v)
			if err != nil {
				return nil, err
			}
			budgetDur = &d
		}
	}
	if req.RotationInterval != nil && req.GetRotationInterval().GetValue() != "" {
		d, err := parseDuration("rotation_interval", req.GetRotationInterval().GetValue())
		if err != nil {
			return nil, err
		}
		rotationInterval = &d
	}
	var budgetLink *string
	if req.BudgetId != nil {
		v := req.GetBudgetId().GetValue()
		if err := checkID("budget_id", v, false); err != nil {
			return nil, err
		}
		budgetLink = &v
	}
	limitsSet := maxBudget != nil || softBudget != nil || rpm != nil || tpm != nil || parallel != nil || budgetDur != nil || clearBudgetDur

	k, err := s.mutateKey(ctx, req.GetKey(), authz.KeyUpdate, "updated", func(tx store.Tx, k *store.Key) error {
		if aliasSet {
			k.KeyAlias = alias
		}
		if userSet {
			if k.ServiceAccount && userID != "" {
				return badRequest("user_id", "service account keys have no user_id")
			}
			k.UserID = userID
		}
		if teamSet {
			if k.ServiceAccount && teamID == "" {
				return badRequest("team_id", "service account keys need a team_id")
			}
			k.TeamID = teamID
			if !orgSet {
				k.OrganizationID = "" // re-inherited from the new team
			}
		}
		if orgSet {
			k.OrganizationID = orgID
		}
		if hasModels {
			k.Models = models
		}
		if hasGuard {
			k.Guardrails = guardrails
		}
		if hasTags {
			k.Tags = tags
		}
		if hasEnforced {
			k.EnforcedParams = enforced
		}
		if hasRoutes {
			k.AllowedRoutes = routes
		}
		if maxBudget != nil {
			k.MaxBudget = maxBudget
		}
		if softBudget != nil {
			k.SoftBudget = softBudget
		}
		if rpm != nil {
			k.RPMLimit = rpm
		}
		if tpm != nil {
			k.TPMLimit = tpm
		}
		if parallel != nil {
			k.MaxParallelRequests = parallel
		}
		if modelBudget != nil {
			k.ModelMaxBudget = modelBudget
		}
		if modelRPM != nil {
			k.ModelRPMLimit = modelRPM
		}
		if modelTPM != nil {
			k.ModelTPMLimit = modelTPM
		}
		if req.Metadata != nil {
			k.Metadata = metadata // {} replaces the old metadata, as in LiteLLM
		}
		if permissions != nil {
			k.Permissions = permissions
		}
		if req.Blocked != nil {
			k.Blocked = req.GetBlocked().GetValue()
		}
		if clearExpiry {
			k.Expires = nil
		} else if expires != nil {
			k.Expires = expires
		}
		if clearBudgetDur {
			k.BudgetDuration, k.BudgetResetAt = "", nil
		} else if budgetDur != nil {
			k.BudgetDuration = budgetDur.String()
			at := budgetDur.AddTo(now)
			k.BudgetResetAt = &at
		}
		if rotationInterval != nil {
			k.RotationInterval = rotationInterval.String()
		}
		if req.AutoRotate != nil {
			k.AutoRotate = req.GetAutoRotate().GetValue()
		}
		if k.AutoRotate {
			if k.RotationInterval == "" {
				return badRequest("rotation_interval", "rotation_interval is required when auto_rotate is true")
			}
			if rotationInterval != nil || k.KeyRotationAt == nil {
				d, _ := duration.Parse(k.RotationInterval)
				at := d.AddTo(now)
				k.KeyRotationAt = &at
			}
		} else {
			k.KeyRotationAt = nil
		}
		return linkKey(ctx, tx, k, budgetLink, limitsSet, now)
	})
	if err != nil {
		return nil, err
	}
	return keyOut(&k), nil
}

func (ks *keyService) DeleteKeys(ctx context.Context, req *adminv1.DeleteKeysRequest) (*adminv1.DeleteResponse, error) {
	s := ks.s
	if len(req.GetKeys()) == 0 && len(req.GetKeyAliases()) == 0 {
		return nil, badRequest("keys", "keys or key_aliases is required")
	}
	if len(req.GetKeys())+len(req.GetKeyAliases()) > maxListLen {
		return nil, badRequest("keys", "too many keys in one call")
	}
	c, err := s.begin(ctx, authz.KeyDelete)
	if err != nil {
		return nil, err
	}
	var deleted []string
	err = s.store.ReadWriteTx(ctx, func(ctx context.Context, tx store.Tx) error {
		deleted = deleted[:0]
		var targets []store.Key
		seen := map[string]bool{}
		for _, ref := range req.GetKeys() {
			k, err := s.findKey(ctx, tx, ref)
			if err != nil {
				return err
			}
			if !seen[k.TokenID] {
				seen[k.TokenID] = true
				targets = append(targets, k)
			}
		}
		for _, alias := range req.GetKeyAliases() {
			k, err := tx.GetKeyByAlias(ctx, alias)
			if errors.Is(err, store.ErrNotFound) {
				return notFound("key", "key not found")
			} else if err != nil {
				return err
			}
			if !seen[k.TokenID] {
				seen[k.TokenID] = true
				targets = append(targets, k)
			}
		}
		for i := range targets {
			k := &targets[i]
			cc := c
			if err := withOrg(ctx, tx, &cc, k.OrganizationID); err != nil {
				return err
			}
			bo := keyObj(k)
			if err := decide(cc, authz.KeyDelete, authz.Target{Before: &bo}); err != nil {
				return err
			}
			if err := tx.DeleteKey(ctx, k.TokenID); err != nil {
				return err
			}
			if err := s.audit(ctx, tx, c, "deleted", "key", k.TokenID, keyView(k), nil); err != nil {
				return err
			}
			deleted = append(deleted, k.TokenID)
		}
		return nil
	})
	if err != nil {
		return nil, storeError(ctx, err, "key")
	}
	return &adminv1.DeleteResponse{DeletedKeys: deleted}, nil
}

func (ks *keyService) GetKeyInfo(ctx context.Context, req *adminv1.GetKeyInfoRequest) (*adminv1.GetKeyInfoResponse, error) {
	s := ks.s
	c, err := s.authenticateKey(ctx)
	if err != nil {
		return nil, err
	}
	ref := req.GetKey()
	r := s.store.Read()
	var k store.Key
	if ref == "" && c.KeyTokenID != "" {
		k, err = r.GetKey(ctx, c.KeyTokenID) // LiteLLM: no key means the caller's own
	} else {
		k, err = s.findKey(ctx, r, ref)
	}
	if err != nil {
		return nil, storeError(ctx, err, "key")
	}
	if err := withOrg(ctx, r, &c, k.OrganizationID); err != nil {
		return nil, storeError(ctx, err, "key")
	}
	bo := keyObj(&k)
	if err := decide(c, authz.KeyInfo, authz.Target{Before: &bo}); err != nil {
		return nil, err
	}
	return &adminv1.GetKeyInfoResponse{Key: k.TokenID, Info: keyOut(&k)}, nil
}

func (ks *keyService) ListKeys(ctx context.Context, req *adminv1.ListKeysRequest) (*adminv1.ListKeysResponse, error) {
	s := ks.s
	c, err := s.begin(ctx, authz.KeyList)
	if err != nil {
		return nil, err
	}
	f := store.KeyFilter{
		UserID: req.GetUserId(), TeamID: req.GetTeamId(), OrganizationID: req.GetOrganizationId(), KeyAlias: req.GetKeyAlias(),
		Page: store.Page{Page: int(req.GetPage()), Size: int(req.GetSize())}.Normalize(),
	}
	if !c.ReadsAll() {
		r := s.store.Read()
		team, err := teamCeiling(ctx, r, &c, f.TeamID)
		if err != nil {
			return nil, storeError(ctx, err, "key")
		}
		filter := authz.Object{UserID: f.UserID, TeamID: f.TeamID}
		if team != nil {
			filter.OrgID = team.OrgID
		}
		if err := decide(c, authz.KeyList, authz.Target{Before: &filter}); err != nil {
			return nil, err
		}
		// Own keys only, unless a team admin lists its team's keys.
		if f.TeamID == "" || c.TeamRole(f.TeamID, filter.OrgID) != store.TeamRoleAdmin {
			f.UserID = c.ID
		}
	}
	keep, err := keyPredicate(req, s.now())
	if err != nil {
		return nil, err
	}
	var list []store.Key
	var total int
	truncated := false
	if keep == nil {
		list, total, err = s.store.Read().ListKeys(ctx, f)
	} else {
		list, total, truncated, err = s.scanKeys(ctx, f, keep)
	}
	if err != nil {
		return nil, storeError(ctx, err, "key")
	}
	out := &adminv1.ListKeysResponse{TotalCount: int32(total), CurrentPage: int32(f.Page.Page), Truncated: truncated}
	out.TotalPages = int32((total + f.Page.Size - 1) / f.Page.Size)
	out.Keys = make([]string, 0, len(list))
	for i := range list {
		out.Keys = append(out.Keys, list[i].TokenID)
		if req.GetReturnFullObject() {
			out.KeysFull = append(out.KeysFull, keyOut(&list[i]))
		}
	}
	return out, nil
}

func (ks *keyService) RegenerateKey(ctx context.Context, req *adminv1.RegenerateKeyRequest) (*adminv1.GenerateKeyResponse, error) {
	s := ks.s
	now := s.now()
	secret, err := s.secretFor("new_key", req.GetNewKey())
	if err != nil {
		return nil, err
	}
	var grace *duration.D
	if req.GetGracePeriod() != "" {
		d, err := parseDuration("grace_period", req.GetGracePeriod())
		if err != nil {
			return nil, err
		}
		grace = &d
	}
	maxBudget, err := usdPtr("max_budget", req.GetMaxBudget())
	if err != nil {
		return nil, err
	}
	rpm, err := limitPtr("rpm_limit", req.GetRpmLimit())
	if err != nil {
		return nil, err
	}
	tpm, err := limitPtr("tpm_limit", req.GetTpmLimit())
	if err != nil {
		return nil, err
	}
	models, hasModels, err := listValue("models", req.GetModels())
	if err != nil {
		return nil, err
	}
	metadata, err := structJSON("metadata", req.GetMetadata())
	if err != nil {
		return nil, err
	}
	var expires *time.Time
	if req.Duration != nil && req.GetDuration().GetValue() != "" {
		d, err := parseDuration("duration", req.GetDuration().GetValue())
		if err != nil {
			return nil, err
		}
		e := d.AddTo(now)
		expires = &e
	}
	k, err := s.mutateKey(ctx, req.GetKey(), authz.KeyRegenerate, "regenerated", func(tx store.Tx, k *store.Key) error {
		// Drop expired grace secrets; keep the current one for the grace period.
		prev := k.PreviousHashes[:0:0]
		for _, p := range k.PreviousHashes {
			if p.ValidUntil.After(now) {
				prev = append(prev, p)
			}
		}
		if grace != nil {
			prev = append(prev, store.PreviousHash{KeyHash: k.KeyHash, ValidUntil: grace.AddTo(now)})
		}
		k.PreviousHashes = prev
		k.KeyHash = keys.Hash(secret)
		k.KeyName = keys.DisplayName(secret)
		if maxBudget != nil {
			k.MaxBudget = maxBudget
		}
		if rpm != nil {
			k.RPMLimit = rpm
		}
		if tpm != nil {
			k.TPMLimit = tpm
		}
		if hasModels {
			k.Models = models
		}
		if metadata != nil {
			k.Metadata = metadata
		}
		if expires != nil {
			k.Expires = expires
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return generateOut(secret, &k), nil
}

func (ks *keyService) setBlocked(ctx context.Context, ref string, blocked bool) (*adminv1.Key, error) {
	action, az := "blocked", authz.KeyBlock
	if !blocked {
		action, az = "unblocked", authz.KeyUnblock
	}
	k, err := ks.s.mutateKey(ctx, ref, az, action, func(_ store.Tx, k *store.Key) error {
		k.Blocked = blocked
		return nil
	})
	if err != nil {
		return nil, err
	}
	return keyOut(&k), nil
}

func (ks *keyService) BlockKey(ctx context.Context, req *adminv1.BlockKeyRequest) (*adminv1.Key, error) {
	return ks.setBlocked(ctx, req.GetKey(), true)
}

func (ks *keyService) UnblockKey(ctx context.Context, req *adminv1.BlockKeyRequest) (*adminv1.Key, error) {
	return ks.setBlocked(ctx, req.GetKey(), false)
}

// maxKeyScan bounds how many keys one filtered /key/list examines: the
// store filters by owner, team, organization and alias; blocked,
// expires_before and search are applied here, over at most this many keys.
const maxKeyScan = 10000

// keyPredicate returns the in-handler filter of a /key/list request, or nil
// when it has none.
func keyPredicate(req *adminv1.ListKeysRequest, now time.Time) (func(*store.Key) bool, error) {
	var preds []func(*store.Key) bool
	if b := req.GetBlocked(); b != nil {
		want := b.GetValue()
		preds = append(preds, func(k *store.Key) bool { return k.Blocked == want })
	}
	if v := req.GetExpiresBefore(); v != "" {
		t, err := auditTime("expires_before", v)
		if err != nil {
			return nil, err
		}
		preds = append(preds, func(k *store.Key) bool { return k.Expires != nil && k.Expires.Before(t) })
	}
	if q := strings.ToLower(strings.TrimSpace(req.GetSearch())); q != "" {
		if len(q) > maxIDLen {
			return nil, badRequest("search", "search is too long")
		}
		preds = append(preds, func(k *store.Key) bool {
			for _, f := range []string{k.KeyAlias, k.KeyName, k.TokenID, k.UserID, k.TeamID} {
				if strings.Contains(strings.ToLower(f), q) {
					return true
				}
			}
			return false
		})
	}
	if len(preds) == 0 {
		return nil, nil
	}
	return func(k *store.Key) bool {
		for _, p := range preds {
			if !p(k) {
				return false
			}
		}
		return true
	}, nil
}

// scanKeys pages through the store's matches of f (at most maxKeyScan),
// keeps those keep accepts and returns f.Page of them with their count.
func (s *Server) scanKeys(ctx context.Context, f store.KeyFilter, keep func(*store.Key) bool) (page []store.Key, total int, truncated bool, err error) {
	want := f.Page
	from, to := want.Offset(), want.Offset()+want.Size
	r := s.store.Read()
	seen := 0
	for p := 1; ; p++ {
		f.Page = store.Page{Page: p, Size: store.MaxPageSize}
		list, n, err := r.ListKeys(ctx, f)
		if err != nil {
			return nil, 0, false, err
		}
		for i := range list {
			if !keep(&list[i]) {
				continue
			}
			if total >= from && total < to {
				page = append(page, list[i])
			}
			total++
		}
		seen += len(list)
		if len(list) == 0 || seen >= n {
			return page, total, false, nil
		}
		if seen >= maxKeyScan {
			return page, total, true, nil
		}
	}
}

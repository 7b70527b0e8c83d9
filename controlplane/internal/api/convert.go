package api

import (
	"encoding/json"
	"math"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/duration"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
	adminv1 "github.com/tollgate-gw/tollgate/gen/tollgate/admin/v1"
)

// Input limits for free-form fields.
const (
	maxIDLen        = 256
	maxListLen      = 1000
	maxStringInList = 256
	maxJSONObject   = 64 << 10
)

// ---- wire → store ----

func usdPtr(param string, v *wrapperspb.DoubleValue) (*int64, error) {
	if v == nil {
		return nil, nil
	}
	m, err := money.FromUSD(v.GetValue())
	if err != nil {
		return nil, badRequest(param, param+" must be a finite, non-negative number of USD")
	}
	return &m, nil
}

func limitPtr(param string, v *wrapperspb.Int32Value) (*int64, error) {
	if v == nil {
		return nil, nil
	}
	if v.GetValue() < 0 {
		return nil, badRequest(param, param+" must not be negative")
	}
	n := int64(v.GetValue())
	return &n, nil
}

func limitMap(param string, m map[string]int32) (map[string]int64, error) {
	if len(m) == 0 {
		return nil, nil
	}
	if len(m) > maxListLen {
		return nil, badRequest(param, param+" has too many entries")
	}
	out := make(map[string]int64, len(m))
	for k, v := range m {
		if k == "" || len(k) > maxStringInList {
			return nil, badRequest(param, param+" has an invalid model name")
		}
		if v < 0 {
			return nil, badRequest(param, param+"["+k+"] must not be negative")
		}
		out[k] = int64(v)
	}
	return out, nil
}

func modelBudgets(param string, m map[string]*adminv1.ModelBudget) (map[string]store.ModelBudget, error) {
	if len(m) == 0 {
		return nil, nil
	}
	if len(m) > maxListLen {
		return nil, badRequest(param, param+" has too many entries")
	}
	out := make(map[string]store.ModelBudget, len(m))
	for k, v := range m {
		if k == "" || len(k) > maxStringInList {
			return nil, badRequest(param, param+" has an invalid model name")
		}
		if v == nil {
			return nil, badRequest(param, param+"["+k+"] must be an object")
		}
		b, err := money.FromUSD(v.GetBudgetLimit())
		if err != nil {
			return nil, badRequest(param, param+"["+k+"].budget_limit must be a finite, non-negative number of USD")
		}
		if v.GetTimePeriod() != "" {
			if _, err := duration.Parse(v.GetTimePeriod()); err != nil {
				return nil, badRequest(param, param+"["+k+"].time_period: "+err.Error())
			}
		}
		out[k] = store.ModelBudget{BudgetLimit: b, TimePeriod: v.GetTimePeriod()}
	}
	return out, nil
}

func strList(param string, in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	if len(in) > maxListLen {
		return nil, badRequest(param, param+" has too many entries")
	}
	out := make([]string, 0, len(in))
	for _, s := range in {
		if s == "" || len(s) > maxStringInList {
			return nil, badRequest(param, param+" entries must be non-empty strings of at most 256 characters")
		}
		out = append(out, s)
	}
	return out, nil
}

// listValue converts an optional JSON list (google.protobuf.ListValue) of strings.
func listValue(param string, l *structpb.ListValue) ([]string, bool, error) {
	if l == nil {
		return nil, false, nil
	}
	in := make([]string, 0, len(l.Values))
	for _, v := range l.Values {
		s, ok := v.Kind.(*structpb.Value_StringValue)
		if !ok {
			return nil, true, badRequest(param, param+" must be a list of strings")
		}
		in = append(in, s.StringValue)
	}
	out, err := strList(param, in)
	return out, true, err
}

func structJSON(param string, s *structpb.Struct) (json.RawMessage, error) {
	if s == nil {
		return nil, nil
	}
	b, err := protojson.Marshal(s)
	if err != nil {
		return nil, badRequest(param, param+" must be a JSON object")
	}
	if len(b) > maxJSONObject {
		return nil, badRequest(param, param+" is too large")
	}
	if string(b) == "{}" {
		return nil, nil
	}
	return b, nil
}

func checkID(param, v string, required bool) error {
	if v == "" {
		if required {
			return badRequest(param, param+" is required")
		}
		return nil
	}
	if len(v) > maxIDLen || strings.ContainsAny(v, "\x00\r\n") {
		return badRequest(param, param+" must be at most 256 characters without control characters")
	}
	return nil
}

func parseDuration(param, v string) (duration.D, error) {
	d, err := duration.Parse(v)
	if err != nil {
		return d, badRequest(param, param+": "+err.Error())
	}
	return d, nil
}

func timestampPtr(param string, ts *timestamppb.Timestamp) (*time.Time, error) {
	if ts == nil {
		return nil, nil
	}
	if err := ts.CheckValid(); err != nil {
		return nil, badRequest(param, param+" is not a valid time")
	}
	t := ts.AsTime().UTC()
	return &t, nil
}

// ---- store → wire ----

func usdValue(m *int64) *wrapperspb.DoubleValue {
	if m == nil {
		return nil
	}
	return wrapperspb.Double(money.ToUSD(*m))
}

func limitValue(n *int64) *wrapperspb.Int32Value {
	if n == nil {
		return nil
	}
	v := *n
	if v > math.MaxInt32 {
		v = math.MaxInt32
	}
	return wrapperspb.Int32(int32(v))
}

func limitMapOut(m map[string]int64) map[string]int32 {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]int32, len(m))
	for k, v := range m {
		if v > math.MaxInt32 {
			v = math.MaxInt32
		}
		out[k] = int32(v)
	}
	return out
}

func modelBudgetsOut(m map[string]store.ModelBudget) map[string]*adminv1.ModelBudget {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]*adminv1.ModelBudget, len(m))
	for k, v := range m {
		out[k] = &adminv1.ModelBudget{BudgetLimit: money.ToUSD(v.BudgetLimit), TimePeriod: v.TimePeriod}
	}
	return out
}

func tsValue(t *time.Time) *timestamppb.Timestamp {
	if t == nil || t.IsZero() {
		return nil
	}
	return timestamppb.New(*t)
}

func tsOf(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func structOf(raw json.RawMessage) *structpb.Struct {
	if len(raw) == 0 {
		return nil
	}
	s := &structpb.Struct{}
	if err := protojson.Unmarshal(raw, s); err != nil {
		return nil
	}
	return s
}

func keyOut(k *store.Key) *adminv1.Key {
	out := keyFields(k)
	if k.BudgetID != "" {
		out.LitellmBudgetTable = budgetTableOf(k.BudgetID, k.Limits)
	}
	return out
}

func keyFields(k *store.Key) *adminv1.Key {
	return &adminv1.Key{
		BudgetId:            k.BudgetID,
		TokenId:             k.TokenID,
		KeyAlias:            k.KeyAlias,
		KeyName:             k.KeyName,
		Expires:             tsValue(k.Expires),
		UserId:              k.UserID,
		TeamId:              k.TeamID,
		OrganizationId:      k.OrganizationID,
		Models:              k.Models,
		MaxBudget:           usdValue(k.MaxBudget),
		SoftBudget:          usdValue(k.SoftBudget),
		BudgetDuration:      k.BudgetDuration,
		BudgetResetAt:       tsValue(k.BudgetResetAt),
		RpmLimit:            limitValue(k.RPMLimit),
		TpmLimit:            limitValue(k.TPMLimit),
		MaxParallelRequests: limitValue(k.MaxParallelRequests),
		ModelMaxBudget:      modelBudgetsOut(k.ModelMaxBudget),
		ModelRpmLimit:       limitMapOut(k.ModelRPMLimit),
		ModelTpmLimit:       limitMapOut(k.ModelTPMLimit),
		Metadata:            structOf(k.Metadata),
		Permissions:         structOf(k.Permissions),
		Guardrails:          k.Guardrails,
		Tags:                k.Tags,
		EnforcedParams:      k.EnforcedParams,
		AllowedRoutes:       k.AllowedRoutes,
		Blocked:             k.Blocked,
		ServiceAccount:      k.ServiceAccount,
		Spend:               money.ToUSD(k.Spend),
		AutoRotate:          k.AutoRotate,
		RotationInterval:    k.RotationInterval,
		KeyRotationAt:       tsValue(k.KeyRotationAt),
		LastRotationAt:      tsValue(k.LastRotationAt),
		RotationCount:       int32(min(k.RotationCount, math.MaxInt32)),
		CreatedAt:           tsOf(k.CreatedAt),
		UpdatedAt:           tsOf(k.UpdatedAt),
		CreatedBy:           k.CreatedBy,
		UpdatedBy:           k.UpdatedBy,
	}
}

func generateOut(plaintext string, k *store.Key) *adminv1.GenerateKeyResponse {
	o := keyOut(k)
	return &adminv1.GenerateKeyResponse{
		BudgetId:            o.BudgetId,
		Key:                 plaintext,
		TokenId:             o.TokenId,
		KeyAlias:            o.KeyAlias,
		KeyName:             o.KeyName,
		Expires:             o.Expires,
		UserId:              o.UserId,
		TeamId:              o.TeamId,
		OrganizationId:      o.OrganizationId,
		Models:              o.Models,
		MaxBudget:           o.MaxBudget,
		SoftBudget:          o.SoftBudget,
		BudgetDuration:      o.BudgetDuration,
		BudgetResetAt:       o.BudgetResetAt,
		RpmLimit:            o.RpmLimit,
		TpmLimit:            o.TpmLimit,
		MaxParallelRequests: o.MaxParallelRequests,
		ModelMaxBudget:      o.ModelMaxBudget,
		ModelRpmLimit:       o.ModelRpmLimit,
		ModelTpmLimit:       o.ModelTpmLimit,
		Metadata:            o.Metadata,
		Permissions:         o.Permissions,
		Guardrails:          o.Guardrails,
		Tags:                o.Tags,
		EnforcedParams:      o.EnforcedParams,
		AllowedRoutes:       o.AllowedRoutes,
		Blocked:             o.Blocked,
		ServiceAccount:      o.ServiceAccount,
		AutoRotate:          o.AutoRotate,
		RotationInterval:    o.RotationInterval,
		KeyRotationAt:       o.KeyRotationAt,
		CreatedAt:           o.CreatedAt,
		UpdatedAt:           tsOf(k.UpdatedAt),
	}
}

func teamOut(t *store.Team) *adminv1.Team {
	members := make([]*adminv1.TeamMember, 0, len(t.Members))
	for _, m := range t.Members {
		members = append(members, &adminv1.TeamMember{UserId: m.UserID, Role: m.Role, MaxBudgetInTeam: usdValue(m.MaxBudgetInTeam), Spend: money.ToUSD(m.Spend), UserEmail: m.UserEmail, BudgetId: m.BudgetID})
	}
	return &adminv1.Team{
		TeamId:                t.TeamID,
		TeamAlias:             t.TeamAlias,
		OrganizationId:        t.OrganizationID,
		MembersWithRoles:      members,
		Models:                t.Models,
		MaxBudget:             usdValue(t.MaxBudget),
		SoftBudget:            usdValue(t.SoftBudget),
		BudgetDuration:        t.BudgetDuration,
		BudgetResetAt:         tsValue(t.BudgetResetAt),
		RpmLimit:              limitValue(t.RPMLimit),
		TpmLimit:              limitValue(t.TPMLimit),
		MaxParallelRequests:   limitValue(t.MaxParallelRequests),
		TeamMemberBudget:      usdValue(t.TeamMemberBudget),
		TeamMemberPermissions: t.TeamMemberPermissions,
		ModelAliases:          t.ModelAliases,
		Metadata:              structOf(t.Metadata),
		Blocked:               t.Blocked,
		Spend:                 money.ToUSD(t.Spend),
		CreatedAt:             tsOf(t.CreatedAt),
		UpdatedAt:             tsOf(t.UpdatedAt),
	}
}

func userOut(u *store.User, teams []string) *adminv1.User {
	return &adminv1.User{
		UserId:              u.UserID,
		UserAlias:           u.UserAlias,
		UserEmail:           u.UserEmail,
		UserRole:            u.UserRole,
		Models:              u.Models,
		MaxBudget:           usdValue(u.MaxBudget),
		SoftBudget:          usdValue(u.SoftBudget),
		BudgetDuration:      u.BudgetDuration,
		BudgetResetAt:       tsValue(u.BudgetResetAt),
		RpmLimit:            limitValue(u.RPMLimit),
		TpmLimit:            limitValue(u.TPMLimit),
		MaxParallelRequests: limitValue(u.MaxParallelRequests),
		Metadata:            structOf(u.Metadata),
		Teams:               teams,
		Spend:               money.ToUSD(u.Spend),
		Blocked:             u.Blocked,
		CreatedAt:           tsOf(u.CreatedAt),
		UpdatedAt:           tsOf(u.UpdatedAt),
	}
}

func orgOut(o *store.Organization, teams []store.Team) *adminv1.Organization {
	members := make([]*adminv1.OrganizationMember, 0, len(o.Members))
	for _, m := range o.Members {
		members = append(members, &adminv1.OrganizationMember{UserId: m.UserID, UserRole: m.Role})
	}
	ts := make([]*adminv1.Team, 0, len(teams))
	for i := range teams {
		ts = append(ts, teamOut(&teams[i]))
	}
	return &adminv1.Organization{
		BudgetId:            o.BudgetID,
		LitellmBudgetTable:  budgetTableOf(o.BudgetID, o.Limits),
		OrganizationId:      o.OrganizationID,
		OrganizationAlias:   o.OrganizationAlias,
		Models:              o.Models,
		MaxBudget:           usdValue(o.MaxBudget),
		SoftBudget:          usdValue(o.SoftBudget),
		BudgetDuration:      o.BudgetDuration,
		BudgetResetAt:       tsValue(o.BudgetResetAt),
		RpmLimit:            limitValue(o.RPMLimit),
		TpmLimit:            limitValue(o.TPMLimit),
		MaxParallelRequests: limitValue(o.MaxParallelRequests),
		Metadata:            structOf(o.Metadata),
		Members:             members,
		Teams:               ts,
		Blocked:             o.Blocked,
		Spend:               money.ToUSD(o.Spend),
		CreatedAt:           tsOf(o.CreatedAt),
		UpdatedAt:           tsOf(o.UpdatedAt),
	}
}

// maskCredential shows references ("os.environ/NAME") as they are and hides literals.
func maskCredential(s string) string {
	if s == "" || strings.HasPrefix(s, "os.environ/") {
		return s
	}
	return "********"
}

func modelOut(m *store.Model) *adminv1.ModelDeployment {
	price := func(p int64) *wrapperspb.DoubleValue {
		if p == 0 {
			return nil
		}
		return wrapperspb.Double(money.PriceToUSD(p))
	}
	info := &adminv1.ModelInfo{
		Id:                 m.ID,
		AccessGroups:       m.AccessGroups,
		InputCostPerToken:  price(m.InputCostPerToken),
		OutputCostPerToken: price(m.OutputCostPerToken),
		DbModel:            !m.FromConfig,
	}
	if len(m.ModelInfo) > 0 {
		var extra struct {
			Mode      string `json:"mode"`
			BaseModel string `json:"base_model"`
		}
		if json.Unmarshal(m.ModelInfo, &extra) == nil {
			info.Mode, info.BaseModel = extra.Mode, extra.BaseModel
		}
	}
	out := &adminv1.ModelDeployment{
		ModelName: m.ModelName,
		LitellmParams: &adminv1.LiteLLMParams{
			Model:              m.UpstreamModel,
			ApiBase:            m.APIBase,
			ApiKey:             maskCredential(m.APIKey),
			ApiVersion:         m.APIVersion,
			InputCostPerToken:  price(m.InputCostPerToken),
			OutputCostPerToken: price(m.OutputCostPerToken),
			Rpm:                limitValue(m.RPM),
			Tpm:                limitValue(m.TPM),
		},
		ModelInfo: info,
	}
	unitPricesOut(m, out.ModelInfo, out.LitellmParams)
	return out
}

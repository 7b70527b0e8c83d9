package settings

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/tollgate-gw/tollgate/controlplane/pkg/money"
)

// General is the part of general_settings Tollgate interprets. Every other
// field is kept, unvalidated, in Extra: operators pass many LiteLLM settings
// that Tollgate does not use, and those must not be rejected.
//
// A JSON null is treated like an absent field.
type General struct {
	// ServiceAccountSettings is service_account_settings.
	ServiceAccountSettings ServiceAccountSettings
	// KeyGenerationSettings is key_generation_settings.
	KeyGenerationSettings KeyGenerationSettings
	// CustomKeyGenerateWebhook is custom_key_generate_webhook: an http(s) URL
	// consulted before a key is created.
	CustomKeyGenerateWebhook string
	// Alerting is alerting, e.g. ["slack", "email"].
	Alerting []string
	// MaxEndUserBudget is max_end_user_budget in USD; nil when unset.
	MaxEndUserBudget *float64
	// StorePromptsInSpendLogs is store_prompts_in_spend_logs.
	StorePromptsInSpendLogs bool
	// EnforceUserParam is enforce_user_param: every proxy request must carry
	// "user".
	EnforceUserParam bool
	// Extra holds every top-level field not listed above, as given
	// (master_key and database_url included, when present).
	Extra map[string]json.RawMessage
}

// ServiceAccountSettings is general_settings.service_account_settings.
type ServiceAccountSettings struct {
	// EnforcedParams are request body params every call made with a service
	// account key must carry ("user", or a nested path like
	// "metadata.generation_name").
	EnforcedParams []string
}

// KeyGenerationSettings is general_settings.key_generation_settings, in
// LiteLLM's shape. The zero value restricts nothing.
type KeyGenerationSettings struct {
	TeamKeyGeneration     TeamKeyGeneration
	PersonalKeyGeneration PersonalKeyGeneration
}

// TeamKeyGeneration is key_generation_settings.team_key_generation.
type TeamKeyGeneration struct {
	// AllowedTeamMemberRoles are the team roles ("admin", "user") whose
	// members may create team keys. nil means the field is absent: any team
	// member may; a non-nil empty list means no team member may.
	AllowedTeamMemberRoles []string
	// RequiredParams are /key/generate fields a team key request must set.
	RequiredParams []string
}

// PersonalKeyGeneration is key_generation_settings.personal_key_generation.
type PersonalKeyGeneration struct {
	// AllowedUserRoles are the user roles ("proxy_admin", "internal_user",
	// ...) that may create personal keys. nil means the field is absent: any
	// role may; a non-nil empty list means no role may.
	AllowedUserRoles []string
	// RequiredParams are /key/generate fields a personal key request must set.
	RequiredParams []string
}

// RoleAllowed reports whether a team member with teamRole may create team
// keys under these settings.
func (t TeamKeyGeneration) RoleAllowed(teamRole string) bool {
	return t.AllowedTeamMemberRoles == nil || slices.Contains(t.AllowedTeamMemberRoles, teamRole)
}

// RoleAllowed reports whether a user with userRole may create personal keys
// under these settings.
func (p PersonalKeyGeneration) RoleAllowed(userRole string) bool {
	return p.AllowedUserRoles == nil || slices.Contains(p.AllowedUserRoles, userRole)
}

// TeamMemberRoles are the values allowed in allowed_team_member_roles.
var TeamMemberRoles = []string{"admin", "user"}

// UserRoles are the values allowed in allowed_user_roles (LiteLLM's
// LitellmUserRoles).
var UserRoles = []string{
	"proxy_admin", "proxy_admin_viewer", "org_admin",
	"internal_user", "internal_user_viewer", "team", "customer",
}

// Limits on what Validate accepts.
const (
	MaxListLen   = 256  // entries in any list
	MaxStringLen = 2048 // bytes in any string
)

// Error is a validation error at Path, a dotted path relative to
// general_settings with list indexes in brackets, e.g.
// "key_generation_settings.team_key_generation.allowed_team_member_roles[1]".
// An empty Path is general_settings itself.
type Error struct {
	Path string
	Msg  string
}

// Error renders "general_settings.<path> <msg>".
func (e *Error) Error() string {
	if e.Path == "" {
		return "general_settings " + e.Msg
	}
	return "general_settings." + e.Path + " " + e.Msg
}

// Validate reports whether raw is an acceptable general_settings object. The
// error, if any, is an *Error.
func Validate(raw json.RawMessage) error {
	_, err := Parse(raw)
	return err
}

// Parse validates raw (a JSON object, or empty / null for no settings) and
// returns its typed view. The error, if any, is an *Error naming the first
// offending field.
func Parse(raw json.RawMessage) (General, error) {
	var g General
	if isNull(raw) {
		return g, nil
	}
	if kind(raw) != '{' {
		return g, &Error{Msg: "must be an object"}
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return g, &Error{Msg: "must be a valid JSON object"}
	}
	var err error
	if v, ok := present(fields, "service_account_settings"); ok {
		if err = parseServiceAccount(v, &g.ServiceAccountSettings); err != nil {
			return General{}, err
		}
	}
	if v, ok := present(fields, "key_generation_settings"); ok {
		if err = parseKeyGeneration(v, &g.KeyGenerationSettings); err != nil {
			return General{}, err
		}
	}
	if v, ok := present(fields, "custom_key_generate_webhook"); ok {
		if g.CustomKeyGenerateWebhook, err = parseURL("custom_key_generate_webhook", v); err != nil {
			return General{}, err
		}
	}
	if v, ok := present(fields, "alerting"); ok {
		if g.Alerting, err = stringList("alerting", v, nil); err != nil {
			return General{}, err
		}
	}
	if v, ok := present(fields, "max_end_user_budget"); ok {
		var f float64
		if kind(v) != 'n' || json.Unmarshal(v, &f) != nil {
			return General{}, &Error{Path: "max_end_user_budget", Msg: "must be a number of USD"}
		}
		if _, err := money.FromUSD(f); err != nil {
			return General{}, &Error{Path: "max_end_user_budget", Msg: "must be a finite, non-negative number of USD (at most 1e9)"}
		}
		g.MaxEndUserBudget = &f
	}
	if v, ok := present(fields, "store_prompts_in_spend_logs"); ok {
		if g.StorePromptsInSpendLogs, err = parseBool("store_prompts_in_spend_logs", v); err != nil {
			return General{}, err
		}
	}
	if v, ok := present(fields, "enforce_user_param"); ok {
		if g.EnforceUserParam, err = parseBool("enforce_user_param", v); err != nil {
			return General{}, err
		}
	}
	for k, v := range fields {
		if _, known := knownFields[k]; known {
			continue
		}
		if g.Extra == nil {
			g.Extra = make(map[string]json.RawMessage)
		}
		g.Extra[k] = v
	}
	return g, nil
}

var knownFields = map[string]struct{}{
	"service_account_settings":    {},
	"key_generation_settings":     {},
	"custom_key_generate_webhook": {},
	"alerting":                    {},
	"max_end_user_budget":         {},
	"store_prompts_in_spend_logs": {},
	"enforce_user_param":          {},
}

// parseServiceAccount decodes service_account_settings. Unknown fields are
// refused: a misspelt enforced_params would silently enforce nothing.
func parseServiceAccount(raw json.RawMessage, out *ServiceAccountSettings) error {
	const p = "service_account_settings"
	fields, err := strictObject(p, raw, "enforced_params")
	if err != nil {
		return err
	}
	if v, ok := present(fields, "enforced_params"); ok {
		if out.EnforcedParams, err = stringList(p+".enforced_params", v, nil); err != nil {
			return err
		}
	}
	return nil
}

// parseKeyGeneration decodes key_generation_settings. Unknown fields are
// refused at every level: a misspelt restriction would silently allow
// everyone to create keys.
func parseKeyGeneration(raw json.RawMessage, out *KeyGenerationSettings) error {
	const p = "key_generation_settings"
	fields, err := strictObject(p, raw, "team_key_generation", "personal_key_generation")
	if err != nil {
		return err
	}
	if v, ok := present(fields, "team_key_generation"); ok {
		const tp = p + ".team_key_generation"
		tf, err := strictObject(tp, v, "allowed_team_member_roles", "required_params")
		if err != nil {
			return err
		}
		if r, ok := present(tf, "allowed_team_member_roles"); ok {
			if out.TeamKeyGeneration.AllowedTeamMemberRoles, err = stringList(tp+".allowed_team_member_roles", r, TeamMemberRoles); err != nil {
				return err
			}
		}
		if r, ok := present(tf, "required_params"); ok {
			if out.TeamKeyGeneration.RequiredParams, err = stringList(tp+".required_params", r, nil); err != nil {
				return err
			}
		}
	}
	if v, ok := present(fields, "personal_key_generation"); ok {
		const pp = p + ".personal_key_generation"
		pf, err := strictObject(pp, v, "allowed_user_roles", "required_params")
		if err != nil {
			return err
		}
		if r, ok := present(pf, "allowed_user_roles"); ok {
			if out.PersonalKeyGeneration.AllowedUserRoles, err = stringList(pp+".allowed_user_roles", r, UserRoles); err != nil {
				return err
			}
		}
		if r, ok := present(pf, "required_params"); ok {
			if out.PersonalKeyGeneration.RequiredParams, err = stringList(pp+".required_params", r, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// strictObject decodes an object that may hold only the allowed fields; the
// first unknown field (in sorted order, for stable messages) is an error.
func strictObject(path string, raw json.RawMessage, allowed ...string) (map[string]json.RawMessage, error) {
	if kind(raw) != '{' {
		return nil, &Error{Path: path, Msg: "must be an object"}
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, &Error{Path: path, Msg: "must be a valid JSON object"}
	}
	var unknown []string
	for k := range fields {
		if !slices.Contains(allowed, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, &Error{Path: path + "." + unknown[0], Msg: "is not a known field (expected one of: " + strings.Join(allowed, ", ") + ")"}
	}
	return fields, nil
}

// stringList decodes a list of non-empty strings. When allowed is non-nil,
// every entry must be one of its values. A present list is never nil, so
// that [] (nobody) stays distinct from an absent field (no restriction).
func stringList(path string, raw json.RawMessage, allowed []string) ([]string, error) {
	if kind(raw) != '[' {
		return nil, &Error{Path: path, Msg: "must be a list of strings"}
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, &Error{Path: path, Msg: "must be a list of strings"}
	}
	if len(items) > MaxListLen {
		return nil, &Error{Path: path, Msg: fmt.Sprintf("has more than %d entries", MaxListLen)}
	}
	out := make([]string, 0, len(items))
	for i, it := range items {
		ip := path + "[" + strconv.Itoa(i) + "]"
		var s string
		if kind(it) != '"' || json.Unmarshal(it, &s) != nil {
			return nil, &Error{Path: ip, Msg: "must be a string"}
		}
		if s == "" || len(s) > MaxStringLen {
			return nil, &Error{Path: ip, Msg: fmt.Sprintf("must be a non-empty string of at most %d bytes", MaxStringLen)}
		}
		if allowed != nil && !slices.Contains(allowed, s) {
			return nil, &Error{Path: ip, Msg: fmt.Sprintf("%q is not one of: %s", s, strings.Join(allowed, ", "))}
		}
		out = append(out, s)
	}
	return out, nil
}

func parseBool(path string, raw json.RawMessage) (bool, error) {
	switch string(bytes.TrimSpace(raw)) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, &Error{Path: path, Msg: "must be true or false"}
}

func parseURL(path string, raw json.RawMessage) (string, error) {
	var s string
	if kind(raw) != '"' || json.Unmarshal(raw, &s) != nil {
		return "", &Error{Path: path, Msg: "must be a string"}
	}
	if s == "" {
		return "", nil
	}
	u, err := url.Parse(s)
	if err != nil || len(s) > MaxStringLen || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", &Error{Path: path, Msg: "must be an http(s) URL"}
	}
	return s, nil
}

// present returns fields[name] unless it is absent or null.
func present(fields map[string]json.RawMessage, name string) (json.RawMessage, bool) {
	v, ok := fields[name]
	if !ok || isNull(v) {
		return nil, false
	}
	return v, true
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

// kind returns the JSON type of raw by its first byte: '{', '[', '"', 'n'
// (number), 't'/'f' (booleans), 0 (null or empty), or the byte itself.
func kind(raw json.RawMessage) byte {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return 0
	}
	switch c := t[0]; {
	case c == '-' || (c >= '0' && c <= '9'):
		return 'n'
	case c == 'n':
		return 0
	default:
		return c
	}
}

package settings

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func ptr[T any](v T) *T { return &v }

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want General
	}{
		{name: "empty input", in: ``, want: General{}},
		{name: "null", in: `null`, want: General{}},
		{name: "empty object", in: `{}`, want: General{}},
		{
			name: "litellm docs example",
			in: `{
				"master_key": "os.environ/LITELLM_MASTER_KEY",
				"service_account_settings": {"enforced_params": ["user"]},
				"key_generation_settings": {
					"team_key_generation": {"allowed_team_member_roles": ["admin"], "required_params": ["tags"]},
					"personal_key_generation": {"allowed_user_roles": ["proxy_admin"]}
				},
				"custom_key_generate_webhook": "https://hooks.example.com/keys",
				"alerting": ["slack", "email"],
				"max_end_user_budget": 0.0001,
				"store_prompts_in_spend_logs": true,
				"enforce_user_param": false,
				"proxy_batch_write_at": 60,
				"disable_spend_logs": false
			}`,
			want: General{
				ServiceAccountSettings: ServiceAccountSettings{EnforcedParams: []string{"user"}},
				KeyGenerationSettings: KeyGenerationSettings{
					TeamKeyGeneration:     TeamKeyGeneration{AllowedTeamMemberRoles: []string{"admin"}, RequiredParams: []string{"tags"}},
					PersonalKeyGeneration: PersonalKeyGeneration{AllowedUserRoles: []string{"proxy_admin"}},
				},
				CustomKeyGenerateWebhook: "https://hooks.example.com/keys",
				Alerting:                 []string{"slack", "email"},
				MaxEndUserBudget:         ptr(0.0001),
				StorePromptsInSpendLogs:  true,
				Extra: map[string]json.RawMessage{
					"master_key":           json.RawMessage(`"os.environ/LITELLM_MASTER_KEY"`),
					"proxy_batch_write_at": json.RawMessage(`60`),
					"disable_spend_logs":   json.RawMessage(`false`),
				},
			},
		},
		{
			name: "nulls are absent",
			in: `{"service_account_settings": null, "key_generation_settings": {"team_key_generation": null,
				"personal_key_generation": {"allowed_user_roles": null}}, "alerting": null,
				"max_end_user_budget": null, "store_prompts_in_spend_logs": null, "custom_key_generate_webhook": null}`,
			want: General{},
		},
		{
			name: "empty role list stays non-nil",
			in:   `{"key_generation_settings": {"team_key_generation": {"allowed_team_member_roles": []}}}`,
			want: General{KeyGenerationSettings: KeyGenerationSettings{TeamKeyGeneration: TeamKeyGeneration{AllowedTeamMemberRoles: []string{}}}},
		},
		{
			name: "nested enforced param and empty webhook",
			in:   `{"service_account_settings": {"enforced_params": ["user", "metadata.generation_name"]}, "custom_key_generate_webhook": ""}`,
			want: General{ServiceAccountSettings: ServiceAccountSettings{EnforcedParams: []string{"user", "metadata.generation_name"}}},
		},
		{
			name: "zero budget",
			in:   `{"max_end_user_budget": 0}`,
			want: General{MaxEndUserBudget: ptr(0.0)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(json.RawMessage(tc.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Parse =\n%#v\nwant\n%#v", got, tc.want)
			}
			if err := Validate(json.RawMessage(tc.in)); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		path     string // Error.Path
		msg      string // substring of Error()
	}{
		{"not an object", `["user"]`, "", "general_settings must be an object"},
		{"string", `"x"`, "", "general_settings must be an object"},
		{"invalid json", `{"a":`, "", "general_settings must be a valid JSON object"},
		{"service_account_settings not object", `{"service_account_settings": ["user"]}`,
			"service_account_settings", "general_settings.service_account_settings must be an object"},
		{"service_account_settings typo", `{"service_account_settings": {"enforce_params": ["user"]}}`,
			"service_account_settings.enforce_params", "is not a known field (expected one of: enforced_params)"},
		{"enforced_params not a list", `{"service_account_settings": {"enforced_params": "user"}}`,
			"service_account_settings.enforced_params", "general_settings.service_account_settings.enforced_params must be a list of strings"},
		{"enforced_params entry not string", `{"service_account_settings": {"enforced_params": ["user", 3]}}`,
			"service_account_settings.enforced_params[1]", "general_settings.service_account_settings.enforced_params[1] must be a string"},
		{"enforced_params empty entry", `{"service_account_settings": {"enforced_params": [""]}}`,
			"service_account_settings.enforced_params[0]", "must be a non-empty string"},
		{"enforced_params too long", `{"service_account_settings": {"enforced_params": [` + strings.Repeat(`"u",`, MaxListLen) + `"u"]}}`,
			"service_account_settings.enforced_params", "has more than 256 entries"},
		{"key_generation_settings not object", `{"key_generation_settings": true}`,
			"key_generation_settings", "must be an object"},
		{"key_generation_settings typo", `{"key_generation_settings": {"team_key_generations": {}}}`,
			"key_generation_settings.team_key_generations", "is not a known field"},
		{"team role typo", `{"key_generation_settings": {"team_key_generation": {"allowed_team_member_role": ["admin"]}}}`,
			"key_generation_settings.team_key_generation.allowed_team_member_role", "is not a known field"},
		{"team role unknown", `{"key_generation_settings": {"team_key_generation": {"allowed_team_member_roles": ["admin", "owner"]}}}`,
			"key_generation_settings.team_key_generation.allowed_team_member_roles[1]", `"owner" is not one of: admin, user`},
		{"team required_params not list", `{"key_generation_settings": {"team_key_generation": {"required_params": "tags"}}}`,
			"key_generation_settings.team_key_generation.required_params", "must be a list of strings"},
		{"personal not object", `{"key_generation_settings": {"personal_key_generation": ["proxy_admin"]}}`,
			"key_generation_settings.personal_key_generation", "must be an object"},
		{"personal role unknown", `{"key_generation_settings": {"personal_key_generation": {"allowed_user_roles": ["admin"]}}}`,
			"key_generation_settings.personal_key_generation.allowed_user_roles[0]", `"admin" is not one of: proxy_admin`},
		{"personal required_params entry", `{"key_generation_settings": {"personal_key_generation": {"required_params": [null]}}}`,
			"key_generation_settings.personal_key_generation.required_params[0]", "must be a string"},
		{"webhook not string", `{"custom_key_generate_webhook": 1}`,
			"custom_key_generate_webhook", "must be a string"},
		{"webhook not url", `{"custom_key_generate_webhook": "hooks.example.com/keys"}`,
			"custom_key_generate_webhook", "must be an http(s) URL"},
		{"webhook bad scheme", `{"custom_key_generate_webhook": "file:///etc/passwd"}`,
			"custom_key_generate_webhook", "must be an http(s) URL"},
		{"alerting string", `{"alerting": "slack"}`, "alerting", "general_settings.alerting must be a list of strings"},
		{"budget string", `{"max_end_user_budget": "10"}`, "max_end_user_budget", "must be a number of USD"},
		{"budget negative", `{"max_end_user_budget": -1}`, "max_end_user_budget", "must be a finite, non-negative number"},
		{"budget huge", `{"max_end_user_budget": 1e13}`, "max_end_user_budget", "must be a finite, non-negative number"},
		{"store prompts string", `{"store_prompts_in_spend_logs": "true"}`, "store_prompts_in_spend_logs", "must be true or false"},
		{"enforce_user_param number", `{"enforce_user_param": 1}`, "enforce_user_param", "must be true or false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(json.RawMessage(tc.in))
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse error = %v, want *Error", err)
			}
			if e.Path != tc.path {
				t.Errorf("Path = %q, want %q", e.Path, tc.path)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not contain %q", err, tc.msg)
			}
			if Validate(json.RawMessage(tc.in)) == nil {
				t.Error("Validate accepted what Parse refused")
			}
		})
	}
}

func TestRoleAllowed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		roles []string
		role  string
		want  bool
	}{
		{"absent allows all", nil, "user", true},
		{"empty allows none", []string{}, "admin", false},
		{"listed", []string{"admin"}, "admin", true},
		{"not listed", []string{"admin"}, "user", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := (TeamKeyGeneration{AllowedTeamMemberRoles: tc.roles}).RoleAllowed(tc.role); got != tc.want {
				t.Errorf("team RoleAllowed(%q) = %v", tc.role, got)
			}
			if got := (PersonalKeyGeneration{AllowedUserRoles: tc.roles}).RoleAllowed(tc.role); got != tc.want {
				t.Errorf("personal RoleAllowed(%q) = %v", tc.role, got)
			}
		})
	}
}

func TestParseZeroOnError(t *testing.T) {
	g, err := Parse(json.RawMessage(`{"alerting": ["slack"], "max_end_user_budget": -5}`))
	if err == nil || !reflect.DeepEqual(g, General{}) {
		t.Fatalf("Parse = %#v, %v; want zero General and an error", g, err)
	}
}

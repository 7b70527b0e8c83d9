package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/tollgate-gw/tollgate/controlplane/internal/store"
	"github.com/tollgate-gw/tollgate/controlplane/pkg/settings"
)

// realistic is shaped like the LiteLLM proxy docs' config.yaml.
const realistic = `# LiteLLM proxy config
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_key: os.environ/OPENAI_API_KEY
      rpm: 500
      tpm: 200000
    model_info:
      id: gpt-4o-mini-openai
      access_groups: ["beta-models"]
      input_cost_per_token: 0.00000015
      output_cost_per_token: 0.0000006
  - model_name: gpt-4o-mini
    litellm_params:
      model: azure/gpt-4o-mini
      api_base: https://my-endpoint.openai.azure.com/
      api_key: os.environ/AZURE_API_KEY
      api_version: "2024-08-01-preview"
      input_cost_per_token: 0.00000016
      output_cost_per_token: 6.6e-7
      timeout: 30
      max_retries: 2
    model_info:
      mode: chat
      base_model: azure/gpt-4o-mini
  - model_name: text-embedding-3-small
    litellm_params:
      model: openai/text-embedding-3-small
      api_key: os.environ/OPENAI_API_KEY
      input_cost_per_token: 2e-8
    model_info:
      mode: embedding

litellm_settings:
  drop_params: true
  success_callback: ["prometheus"]
  num_retries: 3

router_settings:
  routing_strategy: simple-shuffle
  redis_host: os.environ/REDIS_HOST

general_settings:
  master_key: os.environ/TOLLGATE_TEST_MASTER_KEY
  database_url: os.environ/TOLLGATE_TEST_DATABASE_URL
  alerting: ["slack"]
  service_account_settings:
    enforced_params: ["user"]
  key_generation_settings:
    team_key_generation:
      allowed_team_member_roles: ["admin"]
      required_params: ["tags"]
    personal_key_generation:
      allowed_user_roles: ["proxy_admin", "internal_user"]
  max_end_user_budget: 5.0
  store_prompts_in_spend_logs: false
  proxy_batch_write_at: 60

environment_variables:
  LANGFUSE_HOST: https://cloud.langfuse.com
`

func derived(name string, n int) string {
	sum := sha256.Sum256([]byte("config:" + name + "\x00" + strconv.Itoa(n)))
	return hex.EncodeToString(sum[:])[:32]
}

func i64(v int64) *int64 { return &v }

func setEnv(t *testing.T) {
	t.Setenv("TOLLGATE_TEST_MASTER_KEY", "sk-master-1234")
	t.Setenv("TOLLGATE_TEST_DATABASE_URL", "postgres://tollgate:pw@db:5432/tollgate")
}

func TestParseRealistic(t *testing.T) {
	setEnv(t)
	cfg, err := Parse([]byte(realistic), "config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := []store.Model{
		{
			ID: "gpt-4o-mini-openai", ModelName: "gpt-4o-mini", UpstreamModel: "openai/gpt-4o-mini",
			APIKey: "os.environ/OPENAI_API_KEY", InputCostPerToken: 150_000, OutputCostPerToken: 600_000,
			AccessGroups: []string{"beta-models"}, RPM: i64(500), TPM: i64(200000),
			ModelInfo:  json.RawMessage(`{"access_groups":["beta-models"],"id":"gpt-4o-mini-openai","input_cost_per_token":1.5e-7,"output_cost_per_token":6e-7}`),
			FromConfig: true,
		},
		{
			ID: derived("gpt-4o-mini", 0), ModelName: "gpt-4o-mini", UpstreamModel: "azure/gpt-4o-mini",
			APIBase: "https://my-endpoint.openai.azure.com/", APIKey: "os.environ/AZURE_API_KEY", APIVersion: "2024-08-01-preview",
			InputCostPerToken: 160_000, OutputCostPerToken: 660_000,
			Params:     json.RawMessage(`{"max_retries":2,"timeout":30}`),
			ModelInfo:  json.RawMessage(`{"base_model":"azure/gpt-4o-mini","mode":"chat"}`),
			FromConfig: true,
		},
		{
			ID: derived("text-embedding-3-small", 0), ModelName: "text-embedding-3-small", UpstreamModel: "openai/text-embedding-3-small",
			APIKey: "os.environ/OPENAI_API_KEY", InputCostPerToken: 20_000,
			ModelInfo:  json.RawMessage(`{"mode":"embedding"}`),
			FromConfig: true,
		},
	}
	if len(cfg.Models) != len(want) {
		t.Fatalf("got %d models, want %d", len(cfg.Models), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(cfg.Models[i], want[i]) {
			t.Errorf("model %d:\n got %+v\nwant %+v", i, cfg.Models[i], want[i])
		}
	}
	// Pinned: changing the id derivation would recreate every config model.
	if got := cfg.Models[1].ID; got != "448665bc1a3dd52d94d9916e17d1a7e4" {
		t.Errorf("derived id = %s", got)
	}
	if cfg.MasterKey != "sk-master-1234" || cfg.DatabaseURL != "postgres://tollgate:pw@db:5432/tollgate" {
		t.Errorf("MasterKey/DatabaseURL = %q, %q", cfg.MasterKey, cfg.DatabaseURL)
	}
	if bytes.Contains(cfg.GeneralSettings, []byte("master_key")) || bytes.Contains(cfg.GeneralSettings, []byte("database_url")) {
		t.Errorf("GeneralSettings keeps secrets: %s", cfg.GeneralSettings)
	}
	g, err := settings.Parse(cfg.GeneralSettings)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g.ServiceAccountSettings.EnforcedParams, []string{"user"}) ||
		!reflect.DeepEqual(g.KeyGenerationSettings.TeamKeyGeneration.AllowedTeamMemberRoles, []string{"admin"}) ||
		!reflect.DeepEqual(g.KeyGenerationSettings.TeamKeyGeneration.RequiredParams, []string{"tags"}) ||
		!reflect.DeepEqual(g.KeyGenerationSettings.PersonalKeyGeneration.AllowedUserRoles, []string{"proxy_admin", "internal_user"}) ||
		g.MaxEndUserBudget == nil || *g.MaxEndUserBudget != 5 || string(g.Extra["proxy_batch_write_at"]) != "60" {
		t.Errorf("general settings = %+v", g)
	}
	for name, got := range map[string]json.RawMessage{
		"litellm_settings":      cfg.LiteLLMSettings,
		"router_settings":       cfg.RouterSettings,
		"environment_variables": cfg.EnvironmentVariables,
	} {
		want := map[string]string{
			"litellm_settings":      `{"drop_params":true,"num_retries":3,"success_callback":["prometheus"]}`,
			"router_settings":       `{"redis_host":"os.environ/REDIS_HOST","routing_strategy":"simple-shuffle"}`,
			"environment_variables": `{"LANGFUSE_HOST":"https://cloud.langfuse.com"}`,
		}[name]
		if string(got) != want {
			t.Errorf("%s = %s, want %s", name, got, want)
		}
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings: %q", cfg.Warnings)
	}

	// Same file, same ids.
	again, err := Parse([]byte(realistic), "config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Models {
		if again.Models[i].ID != cfg.Models[i].ID {
			t.Errorf("model %d id changed between parses", i)
		}
	}
}

func TestParse(t *testing.T) {
	setEnv(t)
	for _, tc := range []struct {
		name  string
		in    string
		check func(t *testing.T, c *Config)
		warn  []string // substrings, one per expected warning
	}{
		{
			name: "empty file",
			in:   "",
			warn: []string{"config.yaml: the config is empty"},
			check: func(t *testing.T, c *Config) {
				if c.Models != nil || c.GeneralSettings != nil {
					t.Errorf("%+v", c)
				}
			},
		},
		{
			name: "comments only",
			in:   "# nothing yet\n",
			warn: []string{"the config is empty"},
		},
		{
			name: "null sections",
			in:   "model_list:\ngeneral_settings:\nlitellm_settings: ~\n",
			check: func(t *testing.T, c *Config) {
				if c.Models != nil || c.GeneralSettings != nil || c.LiteLLMSettings != nil {
					t.Errorf("%+v", c)
				}
			},
		},
		{
			name: "master key only leaves empty settings",
			in:   "general_settings:\n  master_key: os.environ/TOLLGATE_TEST_MASTER_KEY\n",
			check: func(t *testing.T, c *Config) {
				if string(c.GeneralSettings) != "{}" || c.MasterKey != "sk-master-1234" {
					t.Errorf("GeneralSettings=%s MasterKey=%q", c.GeneralSettings, c.MasterKey)
				}
			},
		},
		{
			name: "literal secrets warn",
			in: `model_list:
  - model_name: m
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-proj-literal
general_settings:
  master_key: sk-1234
  database_url: postgres://localhost/db
`,
			warn: []string{
				"config.yaml:5: model_list[0].litellm_params.api_key is a literal secret",
				"config.yaml:7: general_settings.master_key is written in the config file",
			},
			check: func(t *testing.T, c *Config) {
				if c.Models[0].APIKey != "sk-proj-literal" || c.MasterKey != "sk-1234" || c.DatabaseURL != "postgres://localhost/db" {
					t.Errorf("%+v", c)
				}
				for _, w := range c.Warnings {
					if strings.Contains(w, "sk-proj-literal") || strings.Contains(w, "sk-1234") {
						t.Errorf("warning leaks a secret: %s", w)
					}
				}
			},
		},
		{
			name: "model_info prices win and params drop typed fields",
			in: `model_list:
  - model_name: m
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002
      temperature: 0.2
      extra_headers: {X-Team: a}
    model_info:
      input_cost_per_token: 0.0000025
`,
			check: func(t *testing.T, c *Config) {
				m := c.Models[0]
				if m.InputCostPerToken != 2_500_000 || m.OutputCostPerToken != 2_000_000 {
					t.Errorf("prices = %d, %d", m.InputCostPerToken, m.OutputCostPerToken)
				}
				if string(m.Params) != `{"extra_headers":{"X-Team":"a"},"temperature":0.2}` {
					t.Errorf("Params = %s", m.Params)
				}
			},
		},
		{
			name: "anchors and merge keys",
			in: `model_list:
  - model_name: a
    litellm_params: &base
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      rpm: 10
      timeout: 5
  - model_name: b
    litellm_params:
      <<: *base
      rpm: 20
    model_info:
      access_groups: &groups [g1, g2]
  - model_name: c
    litellm_params: *base
    model_info:
      access_groups: *groups
`,
			check: func(t *testing.T, c *Config) {
				if len(c.Models) != 3 {
					t.Fatalf("%d models", len(c.Models))
				}
				b := c.Models[1]
				if b.UpstreamModel != "openai/gpt-4o" || *b.RPM != 20 || string(b.Params) != `{"timeout":5}` ||
					!reflect.DeepEqual(b.AccessGroups, []string{"g1", "g2"}) {
					t.Errorf("b = %+v", b)
				}
				if *c.Models[0].RPM != 10 || *c.Models[2].RPM != 10 || !reflect.DeepEqual(c.Models[2].AccessGroups, []string{"g1", "g2"}) {
					t.Errorf("a/c = %+v / %+v", c.Models[0], c.Models[2])
				}
			},
		},
		{
			name: "unquoted date and numbers keep their text",
			in: `model_list:
  - model_name: m
    litellm_params:
      model: azure/gpt-4o
      api_version: 2024-02-01
      seed: 0x10
      organization: 2024-02-01
`,
			check: func(t *testing.T, c *Config) {
				m := c.Models[0]
				if m.APIVersion != "2024-02-01" || string(m.Params) != `{"organization":"2024-02-01","seed":16}` {
					t.Errorf("APIVersion=%q Params=%s", m.APIVersion, m.Params)
				}
			},
		},
		{
			name: "derived ids do not depend on other model names",
			in: `model_list:
  - model_name: new-model
    litellm_params: {model: openai/o3}
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini}
  - model_name: gpt-4o-mini
    litellm_params: {model: azure/gpt-4o-mini}
    model_info: {id: fixed}
  - model_name: gpt-4o-mini
    litellm_params: {model: azure/gpt-4o-mini, api_base: "os.environ/AZURE_API_BASE"}
`,
			check: func(t *testing.T, c *Config) {
				got := []string{c.Models[0].ID, c.Models[1].ID, c.Models[2].ID, c.Models[3].ID}
				want := []string{derived("new-model", 0), derived("gpt-4o-mini", 0), "fixed", derived("gpt-4o-mini", 1)}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("ids = %q, want %q", got, want)
				}
				if c.Models[3].APIBase != "os.environ/AZURE_API_BASE" {
					t.Errorf("APIBase = %q", c.Models[3].APIBase)
				}
			},
		},
		{
			name: "litellm_settings.key_generation_settings moves to general_settings",
			in: `litellm_settings:
  drop_params: true
  key_generation_settings:
    team_key_generation:
      allowed_team_member_roles: ["admin"]
`,
			warn: []string{"config.yaml:3: litellm_settings.key_generation_settings is applied as general_settings.key_generation_settings"},
			check: func(t *testing.T, c *Config) {
				g, err := settings.Parse(c.GeneralSettings)
				if err != nil || !reflect.DeepEqual(g.KeyGenerationSettings.TeamKeyGeneration.AllowedTeamMemberRoles, []string{"admin"}) {
					t.Errorf("GeneralSettings = %s, %v", c.GeneralSettings, err)
				}
			},
		},
		{
			name: "litellm_settings.max_end_user_budget moves to general_settings",
			in:   "litellm_settings:\n  max_end_user_budget: 0.5\n",
			warn: []string{"config.yaml:2: litellm_settings.max_end_user_budget is applied as general_settings.max_end_user_budget"},
			check: func(t *testing.T, c *Config) {
				g, err := settings.Parse(c.GeneralSettings)
				if err != nil || g.MaxEndUserBudget == nil || *g.MaxEndUserBudget != 0.5 {
					t.Errorf("GeneralSettings = %s, %v", c.GeneralSettings, err)
				}
			},
		},
		{
			name: "identical key_generation_settings in both places",
			in: `general_settings:
  key_generation_settings: {team_key_generation: {allowed_team_member_roles: [admin]}}
litellm_settings:
  key_generation_settings: {team_key_generation: {allowed_team_member_roles: [admin]}}
`,
		},
		{
			name: "other LiteLLM sections are ignored with a warning",
			in:   "guardrails:\n  - guardrail_name: x\ncredential_list: []\n",
			warn: []string{"config.yaml:1: guardrails is not supported", "config.yaml:3: credential_list is not supported"},
		},
		{
			name: "trailing document separator",
			in:   "model_list: []\n---\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.in), "config.yaml")
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(c.Warnings) != len(tc.warn) {
				t.Fatalf("warnings = %q, want %d", c.Warnings, len(tc.warn))
			}
			for i, w := range tc.warn {
				if !strings.Contains(c.Warnings[i], w) {
					t.Errorf("warning %q does not contain %q", c.Warnings[i], w)
				}
			}
			for _, m := range c.Models {
				if !m.FromConfig || m.ID == "" {
					t.Errorf("model %+v", m)
				}
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	setEnv(t)
	t.Setenv("TOLLGATE_TEST_EMPTY", "")
	for _, tc := range []struct {
		name string
		in   string
		want string // the first error, exactly
	}{
		// YAML syntax.
		{"misindented key", "model_list:\n  - model_name: a\n   litellm_params: {}\n",
			"config.yaml:3: invalid YAML: did not find expected '-' indicator"},
		{"tab indentation", "model_list:\n  - model_name: a\n\tlitellm_params: {}\n",
			"config.yaml:3: invalid YAML: found a tab character that violates indentation"},
		{"unterminated quote", "model_list: []\ngeneral_settings:\n  alerting: \"slack\n",
			"config.yaml:3: invalid YAML: found unexpected end of stream"},
		{"unclosed flow list", "model_list: []\ngeneral_settings: [1, 2\n",
			"config.yaml:2: invalid YAML: did not find expected ',' or ']'"},
		{"error on line 1", "model_list: x: y\n",
			"config.yaml:1: invalid YAML: mapping values are not allowed in this context"},
		{"dedented key", "general_settings:\n  alerting: []\n  store_prompts_in_spend_logs: true\n master_key: x\n",
			"config.yaml:4: invalid YAML: did not find expected key"},
		{"unknown anchor", "model_list: []\ngeneral_settings:\n  alerting: *nope\n",
			"config.yaml:3: invalid YAML: unknown anchor 'nope' referenced"},
		{"second document", "model_list: []\n---\ngeneral_settings: {}\n",
			"config.yaml:3: the file holds a second YAML document (after ---); put the whole config in one document"},

		// Structure.
		{"top level is a list", "- model_name: a\n",
			"config.yaml:1:1: the config must be a mapping of sections (model_list, general_settings, ...), not a list"},
		{"unknown top-level key", "general_settings: {}\nmodel_lists:\n  - model_name: a\n",
			`config.yaml:2:1: unknown top-level key "model_lists"; did you mean "model_list"?`},
		{"unknown top-level key, no near miss", "model_list: []\nfoo: 1\n",
			`config.yaml:2:1: unknown top-level key "foo" (expected one of: model_list, general_settings, litellm_settings, router_settings, environment_variables)`},
		{"include", "include:\n  - models.yaml\nmodel_list: []\n",
			"config.yaml:1:1: include is not supported: put the whole config in this file"},
		{"duplicate top-level key", "model_list: []\ngeneral_settings: {}\nmodel_list: []\n",
			"config.yaml:3:1: model_list is defined twice (first at line 1)"},
		{"model_list is a mapping", "model_list:\n  model_name: a\n",
			"config.yaml:1:1: model_list must be a list of models, not a mapping"},
		{"model_list is a string", "model_list: gpt-4o\n",
			"config.yaml:1:13: model_list must be a list of models, not a string"},
		{"litellm_settings is a list", "litellm_settings: [drop_params]\n",
			"config.yaml:1:19: litellm_settings must be a mapping, not a list"},
		{"general_settings is a list", "model_list: []\ngeneral_settings:\n  - master_key\n",
			"config.yaml:2:1: general_settings must be a mapping, not a list"},
		{"recursive alias", "router_settings: &r\n  self: *r\n",
			"config.yaml:2:9: router_settings.self uses alias *r inside the value it names"},

		// Models.
		{"model entry is a string", "model_list:\n  - gpt-4o\n",
			"config.yaml:2:5: model_list[0] must be a mapping with model_name and litellm_params, not a string"},
		{"model_name missing", "model_list:\n  - litellm_params:\n      model: openai/gpt-4o\n",
			"config.yaml:2: model_list[0].model_name is required"},
		{"model_name empty", "model_list:\n  - model_name: \"\"\n    litellm_params: {model: openai/gpt-4o}\n",
			"config.yaml:2:17: model_list[0].model_name must be a non-empty string"},
		{"litellm_params missing", "model_list:\n  - model_name: a\n",
			"config.yaml:2: model_list[0].litellm_params is required"},
		{"litellm_params misspelt", "model_list:\n  - model_name: a\n    litelm_params: {model: x}\n",
			"config.yaml:2: model_list[0].litellm_params is required"},
		{"litellm_params is a string", "model_list:\n  - model_name: a\n    litellm_params: openai/gpt-4o\n",
			"config.yaml:3:21: model_list[0].litellm_params must be a mapping, not a string"},
		{"model required", `model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
  # the third entry forgot its upstream model
  - model_name: claude
    model_info:
      mode: chat
    litellm_params:
      api_key: os.environ/ANTHROPIC_API_KEY
`, "config.yaml:12: model_list[2].litellm_params.model is required"},
		{"model is a list", "model_list:\n  - model_name: a\n    litellm_params:\n      model: [openai/gpt-4o]\n",
			"config.yaml:4:14: model_list[0].litellm_params.model must be a string, not a list"},
		{"negative price", `model_list:
  - model_name: a
    litellm_params:
      model: openai/gpt-4o
      input_cost_per_token: -0.000001
`, "config.yaml:5:29: model_list[0].litellm_params.input_cost_per_token must be a non-negative number (USD per token, at most 1000)"},
		{"price as a string", `model_list:
  - model_name: a
    litellm_params:
      model: openai/gpt-4o
    model_info:
      output_cost_per_token: "0.000002"
`, "config.yaml:6:30: model_list[0].model_info.output_cost_per_token must be a non-negative number (USD per token), not a string"},
		{"price NaN", "model_list:\n  - model_name: a\n    litellm_params:\n      model: x\n      input_cost_per_token: .nan\n",
			"config.yaml:5:29: model_list[0].litellm_params.input_cost_per_token must be a non-negative number (USD per token, at most 1000)"},
		{"negative rpm", "model_list:\n  - model_name: a\n    litellm_params:\n      model: x\n      rpm: -1\n",
			"config.yaml:5:12: model_list[0].litellm_params.rpm must be a non-negative integer"},
		{"fractional tpm", "model_list:\n  - model_name: a\n    litellm_params:\n      model: x\n      tpm: 1.5\n",
			"config.yaml:5:12: model_list[0].litellm_params.tpm must be a non-negative integer"},
		{"api_base not a URL", "model_list:\n  - model_name: a\n    litellm_params:\n      model: x\n      api_base: my-host:8000\n",
			"config.yaml:5:17: model_list[0].litellm_params.api_base must be an http(s) URL or os.environ/NAME"},
		{"api_key reference without a name", "model_list:\n  - model_name: a\n    litellm_params:\n      model: x\n      api_key: os.environ/\n",
			"config.yaml:5:16: model_list[0].litellm_params.api_key: os.environ/ needs a variable name (os.environ/NAME)"},
		{"api_key is a mapping", "model_list:\n  - model_name: a\n    litellm_params:\n      model: x\n      api_key:\n        env: OPENAI_API_KEY\n",
			"config.yaml:5:7: model_list[0].litellm_params.api_key must be a string, not a mapping"},
		{"model_info is a list", "model_list:\n  - model_name: a\n    litellm_params: {model: x}\n    model_info: [id]\n",
			"config.yaml:4:17: model_list[0].model_info must be a mapping, not a list"},
		{"access_groups is a string", "model_list:\n  - model_name: a\n    litellm_params: {model: x}\n    model_info:\n      access_groups: beta\n",
			"config.yaml:5:22: model_list[0].model_info.access_groups must be a list of strings, not a string"},
		{"access_groups entry is a list", "model_list:\n  - model_name: a\n    litellm_params: {model: x}\n    model_info:\n      access_groups: [beta, [x]]\n",
			"config.yaml:5:29: model_list[0].model_info.access_groups[1] must be a string, not a list"},
		{"duplicate model id", `model_list:
  - model_name: a
    litellm_params: {model: x}
    model_info: {id: dep-1}
  - model_name: b
    litellm_params: {model: y}
    model_info:
      id: dep-1
`, `config.yaml:8:11: model_list[1].model_info.id "dep-1" is already used by model_list[0] (line 4)`},
		{"duplicate key in litellm_params", "model_list:\n  - model_name: a\n    litellm_params:\n      model: x\n      model: y\n",
			"config.yaml:5:7: model_list[0].litellm_params.model is defined twice (first at line 4)"},
		{"unknown model entry field", "model_list:\n  - model_name: a\n    litellm_params: {model: x}\n    model_infos: {id: a}\n",
			`config.yaml:4:5: model_list[0].model_infos is not a field of a model_list entry; did you mean "model_info"?`},

		// general_settings.
		{"master_key variable unset", "general_settings:\n  master_key: os.environ/TOLLGATE_TEST_UNSET_VAR\n",
			"config.yaml:2:15: general_settings.master_key refers to environment variable TOLLGATE_TEST_UNSET_VAR, which is not set"},
		{"master_key variable empty", "general_settings:\n  master_key: os.environ/TOLLGATE_TEST_EMPTY\n",
			"config.yaml:2:15: general_settings.master_key refers to environment variable TOLLGATE_TEST_EMPTY, which is not set"},
		{"master_key variable only in environment_variables", `environment_variables:
  TOLLGATE_TEST_UNSET_VAR: sk-1234
general_settings:
  master_key: os.environ/TOLLGATE_TEST_UNSET_VAR
`, "config.yaml:4:15: general_settings.master_key refers to environment variable TOLLGATE_TEST_UNSET_VAR, which is not set (environment_variables in the config are not applied to the environment)"},
		{"database_url variable unset", "general_settings:\n  master_key: sk-1\n  database_url: os.environ/TOLLGATE_TEST_UNSET_DB\n",
			"config.yaml:3:17: general_settings.database_url refers to environment variable TOLLGATE_TEST_UNSET_DB, which is not set"},
		{"master_key is a number", "general_settings:\n  master_key: [1234]\n",
			"config.yaml:2:15: general_settings.master_key must be a string, not a list"},
		{"enforced_params is a string", `model_list: []
general_settings:
  service_account_settings:
    enforced_params: user
`, "config.yaml:4:22: general_settings.service_account_settings.enforced_params must be a list of strings"},
		{"enforced_params misspelt", `general_settings:
  service_account_settings:
    enforce_params: ["user"]
`, "config.yaml:3:5: general_settings.service_account_settings.enforce_params is not a known field (expected one of: enforced_params)"},
		{"unknown team member role", `general_settings:
  key_generation_settings:
    team_key_generation:
      allowed_team_member_roles:
        - admin
        - owner
`, `config.yaml:6:11: general_settings.key_generation_settings.team_key_generation.allowed_team_member_roles[1] "owner" is not one of: admin, user`},
		{"team_key_generation is a list", `general_settings:
  key_generation_settings:
    team_key_generation:
      - admin
`, "config.yaml:3:5: general_settings.key_generation_settings.team_key_generation must be an object"},
		{"max_end_user_budget negative", "general_settings:\n  max_end_user_budget: -5\n",
			"config.yaml:2:24: general_settings.max_end_user_budget must be a finite, non-negative number of USD (at most 1e9)"},
		{"store_prompts_in_spend_logs string", "general_settings:\n  store_prompts_in_spend_logs: \"yes\"\n",
			"config.yaml:2:32: general_settings.store_prompts_in_spend_logs must be true or false"},
		{"key_generation_settings in litellm_settings invalid", `litellm_settings:
  key_generation_settings:
    personal_key_generation:
      allowed_user_roles: [admin]
`, `config.yaml:4:28: litellm_settings.key_generation_settings.personal_key_generation.allowed_user_roles[0] "admin" is not one of: proxy_admin`},
		{"key_generation_settings in both places differ", `general_settings:
  key_generation_settings: {team_key_generation: {allowed_team_member_roles: [admin]}}
litellm_settings:
  key_generation_settings: {team_key_generation: {allowed_team_member_roles: [user]}}
`, "config.yaml:4:3: litellm_settings.key_generation_settings conflicts with general_settings.key_generation_settings (line 2); keep one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.in), "config.yaml")
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", cfg)
			}
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error %T %v is not Errors", err, err)
			}
			var first *Error
			if !errors.As(err, &first) || first != es[0] {
				t.Fatalf("errors.As did not find the first *Error")
			}
			if got := es[0].Error(); !strings.HasPrefix(got, tc.want) {
				t.Errorf("first error\n got %s\nwant %s\n(all: %v)", got, tc.want, err)
			}
			if strings.Contains(err.Error(), "sk-secret") || strings.Contains(err.Error(), "sk-1234") {
				t.Errorf("error leaks a secret: %v", err)
			}
		})
	}
}

func TestParseReportsEveryError(t *testing.T) {
	in := `model_list:
  - model_name: a
    litellm_params:
      model: x
      rpm: -1
  - model_name: b
    litellm_params: {}
bogus: true
general_settings:
  alerting: slack
`
	_, err := Parse([]byte(in), "config.yaml")
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("err = %v", err)
	}
	want := []string{
		"config.yaml:5:12: model_list[0].litellm_params.rpm must be a non-negative integer",
		"config.yaml:7: model_list[1].litellm_params.model is required",
		`config.yaml:8:1: unknown top-level key "bogus"`,
		"config.yaml:10:13: general_settings.alerting must be a list of strings",
	}
	if len(es) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(es), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(es[i].Error(), w) {
			t.Errorf("error %d = %s, want %s", i, es[i], w)
		}
	}
	if !strings.Contains(err.Error(), "\n") {
		t.Error("Errors should render one per line")
	}
}

func TestParseManyErrorsTruncated(t *testing.T) {
	var b strings.Builder
	b.WriteString("model_list:\n")
	for i := range 30 {
		b.WriteString("  - model_name: m" + strconv.Itoa(i) + "\n")
	}
	_, err := Parse([]byte(b.String()), "c.yaml")
	var es Errors
	if !errors.As(err, &es) || len(es) != maxErrors+1 || es[maxErrors].Error() != "c.yaml: 10 more errors not shown" {
		t.Fatalf("err = %v", err)
	}
}

func TestParseAliasBomb(t *testing.T) {
	// Each level multiplies the expansion by ten: 10^9 nodes if expanded.
	in := `a: &a ["x","x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]
router_settings:
  bomb: [*h,*h,*h,*h,*h,*h,*h,*h,*h,*h]
`
	_, err := Parse([]byte(in), "config.yaml")
	if err == nil || !strings.Contains(err.Error(), "expands to more than") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoad(t *testing.T) {
	setEnv(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "proxy_config.yaml")
	if err := os.WriteFile(path, []byte(realistic), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil || len(cfg.Models) != 3 {
		t.Fatalf("Load = %v, %v", cfg, err)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("model_list:\n  - model_name: a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.HasPrefix(err.Error(), bad+":2: ") {
		t.Fatalf("Load(bad) = %v, want an error naming %s:2", err, bad)
	}

	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load(missing) = %v", err)
	}

	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, bytes.Repeat([]byte("#\n"), maxFileSize/2+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than 16 MiB") {
		t.Fatalf("Load(big) = %v", err)
	}
}

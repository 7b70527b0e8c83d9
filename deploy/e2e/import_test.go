package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// litellmSchema is the subset of LiteLLM's Prisma schema (schema.prisma)
// the importer reads, as `prisma migrate` creates it. LiteLLM_BudgetTable
// lacks allowed_models and LiteLLM_DeprecatedVerificationToken is absent,
// as in older LiteLLM versions: the import must cope.
const litellmSchema = `
CREATE TABLE "LiteLLM_BudgetTable" (
  "budget_id" TEXT PRIMARY KEY, "max_budget" DOUBLE PRECISION, "soft_budget" DOUBLE PRECISION,
  "max_parallel_requests" INTEGER, "tpm_limit" BIGINT, "rpm_limit" BIGINT, "model_max_budget" JSONB,
  "budget_duration" TEXT, "budget_reset_at" TIMESTAMP(3),
  "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, "created_by" TEXT NOT NULL,
  "updated_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, "updated_by" TEXT NOT NULL);
CREATE TABLE "LiteLLM_OrganizationTable" (
  "organization_id" TEXT PRIMARY KEY, "organization_alias" TEXT NOT NULL,
  "budget_id" TEXT NOT NULL REFERENCES "LiteLLM_BudgetTable"("budget_id"),
  "metadata" JSONB NOT NULL DEFAULT '{}', "models" TEXT[], "spend" DOUBLE PRECISION NOT NULL DEFAULT 0,
  "model_spend" JSONB NOT NULL DEFAULT '{}', "object_permission_id" TEXT,
  "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, "created_by" TEXT NOT NULL,
  "updated_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, "updated_by" TEXT NOT NULL);
CREATE TABLE "LiteLLM_TeamTable" (
  "team_id" TEXT PRIMARY KEY, "team_alias" TEXT, "organization_id" TEXT, "object_permission_id" TEXT,
  "admins" TEXT[], "members" TEXT[], "members_with_roles" JSONB NOT NULL DEFAULT '{}',
  "metadata" JSONB NOT NULL DEFAULT '{}', "max_budget" DOUBLE PRECISION, "soft_budget" DOUBLE PRECISION,
  "spend" DOUBLE PRECISION NOT NULL DEFAULT 0, "models" TEXT[], "max_parallel_requests" INTEGER,
  "tpm_limit" BIGINT, "rpm_limit" BIGINT, "budget_duration" TEXT, "budget_reset_at" TIMESTAMP(3),
  "blocked" BOOLEAN NOT NULL DEFAULT false,
  "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, "updated_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
  "model_spend" JSONB NOT NULL DEFAULT '{}', "model_max_budget" JSONB NOT NULL DEFAULT '{}',
  "router_settings" JSONB DEFAULT '{}', "team_member_permissions" TEXT[] DEFAULT ARRAY[]::TEXT[],
  "access_group_ids" TEXT[] DEFAULT ARRAY[]::TEXT[], "policies" TEXT[] DEFAULT ARRAY[]::TEXT[],
  "budget_limits" JSONB, "model_id" INTEGER);
CREATE TABLE "LiteLLM_TeamMembership" (
  "user_id" TEXT NOT NULL, "team_id" TEXT NOT NULL, "spend" DOUBLE PRECISION NOT NULL DEFAULT 0,
  "total_spend" DOUBLE PRECISION NOT NULL DEFAULT 0, "budget_id" TEXT, PRIMARY KEY ("user_id", "team_id"));
CREATE TABLE "LiteLLM_UserTable" (
  "user_id" TEXT PRIMARY KEY, "user_alias" TEXT, "team_id" TEXT, "sso_user_id" TEXT UNIQUE,
  "organization_id" TEXT, "object_permission_id" TEXT, "password" TEXT, "teams" TEXT[] DEFAULT ARRAY[]::TEXT[],
  "user_role" TEXT, "max_budget" DOUBLE PRECISION, "spend" DOUBLE PRECISION NOT NULL DEFAULT 0,
  "user_email" TEXT, "models" TEXT[], "metadata" JSONB NOT NULL DEFAULT '{}', "max_parallel_requests" INTEGER,
  "tpm_limit" BIGINT, "rpm_limit" BIGINT, "budget_duration" TEXT, "budget_reset_at" TIMESTAMP(3),
  "allowed_cache_controls" TEXT[] DEFAULT ARRAY[]::TEXT[], "policies" TEXT[] DEFAULT ARRAY[]::TEXT[],
  "model_spend" JSONB NOT NULL DEFAULT '{}', "model_max_budget" JSONB NOT NULL DEFAULT '{}',
  "created_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP, "updated_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE "LiteLLM_OrganizationMembership" (
  "user_id" TEXT NOT NULL, "organization_id" TEXT NOT NULL, "user_role" TEXT,
  "spend" DOUBLE PRECISION DEFAULT 0, "budget_id" TEXT,
  "created_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP, "updated_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY ("user_id", "organization_id"));
CREATE TABLE "LiteLLM_VerificationToken" (
  "token" TEXT PRIMARY KEY, "key_name" TEXT, "key_alias" TEXT, "soft_budget_cooldown" BOOLEAN NOT NULL DEFAULT false,
  "spend" DOUBLE PRECISION NOT NULL DEFAULT 0, "expires" TIMESTAMP(3), "models" TEXT[],
  "aliases" JSONB NOT NULL DEFAULT '{}', "config" JSONB NOT NULL DEFAULT '{}', "router_settings" JSONB DEFAULT '{}',
  "user_id" TEXT, "team_id" TEXT, "agent_id" TEXT, "project_id" TEXT, "permissions" JSONB NOT NULL DEFAULT '{}',
  "max_parallel_requests" INTEGER, "metadata" JSONB NOT NULL DEFAULT '{}', "blocked" BOOLEAN,
  "tpm_limit" BIGINT, "rpm_limit" BIGINT, "max_budget" DOUBLE PRECISION, "budget_duration" TEXT,
  "budget_reset_at" TIMESTAMP(3), "allowed_cache_controls" TEXT[] DEFAULT ARRAY[]::TEXT[],
  "allowed_routes" TEXT[] DEFAULT ARRAY[]::TEXT[], "policies" TEXT[] DEFAULT ARRAY[]::TEXT[],
  "access_group_ids" TEXT[] DEFAULT ARRAY[]::TEXT[], "model_spend" JSONB NOT NULL DEFAULT '{}',
  "model_max_budget" JSONB NOT NULL DEFAULT '{}', "budget_id" TEXT, "organization_id" TEXT,
  "object_permission_id" TEXT, "created_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP, "created_by" TEXT,
  "updated_at" TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP, "updated_by" TEXT, "last_active" TIMESTAMP(3),
  "rotation_count" INTEGER DEFAULT 0, "auto_rotate" BOOLEAN DEFAULT false, "rotation_interval" TEXT,
  "last_rotation_at" TIMESTAMP(3), "key_rotation_at" TIMESTAMP(3), "budget_limits" JSONB);
CREATE TABLE "LiteLLM_EndUserTable" (
  "user_id" TEXT PRIMARY KEY, "alias" TEXT, "spend" DOUBLE PRECISION NOT NULL DEFAULT 0,
  "allowed_model_region" TEXT, "default_model" TEXT, "budget_id" TEXT, "object_permission_id" TEXT,
  "blocked" BOOLEAN NOT NULL DEFAULT false);
CREATE TABLE "LiteLLM_ProxyModelTable" (
  "model_id" TEXT PRIMARY KEY, "model_name" TEXT NOT NULL, "litellm_params" JSONB NOT NULL, "model_info" JSONB,
  "blocked" BOOLEAN NOT NULL DEFAULT false,
  "created_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, "created_by" TEXT NOT NULL,
  "updated_at" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP, "updated_by" TEXT NOT NULL);
CREATE TABLE "LiteLLM_SpendLogs" ("request_id" TEXT PRIMARY KEY, "api_key" TEXT NOT NULL DEFAULT '', "spend" DOUBLE PRECISION NOT NULL DEFAULT 0);
`

// litellmKey makes a key the way LiteLLM does: "sk-" + secrets.token_urlsafe(16).
func litellmKey() (plain, hash string) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	plain = "sk-" + base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(plain))
	return plain, hex.EncodeToString(sum[:])
}

type litellmKeys struct {
	bob, svc, alice, broke, blocked, expired string
}

// seedLiteLLM builds a LiteLLM database with an org, a team with members,
// users, budgets, keys with spend, end users and a database model.
func seedLiteLLM(t *testing.T, url, upstreamURL string) litellmKeys {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, litellmSchema); err != nil {
		t.Fatalf("schema: %v", err)
	}
	var k litellmKeys
	var h [6]string
	for i, p := range []*string{&k.bob, &k.svc, &k.alice, &k.broke, &k.blocked, &k.expired} {
		*p, h[i] = litellmKey()
	}
	name := func(p string) string { return "sk-..." + p[len(p)-4:] }
	future := time.Now().UTC().Add(30 * 24 * time.Hour).Format("2006-01-02 15:04:05")
	stmts := []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO "LiteLLM_BudgetTable" (budget_id, max_budget, rpm_limit, budget_duration, budget_reset_at, created_by, updated_by) VALUES
			('budget-org', 500, 10000, '30d', $1, 'admin', 'admin'), ('budget-member', 20, NULL, NULL, NULL, 'admin', 'admin'),
			('budget-key-soft', NULL, NULL, NULL, NULL, 'admin', 'admin'),
			('budget-cust', 50, 5, NULL, NULL, 'admin', 'admin')`, []any{future}},
		{`UPDATE "LiteLLM_BudgetTable" SET soft_budget = 8 WHERE budget_id = 'budget-key-soft'`, nil},
		{`INSERT INTO "LiteLLM_OrganizationTable" (organization_id, organization_alias, budget_id, models, spend, metadata, created_by, updated_by)
			VALUES ('org-acme', 'Acme', 'budget-org', '{gpt-4o-mini,db-model}', 12.5, '{"tier":"gold"}', 'admin', 'admin')`, nil},
		{`INSERT INTO "LiteLLM_UserTable" (user_id, user_role, user_email, models, max_budget, spend, organization_id) VALUES
			('alice', 'proxy_admin', 'alice@acme.test', '{}', NULL, 0.25, 'org-acme'),
			('bob', 'internal_user', 'bob@acme.test', '{}', 100, 3.75, 'org-acme'),
			('carol', 'customer', NULL, '{}', NULL, 0, NULL)`, nil},
		{`INSERT INTO "LiteLLM_OrganizationMembership" (user_id, organization_id, user_role) VALUES ('alice', 'org-acme', 'org_admin'), ('bob', 'org-acme', 'internal_user')`, nil},
		{`INSERT INTO "LiteLLM_TeamTable" (team_id, team_alias, organization_id, admins, members, members_with_roles, max_budget, spend, models, rpm_limit, budget_duration, budget_reset_at, metadata, model_max_budget)
			VALUES ('team-eng', 'engineering', 'org-acme', '{alice}', '{alice,bob}',
			'[{"role":"admin","user_id":"alice","user_email":"alice@acme.test"},{"role":"user","user_id":"bob","user_email":null}]',
			200, 7.5, '{gpt-4o-mini,db-model}', 600, '30d', $1, '{"cost_center":"42"}', '{"gpt-4":{"budget_limit":5,"time_period":"1d"}}')`, []any{future}},
		{`INSERT INTO "LiteLLM_TeamMembership" (user_id, team_id, spend, budget_id) VALUES ('bob', 'team-eng', 3.5, 'budget-member'), ('alice', 'team-eng', 0.25, NULL)`, nil},
		{`INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, spend, models, user_id, team_id, organization_id, max_budget, budget_duration, budget_reset_at, rpm_limit, tpm_limit, max_parallel_requests, metadata, model_spend, budget_id, created_by, updated_by, aliases) VALUES
			($1, $2, 'bob-laptop', 1.5, '{gpt-4o-mini,db-model}', 'bob', 'team-eng', 'org-acme', 10, '30d', $13, 100, 100000, 10, '{"tags":["laptop"],"note":"imported"}', '{"gpt-4o-mini":1.5}', 'budget-key-soft', 'bob', 'bob', '{"fast":"gpt-4o-mini"}'),
			($3, $4, 'eng-service', 2.0, '{}', NULL, 'team-eng', NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{"service_account_id":"ci-bot"}', '{}', NULL, 'alice', 'alice', '{}'),
			($5, $6, NULL, 0, '{}', 'alice', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{}', '{}', NULL, 'alice', 'alice', '{}'),
			($7, $8, 'at-budget', 0.5, '{}', 'bob', 'team-eng', NULL, 0.5, NULL, NULL, NULL, NULL, NULL, '{}', '{}', NULL, 'bob', 'bob', '{}'),
			($9, $10, 'blocked', 0, '{}', 'bob', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{}', '{}', NULL, 'bob', 'bob', '{}'),
			($11, $12, 'expired', 0, '{}', 'bob', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{}', '{}', NULL, 'bob', 'bob', '{}')`,
			[]any{h[0], name(k.bob), h[1], name(k.svc), h[2], name(k.alice), h[3], name(k.broke), h[4], name(k.blocked), h[5], name(k.expired), future}},
		{`UPDATE "LiteLLM_VerificationToken" SET blocked = true WHERE key_alias = 'blocked'`, nil},
		{`UPDATE "LiteLLM_VerificationToken" SET expires = now() - interval '1 day' WHERE key_alias = 'expired'`, nil},
		{`INSERT INTO "LiteLLM_EndUserTable" (user_id, alias, spend, budget_id, blocked) VALUES
			('customer-1', 'Customer One', 0.75, 'budget-cust', false), ('customer-2', NULL, 0.1, NULL, true)`, nil},
		{`UPDATE "LiteLLM_TeamTable" SET team_member_permissions = '{/key/info,/key/generate}' WHERE team_id = 'team-eng'`, nil},
		{`INSERT INTO "LiteLLM_ProxyModelTable" (model_id, model_name, litellm_params, model_info, created_by, updated_by)
			VALUES ('db-model-1', 'db-model', $1, '{"input_cost_per_token":0.000001,"output_cost_per_token":0.000002}', 'admin', 'admin')`,
			[]any{fmt.Sprintf(`{"model":"openai/gpt-4o","api_base":"%s/v1","api_key":"os.environ/UPSTREAM_API_KEY"}`, upstreamURL)}},
		{`INSERT INTO "LiteLLM_SpendLogs" (request_id, api_key, spend) VALUES ('r1', $1, 1.5)`, []any{h[0]}},
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s.sql, s.args...); err != nil {
			t.Fatalf("%s: %v", s.sql, err)
		}
	}
	return k
}

var totalsRe = regexp.MustCompile(`total: created=(\d+) updated=(\d+) unchanged=(\d+)`)

// runImport runs `controlplane import-litellm` and returns its report and
// the totals line.
func runImport(t *testing.T, o CPOptions, from, cfg string, extra ...string) (string, string) {
	t.Helper()
	args := []string{"import-litellm", "--from", from, "--config", cfg}
	if o.DatabaseURL != "" {
		args = append(args, "--database-url", o.DatabaseURL)
	} else {
		args = append(args, "--data-dir", o.DataDir)
	}
	cmd := exec.Command(Binary(t, "controlplane"), append(args, extra...)...)
	cmd.Env = append(os.Environ(), "TOLLGATE_DATABASE_URL=", "TOLLGATE_MASTER_KEY=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("import-litellm %v: %v\n%s", extra, err, out)
	}
	m := totalsRe.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no totals line:\n%s", out)
	}
	return string(out), m[0]
}

func TestImportLiteLLM(t *testing.T) {
	backends(t, func(t *testing.T, o CPOptions) {
		from := PostgresURL(t)
		up := NewUpstream(t)
		cfg := writeConfig(t, up.URL)
		k := seedLiteLLM(t, from, up.URL)
		if o.DatabaseURL == "" {
			o.DataDir = t.TempDir()
		}
		// 3 models from the config + 1 from the database, 1 org, 1 team,
		// 3 users, 6 keys, 2 end users, general_settings.
		const all = "total: created=18 updated=0 unchanged=0"

		// A dry run writes nothing: a second one still plans to create everything.
		out, tot := runImport(t, o, from, cfg, "--dry-run")
		if tot != all || !strings.Contains(out, "dry run") {
			t.Fatalf("dry run: %s\n%s", tot, out)
		}
		t.Logf("dry-run report:\n%s", out)
		if !regexp.MustCompile(`end_user +2 +0 +0`).MatchString(out) {
			t.Errorf("report does not plan 2 end users:\n%s", out)
		}
		for _, want := range []string{"end-user rate limits", "key model aliases", "per-model budgets on teams",
			`user role "customer"`, "LiteLLM_SpendLogs", "LiteLLM_DeprecatedVerificationToken", "LiteLLM_BudgetTable.allowed_models", "budget resets"} {
			if !strings.Contains(out, want) {
				t.Errorf("report lacks %q:\n%s", want, out)
			}
		}
		if _, tot := runImport(t, o, from, cfg, "--dry-run"); tot != all {
			t.Fatalf("second dry run: %s (the first one wrote)", tot)
		}
		if _, tot := runImport(t, o, from, cfg); tot != all {
			t.Fatalf("import: %s", tot)
		}
		if out, tot := runImport(t, o, from, cfg); tot != "total: created=0 updated=0 unchanged=18" {
			t.Fatalf("second import: %s\n%s", tot, out)
		}

		o.Config = cfg
		cp := StartControlPlane(t, o)
		d := &deployment{cp: cp, up: up, env: []string{"UPSTREAM_API_KEY=" + upstreamSecret}}
		dp := d.proxy(t)
		u, mk := cp.URL(), cp.MasterKey

		// Every LiteLLM key works unchanged through the proxy.
		for _, key := range []string{k.bob, k.alice} {
			waitStatus(t, dp, key, chat("gpt-4o-mini", ""), 200)
		}
		waitStatus(t, dp, k.bob, chat("db-model", ""), 200)
		waitStatus(t, dp, k.svc, chat("gpt-4o-mini", `,"user":"customer-1"`), 200)
		// A key at its max_budget is refused; blocked and expired keys too.
		waitStatus(t, dp, k.broke, chat("gpt-4o-mini", ""), 429)
		if r := Do(t, "POST", dp.URL()+"/v1/chat/completions", k.blocked, chat("gpt-4o-mini", "")); r.Status/100 != 4 || r.Status == 429 {
			t.Fatalf("blocked key: %d %s", r.Status, r.Body)
		}
		if r := Do(t, "POST", dp.URL()+"/v1/chat/completions", k.expired, chat("gpt-4o-mini", "")); r.Status/100 != 4 || r.Status == 429 {
			t.Fatalf("expired key: %d %s", r.Status, r.Body)
		}

		// The imported spend, budgets and ownership.
		info := ok(t, Do(t, "GET", u+"/key/info?key="+k.bob, mk, nil))["info"].(map[string]any)
		if sp, _ := info["spend"].(float64); sp < 1.5 || info["key_alias"] != "bob-laptop" || info["max_budget"] != 10.0 ||
			info["team_id"] != "team-eng" || info["soft_budget"] != 8.0 || info["budget_duration"] != "30d" {
			t.Fatalf("bob key info: %v", info)
		}
		team := ok(t, Do(t, "GET", u+"/team/info?team_id=team-eng", mk, nil))
		if !strings.Contains(fmt.Sprint(team), "engineering") || !strings.Contains(fmt.Sprint(team), "bob") {
			t.Fatalf("team info: %v", team)
		}
		if info, _ := team["team_info"].(map[string]any); fmt.Sprint(info["team_member_permissions"]) != "[/key/info /key/generate]" {
			t.Fatalf("team_member_permissions: %v", info["team_member_permissions"])
		}
		// End users with their spend, budget and blocked flag. customer-1
		// also spent through the proxy above, so its spend is at least the
		// imported one.
		c1 := ok(t, Do(t, "GET", u+"/customer/info?end_user_id=customer-1", mk, nil))
		if sp, _ := c1["spend"].(float64); sp < 0.75 || c1["max_budget"] != 50.0 || c1["alias"] != "Customer One" || c1["blocked"] == true {
			t.Fatalf("customer-1: %v", c1)
		}
		c2 := ok(t, Do(t, "GET", u+"/customer/info?end_user_id=customer-2", mk, nil))
		if c2["spend"] != 0.1 || c2["blocked"] != true || c2["max_budget"] != nil {
			t.Fatalf("customer-2: %v", c2)
		}
		ok(t, Do(t, "GET", u+"/user/info?user_id=bob", mk, nil))
		ok(t, Do(t, "GET", u+"/organization/info?organization_id=org-acme", mk, nil))

		// Re-importing after traffic changes nothing (Tollgate's higher
		// spend stands). The embedded store needs the control plane stopped.
		dp.Stop()
		cp.Stop()
		if out, tot := runImport(t, o, from, cfg); tot != "total: created=0 updated=0 unchanged=18" {
			t.Fatalf("re-import after traffic: %s\n%s", tot, out)
		}
	})
}

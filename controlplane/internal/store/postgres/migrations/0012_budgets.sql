-- 0012: the budget table (LiteLLM's LiteLLM_BudgetTable), control plane
-- only (not in the change log), and what finds the objects linked to a
-- budget: end_users.budget_id, and expression indexes on the budget_id of
-- keys and organizations (kept in doc) and on team members (containment).
-- End users get the rate limits a budget gives them.

CREATE TABLE budgets (
    budget_id  text        NOT NULL,
    created_at timestamptz NOT NULL,
    created_ns smallint    NOT NULL DEFAULT 0,
    doc        jsonb       NOT NULL,
    CONSTRAINT budgets_pkey PRIMARY KEY (budget_id)
);
CREATE INDEX budgets_created_idx ON budgets (created_at, created_ns, budget_id);

ALTER TABLE end_users
    ADD COLUMN budget_id text,
    ADD COLUMN rpm_limit bigint,
    ADD COLUMN tpm_limit bigint;
CREATE INDEX end_users_budget_idx ON end_users (budget_id) WHERE budget_id IS NOT NULL;

CREATE INDEX keys_budget_idx ON keys ((doc ->> 'budget_id')) WHERE doc ? 'budget_id';
CREATE INDEX organizations_budget_idx ON organizations ((doc ->> 'budget_id')) WHERE doc ? 'budget_id';
CREATE INDEX teams_members_idx ON teams USING gin ((doc -> 'members') jsonb_path_ops);

-- 0007: budget_reset_at mirrors the doc's budget_reset_at on every object with a
-- budget, so the budget-reset job reads the due resets through an index
-- instead of scanning every key.
ALTER TABLE keys ADD COLUMN budget_reset_at timestamptz;
ALTER TABLE teams ADD COLUMN budget_reset_at timestamptz;
ALTER TABLE users ADD COLUMN budget_reset_at timestamptz;
ALTER TABLE organizations ADD COLUMN budget_reset_at timestamptz;
UPDATE keys SET budget_reset_at = (doc->>'budget_reset_at')::timestamptz WHERE doc ? 'budget_reset_at';
UPDATE teams SET budget_reset_at = (doc->>'budget_reset_at')::timestamptz WHERE doc ? 'budget_reset_at';
UPDATE users SET budget_reset_at = (doc->>'budget_reset_at')::timestamptz WHERE doc ? 'budget_reset_at';
UPDATE organizations SET budget_reset_at = (doc->>'budget_reset_at')::timestamptz WHERE doc ? 'budget_reset_at';
CREATE INDEX keys_budget_reset_idx ON keys (budget_reset_at) WHERE budget_reset_at IS NOT NULL;
CREATE INDEX teams_budget_reset_idx ON teams (budget_reset_at) WHERE budget_reset_at IS NOT NULL;
CREATE INDEX users_budget_reset_idx ON users (budget_reset_at) WHERE budget_reset_at IS NOT NULL;
CREATE INDEX organizations_budget_reset_idx ON organizations (budget_reset_at) WHERE budget_reset_at IS NOT NULL;

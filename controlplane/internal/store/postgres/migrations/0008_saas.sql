-- 0008: the SaaS team API's control-plane-only entities: model groups, jobs,
-- job calls and credit transactions. None of them is in the change log (not
-- synced to data planes). seq keeps insertion order for listings.

CREATE TABLE model_groups (
    group_name text        NOT NULL,
    created_at timestamptz NOT NULL,
    doc        jsonb       NOT NULL,
    CONSTRAINT model_groups_pkey PRIMARY KEY (group_name)
);

CREATE TABLE jobs (
    job_id  text      NOT NULL,
    team_id text      NOT NULL,
    seq     bigserial NOT NULL,
    doc     jsonb     NOT NULL,
    CONSTRAINT jobs_pkey PRIMARY KEY (job_id)
);
CREATE INDEX jobs_team_idx ON jobs (team_id, seq);

CREATE TABLE job_calls (
    call_id text      NOT NULL,
    job_id  text      NOT NULL,
    seq     bigserial NOT NULL,
    doc     jsonb     NOT NULL,
    CONSTRAINT job_calls_pkey PRIMARY KEY (call_id)
);
CREATE INDEX job_calls_job_idx ON job_calls (job_id, seq);

CREATE TABLE credit_transactions (
    transaction_id text      NOT NULL,
    team_id        text      NOT NULL,
    seq            bigserial NOT NULL,
    doc            jsonb     NOT NULL,
    CONSTRAINT credit_transactions_pkey PRIMARY KEY (transaction_id)
);
CREATE INDEX credit_transactions_team_idx ON credit_transactions (team_id, seq);

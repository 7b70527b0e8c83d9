-- 0001: entity tables, the change log and the revision head.
--
-- Every entity row keeps the whole struct in doc (encoding/json output); the
-- typed columns next to it are the ones queried and constrained on. Empty
-- optional references are NULL, never ''. created_at is microseconds (the
-- timestamptz resolution) and created_ns the nanoseconds below that, so that
-- creation order is exactly the order of the Go timestamps.

CREATE TABLE keys (
    token_id        text        NOT NULL,
    key_hash        text        NOT NULL,
    key_alias       text,
    user_id         text,
    team_id         text,
    organization_id text,
    service_account boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL,
    created_ns      smallint    NOT NULL DEFAULT 0,
    doc             jsonb       NOT NULL,
    CONSTRAINT keys_pkey PRIMARY KEY (token_id),
    CONSTRAINT keys_key_hash_key UNIQUE (key_hash),
    CONSTRAINT keys_key_alias_key UNIQUE (key_alias),
    CONSTRAINT keys_key_alias_check CHECK (key_alias <> '')
);
CREATE INDEX keys_created_idx ON keys (created_at, created_ns, token_id);
CREATE INDEX keys_user_idx ON keys (user_id, created_at, created_ns, token_id) WHERE user_id IS NOT NULL;
CREATE INDEX keys_team_idx ON keys (team_id, created_at, created_ns, token_id) WHERE team_id IS NOT NULL;
CREATE INDEX keys_organization_idx ON keys (organization_id, created_at, created_ns, token_id) WHERE organization_id IS NOT NULL;

CREATE TABLE teams (
    team_id         text        NOT NULL,
    organization_id text,
    created_at      timestamptz NOT NULL,
    created_ns      smallint    NOT NULL DEFAULT 0,
    doc             jsonb       NOT NULL,
    CONSTRAINT teams_pkey PRIMARY KEY (team_id)
);
CREATE INDEX teams_created_idx ON teams (created_at, created_ns, team_id);
CREATE INDEX teams_organization_idx ON teams (organization_id, created_at, created_ns, team_id) WHERE organization_id IS NOT NULL;

CREATE TABLE users (
    user_id    text        NOT NULL,
    user_role  text        NOT NULL,
    created_at timestamptz NOT NULL,
    created_ns smallint    NOT NULL DEFAULT 0,
    doc        jsonb       NOT NULL,
    CONSTRAINT users_pkey PRIMARY KEY (user_id)
);
CREATE INDEX users_created_idx ON users (created_at, created_ns, user_id);
CREATE INDEX users_role_idx ON users (user_role, created_at, created_ns, user_id);

CREATE TABLE organizations (
    organization_id text        NOT NULL,
    created_at      timestamptz NOT NULL,
    created_ns      smallint    NOT NULL DEFAULT 0,
    doc             jsonb       NOT NULL,
    CONSTRAINT organizations_pkey PRIMARY KEY (organization_id)
);
CREATE INDEX organizations_created_idx ON organizations (created_at, created_ns, organization_id);
-- DeleteUser finds the organizations a user belongs to by containment.
CREATE INDEX organizations_members_idx ON organizations USING gin ((doc -> 'members') jsonb_path_ops);

CREATE TABLE models (
    id         text        NOT NULL,
    model_name text        NOT NULL,
    created_at timestamptz NOT NULL,
    doc        jsonb       NOT NULL,
    CONSTRAINT models_pkey PRIMARY KEY (id)
);
CREATE INDEX models_name_idx ON models (model_name, id);

CREATE TABLE settings (
    id  boolean NOT NULL DEFAULT true,
    doc jsonb   NOT NULL,
    CONSTRAINT settings_pkey PRIMARY KEY (id),
    CONSTRAINT settings_single_row CHECK (id)
);

-- The change log. Writers insert their changes with revision NULL in the
-- transaction that makes them; the sequencer numbers committed transactions
-- later (see sequencer.go). tx_id groups the rows of one transaction.
CREATE TABLE changes (
    id           bigserial   NOT NULL,
    tx_id        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    revision     bigint,
    kind         text        NOT NULL,
    entity_id    text        NOT NULL,
    op           text        NOT NULL,
    data         jsonb,
    committed_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    CONSTRAINT changes_pkey PRIMARY KEY (id),
    CONSTRAINT changes_op_check CHECK (op IN ('put', 'delete'))
);
CREATE INDEX changes_pending_idx ON changes (id) WHERE revision IS NULL;
CREATE INDEX changes_revision_idx ON changes (revision, id) WHERE revision IS NOT NULL;

CREATE TABLE revision_head (
    id       boolean NOT NULL DEFAULT true,
    revision bigint  NOT NULL,
    CONSTRAINT revision_head_pkey PRIMARY KEY (id),
    CONSTRAINT revision_head_single_row CHECK (id)
);
INSERT INTO revision_head (id, revision) VALUES (true, 0);

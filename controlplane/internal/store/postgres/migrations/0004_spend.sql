-- 0004: spend. spend_sources is the per-outbox high-water mark that makes a
-- replayed batch a no-op; spend_logs one row per request (never the key's
-- secret or the prompt); end_users the spend of the requests' "user".
-- Times are unix nanoseconds so that ordering and filters are exact.

CREATE TABLE spend_sources (
    proxy_id  text   NOT NULL,
    outbox_id text   NOT NULL,
    last_seq  bigint NOT NULL,
    CONSTRAINT spend_sources_pkey PRIMARY KEY (proxy_id, outbox_id)
);

CREATE TABLE spend_logs (
    id                bigserial NOT NULL,
    proxy_id          text      NOT NULL,
    outbox_id         text      NOT NULL,
    seq               bigint    NOT NULL,
    request_id        text      NOT NULL,
    token_id          text,
    team_id           text,
    user_id           text,
    organization_id   text,
    end_user          text,
    model             text      NOT NULL,
    deployment_id     text      NOT NULL,
    prompt_tokens     bigint    NOT NULL,
    completion_tokens bigint    NOT NULL,
    cost              bigint    NOT NULL,
    streamed          boolean   NOT NULL,
    estimated         boolean   NOT NULL,
    status            integer   NOT NULL,
    route             text      NOT NULL,
    start_ns          bigint    NOT NULL,
    end_ns            bigint    NOT NULL,
    -- No unique (proxy_id, outbox_id, seq): the high-water mark, updated
    -- in the same transaction, already makes a record go in once, and
    -- every index costs ingestion (a batch is COPYed in).
    CONSTRAINT spend_logs_pkey PRIMARY KEY (id)
);
CREATE INDEX spend_logs_start_idx ON spend_logs (start_ns DESC, id DESC);
CREATE INDEX spend_logs_request_idx ON spend_logs (request_id);
CREATE INDEX spend_logs_token_idx ON spend_logs (token_id, start_ns DESC, id DESC) WHERE token_id IS NOT NULL;
CREATE INDEX spend_logs_user_idx ON spend_logs (user_id, start_ns DESC, id DESC) WHERE user_id IS NOT NULL;
CREATE INDEX spend_logs_team_idx ON spend_logs (team_id, start_ns DESC, id DESC) WHERE team_id IS NOT NULL;

CREATE TABLE end_users (
    end_user_id text        NOT NULL,
    spend       bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    CONSTRAINT end_users_pkey PRIMARY KEY (end_user_id)
);

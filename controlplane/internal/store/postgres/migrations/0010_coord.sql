-- 0010: deployment-wide coordination of the sync streams
-- (controlplane/internal/coord/pgcoord): which proxies are connected to
-- which replica (membership: the count and each proxy's index for rate-limit
-- and budget shares) and the rate-limit lease pools, so that every replica
-- divides a limit among all the deployment's proxies and a replica that
-- stops or crashes forgets nothing it granted.

-- One row per running control-plane replica: the backend of its LISTEN
-- connection. A replica is alive while that backend is (pg_stat_activity);
-- only members of a live replica can hear that their share was reclaimed.
CREATE TABLE sync_replicas (
    replica_id    text        NOT NULL,
    pid           integer     NOT NULL,
    backend_start timestamptz NOT NULL,
    CONSTRAINT sync_replicas_pkey PRIMARY KEY (replica_id)
);

-- One row per connected proxy process (member = proxy id + instance),
-- refreshed by its replica every second and expired after a few seconds
-- without a refresh. session is the stream that owns it: a proxy that
-- reconnects elsewhere takes its row over (joined_at restarts, since is
-- kept: members are indexed in order of since).
CREATE TABLE sync_members (
    member       text        NOT NULL,
    replica_id   text        NOT NULL,
    session      text        NOT NULL,
    since        timestamptz NOT NULL,
    joined_at    timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    CONSTRAINT sync_members_pkey PRIMARY KEY (member)
);
CREATE INDEX sync_members_replica_idx ON sync_members (replica_id);

-- One row per open window of a limit (window_unix 0: parallel requests);
-- updated under its row lock by whichever replica serves an asking proxy.
CREATE TABLE lease_pools (
    scope       text        NOT NULL,
    window_unix bigint      NOT NULL,
    lim         bigint      NOT NULL,
    created_at  timestamptz NOT NULL,
    touched_at  timestamptz NOT NULL,
    CONSTRAINT lease_pools_pkey PRIMARY KEY (scope, window_unix)
);

-- Each member's allowance in a pool and its last reported use.
CREATE TABLE lease_allocs (
    scope       text        NOT NULL,
    window_unix bigint      NOT NULL,
    member      text        NOT NULL,
    alloc       bigint      NOT NULL,
    used        bigint      NOT NULL,
    changed_at  timestamptz,
    CONSTRAINT lease_allocs_pkey PRIMARY KEY (scope, window_unix, member),
    CONSTRAINT lease_allocs_pool_fkey FOREIGN KEY (scope, window_unix)
        REFERENCES lease_pools (scope, window_unix) ON DELETE CASCADE
);
CREATE INDEX lease_allocs_member_idx ON lease_allocs (member);

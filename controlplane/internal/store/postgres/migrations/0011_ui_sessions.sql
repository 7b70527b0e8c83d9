-- 0011: admin UI sign-outs, shared by every control-plane replica. A row
-- lives until the session would have expired (pruned after). revoked_at is
-- the database's clock, so replicas poll by it without trusting their own.
CREATE TABLE ui_revoked_sessions (
    session_id text        NOT NULL PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ui_revoked_sessions_revoked_idx ON ui_revoked_sessions (revoked_at);
CREATE INDEX ui_revoked_sessions_expires_idx ON ui_revoked_sessions (expires_at);

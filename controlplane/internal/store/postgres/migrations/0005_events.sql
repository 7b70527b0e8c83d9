-- 0005: the lifecycle event outbox, and the rotation schedule of keys.
-- Events are not part of the change log (not synced to data planes). seq
-- keeps enqueue order; the pending index serves the delivery job's claims
-- (SELECT ... FOR UPDATE SKIP LOCKED).

CREATE TABLE events (
    id              text        NOT NULL,
    seq             bigserial   NOT NULL,
    type            text        NOT NULL,
    created_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    delivered_at    timestamptz,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text        NOT NULL DEFAULT '',
    doc             jsonb       NOT NULL, -- event_id, type, data, created_at
    CONSTRAINT events_pkey PRIMARY KEY (id),
    CONSTRAINT events_seq_key UNIQUE (seq)
);
CREATE INDEX events_pending_idx ON events (next_attempt_at, seq) WHERE delivered_at IS NULL;
CREATE INDEX events_delivered_idx ON events (delivered_at) WHERE delivered_at IS NOT NULL;

-- rotation_at is the key's key_rotation_at when auto_rotate is on, else NULL.
ALTER TABLE keys ADD COLUMN rotation_at timestamptz;
UPDATE keys SET rotation_at = (doc->>'key_rotation_at')::timestamptz
WHERE doc->>'auto_rotate' = 'true' AND doc->>'key_rotation_at' IS NOT NULL;
CREATE INDEX keys_rotation_idx ON keys (rotation_at) WHERE rotation_at IS NOT NULL;

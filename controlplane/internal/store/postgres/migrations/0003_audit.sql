-- 0003: the audit log. Not part of the change log: audit rows are not synced
-- to data planes. seq breaks ties between entries with the same timestamp so
-- that "newest first" is the insertion order reversed.

CREATE TABLE audit (
    id          text        NOT NULL,
    seq         bigserial   NOT NULL,
    object_type text        NOT NULL,
    object_id   text        NOT NULL,
    caller      text        NOT NULL,
    created_at  timestamptz NOT NULL,
    created_ns  smallint    NOT NULL DEFAULT 0,
    doc         jsonb       NOT NULL,
    CONSTRAINT audit_pkey PRIMARY KEY (id),
    CONSTRAINT audit_seq_key UNIQUE (seq)
);
CREATE INDEX audit_created_idx ON audit (created_at DESC, created_ns DESC, seq DESC);
CREATE INDEX audit_object_type_idx ON audit (object_type, created_at DESC, created_ns DESC, seq DESC);
CREATE INDEX audit_object_id_idx ON audit (object_id, created_at DESC, created_ns DESC, seq DESC);
CREATE INDEX audit_caller_idx ON audit (caller, created_at DESC, created_ns DESC, seq DESC);

-- The backup catalog: one row per backup that was stored completely.
CREATE TABLE backups (
    id            TEXT        PRIMARY KEY,
    created_at    TIMESTAMPTZ NOT NULL,
    run_id        BIGINT,
    object_key    TEXT        NOT NULL,
    manifest_key  TEXT        NOT NULL,
    stored_bytes  BIGINT      NOT NULL,
    raw_bytes     BIGINT      NOT NULL,
    sha256        TEXT        NOT NULL,
    manifest      JSONB       NOT NULL,
    verified_at   TIMESTAMPTZ,
    verify_ok     BOOLEAN,
    restore_ms    BIGINT,
    verify_error  TEXT,
    deleted_at    TIMESTAMPTZ
);
CREATE INDEX backups_created ON backups (created_at DESC) WHERE deleted_at IS NULL;

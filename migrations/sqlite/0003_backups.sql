CREATE TABLE backups (
    id            TEXT    PRIMARY KEY,
    created_at    TEXT    NOT NULL,
    run_id        INTEGER,
    object_key    TEXT    NOT NULL,
    manifest_key  TEXT    NOT NULL,
    stored_bytes  INTEGER NOT NULL,
    raw_bytes     INTEGER NOT NULL,
    sha256        TEXT    NOT NULL,
    manifest      TEXT    NOT NULL,
    verified_at   TEXT,
    verify_ok     INTEGER,
    restore_ms    INTEGER,
    verify_error  TEXT,
    deleted_at    TEXT
);
CREATE INDEX backups_created ON backups (created_at DESC) WHERE deleted_at IS NULL;

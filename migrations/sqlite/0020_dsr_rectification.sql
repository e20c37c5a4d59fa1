-- Rectification (GDPR Art. 16, CCPA §1798.106): a third kind of request.
-- SQLite cannot change a CHECK constraint in place, so dsr_requests is
-- rebuilt with every column and index it has, ids and their sequence kept.
CREATE TABLE dsr_requests_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT        NOT NULL CHECK (kind IN ('export', 'erasure', 'rectification')),
    subject          TEXT        NOT NULL,  -- lower-case email
    jurisdiction     TEXT        NOT NULL,
    state            TEXT        NOT NULL CHECK (state IN ('received', 'verified', 'in_progress', 'completed', 'rejected', 'failed')),
    reason           TEXT,
    detail           TEXT,
    source           TEXT        NOT NULL,
    idempotency_key  TEXT        UNIQUE,
    received_at      TEXT        NOT NULL,
    due_at           TEXT        NOT NULL,
    extended_days    INTEGER     NOT NULL DEFAULT 0,
    extension_reason TEXT,
    completed_at     TEXT,
    attempts         INTEGER     NOT NULL DEFAULT 0,
    result           TEXT,
    updated_at       TEXT        NOT NULL,
    claimed_by_run   INTEGER,
    request_hash     TEXT,
    export_object    TEXT,
    export_expires_at TEXT,
    export_deleted_at TEXT,
    extended_at      TEXT,
    extension_notified_at TEXT,
    org              TEXT,
    verified_at      TEXT,
    verify_method    TEXT,
    verified_by      TEXT,
    subject_object   TEXT,
    subject_copy_sha TEXT
);
INSERT INTO dsr_requests_new (id, kind, subject, jurisdiction, state, reason, detail, source, idempotency_key,
    received_at, due_at, extended_days, extension_reason, completed_at, attempts, result, updated_at,
    claimed_by_run, request_hash, export_object, export_expires_at, export_deleted_at, extended_at,
    extension_notified_at, org, verified_at, verify_method, verified_by, subject_object, subject_copy_sha)
SELECT id, kind, subject, jurisdiction, state, reason, detail, source, idempotency_key,
    received_at, due_at, extended_days, extension_reason, completed_at, attempts, result, updated_at,
    claimed_by_run, request_hash, export_object, export_expires_at, export_deleted_at, extended_at,
    extension_notified_at, org, verified_at, verify_method, verified_by, subject_object, subject_copy_sha
FROM dsr_requests;
-- Ids are never reused, even those of the newest rows if they were ever deleted.
UPDATE sqlite_sequence SET seq = max(seq, (SELECT seq FROM sqlite_sequence WHERE name = 'dsr_requests'))
    WHERE name = 'dsr_requests_new';
DROP TABLE dsr_requests;
ALTER TABLE dsr_requests_new RENAME TO dsr_requests;
CREATE UNIQUE INDEX dsr_one_open ON dsr_requests (subject, kind, coalesce(org, ''))
    WHERE state IN ('received', 'verified', 'in_progress', 'failed');
CREATE INDEX dsr_due ON dsr_requests (due_at) WHERE state IN ('verified', 'failed');
CREATE INDEX dsr_exports_live ON dsr_requests (export_expires_at)
    WHERE export_object IS NOT NULL AND export_deleted_at IS NULL;

-- What a rectification sets: one row per column, kept with the request until
-- it is applied; then `subject_key` (a keyed hash of the subject's id, never
-- the id) and `applied_at` make it the ledger a restore re-applies. The values
-- are personal data: they go when the subject is erased, or the request is rejected.
CREATE TABLE dsr_rectifications (
    request_id  INTEGER     NOT NULL,
    table_name  TEXT        NOT NULL,
    column_name TEXT        NOT NULL,
    value       TEXT        NOT NULL,
    org         TEXT,
    subject_key TEXT,
    email_key   TEXT,       -- the keyed hash of the email: an erasure finished after a crash finds them by it
    applied_at  TEXT,
    PRIMARY KEY (request_id, table_name, column_name)
);
CREATE INDEX dsr_rectifications_applied ON dsr_rectifications (applied_at) WHERE applied_at IS NOT NULL;

-- Data subject requests, and the erasure ledger that restores re-apply.
CREATE TABLE dsr_requests (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT        NOT NULL CHECK (kind IN ('export', 'erasure')),
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
    completed_at     TEXT       ,
    attempts         INTEGER     NOT NULL DEFAULT 0,
    result           TEXT,
    updated_at       TEXT        NOT NULL
);
-- One open request per subject and kind: a second is a duplicate.
CREATE UNIQUE INDEX dsr_one_open ON dsr_requests (subject, kind)
    WHERE state IN ('received', 'verified', 'in_progress', 'failed');
CREATE INDEX dsr_due ON dsr_requests (due_at) WHERE state IN ('verified', 'failed');

CREATE TABLE erasure_ledger (
    subject_key TEXT        PRIMARY KEY,  -- keyed HMAC of the email, never the email
    request_id  INTEGER     NOT NULL,
    erased_at   TEXT        NOT NULL
);

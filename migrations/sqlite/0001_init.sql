-- Lethe's own state. Timestamps are fixed-width UTC text (YYYY-MM-DDTHH:MM:SS.ffffffZ)
-- so that text comparison is time comparison.

CREATE TABLE job_runs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job              TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    scheduled_for    TEXT    NOT NULL,
    trigger          TEXT    NOT NULL DEFAULT 'schedule',
    state            TEXT    NOT NULL DEFAULT 'available'
                     CHECK (state IN ('available', 'running', 'retryable', 'succeeded', 'dead')),
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL CHECK (max_attempts > 0),
    timeout_ms       INTEGER NOT NULL,
    allow_overlap    INTEGER NOT NULL DEFAULT 0,
    dry_run          INTEGER NOT NULL DEFAULT 0,
    params           TEXT    NOT NULL DEFAULT '{}',
    result           TEXT,
    error            TEXT,
    run_after        TEXT    NOT NULL,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    created_at       TEXT    NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    UNIQUE (job, scheduled_for)
);

CREATE INDEX job_runs_due ON job_runs (run_after, id) WHERE state IN ('available', 'retryable');
CREATE UNIQUE INDEX job_runs_one_running ON job_runs (job) WHERE state = 'running' AND allow_overlap = 0;
CREATE INDEX job_runs_leases ON job_runs (lease_expires_at) WHERE state = 'running';
CREATE INDEX job_runs_finished ON job_runs (finished_at) WHERE state IN ('succeeded', 'dead');
CREATE INDEX job_runs_by_job ON job_runs (job, id DESC);

CREATE TABLE audit_events (
    seq       INTEGER PRIMARY KEY,
    at        TEXT    NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    details   TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL UNIQUE
);

-- SQLite has no permissions, but the same append-only rule holds.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE is not allowed'); END;

CREATE TABLE mail_outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key       TEXT    UNIQUE,
    recipients       TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    text_body        TEXT    NOT NULL,
    html_body        TEXT    NOT NULL,
    attachments      TEXT    NOT NULL DEFAULT '[]',
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT    NOT NULL,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    last_error       TEXT,
    created_at       TEXT    NOT NULL,
    sent_at          TEXT
);

CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at) WHERE state IN ('pending', 'sending');

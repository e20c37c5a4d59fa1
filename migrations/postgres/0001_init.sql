-- Lethe's own state, in schema `lethe` (search_path is set by the driver).

CREATE TABLE job_runs (
    id               BIGSERIAL PRIMARY KEY,
    job              TEXT        NOT NULL,
    kind             TEXT        NOT NULL,
    scheduled_for    TIMESTAMPTZ NOT NULL,
    trigger          TEXT        NOT NULL DEFAULT 'schedule',
    state            TEXT        NOT NULL DEFAULT 'available'
                     CHECK (state IN ('available', 'running', 'retryable', 'succeeded', 'dead')),
    attempt          INTEGER     NOT NULL DEFAULT 0,
    max_attempts     INTEGER     NOT NULL CHECK (max_attempts > 0),
    timeout_ms       BIGINT      NOT NULL,
    allow_overlap    BOOLEAN     NOT NULL DEFAULT false,
    dry_run          BOOLEAN     NOT NULL DEFAULT false,
    params           JSONB       NOT NULL DEFAULT '{}',
    result           JSONB,
    error            TEXT,
    run_after        TIMESTAMPTZ NOT NULL,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    -- N replicas firing the same schedule enqueue it once.
    UNIQUE (job, scheduled_for)
);

CREATE INDEX job_runs_due ON job_runs (run_after, id) WHERE state IN ('available', 'retryable');
-- A job never overlaps itself unless its spec allows it: enforced by the database, not by luck.
CREATE UNIQUE INDEX job_runs_one_running ON job_runs (job) WHERE state = 'running' AND NOT allow_overlap;
CREATE INDEX job_runs_leases ON job_runs (lease_expires_at) WHERE state = 'running';
CREATE INDEX job_runs_finished ON job_runs (finished_at) WHERE state IN ('succeeded', 'dead');
CREATE INDEX job_runs_by_job ON job_runs (job, id DESC);

CREATE TABLE audit_events (
    seq       BIGINT      PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL,
    actor     TEXT        NOT NULL,
    action    TEXT        NOT NULL,
    target    TEXT        NOT NULL,
    details   TEXT        NOT NULL,  -- the canonical JSON text that was hashed
    prev_hash TEXT        NOT NULL,
    hash      TEXT        NOT NULL UNIQUE
);

CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'lethe.audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

CREATE TABLE mail_outbox (
    id               BIGSERIAL   PRIMARY KEY,
    dedupe_key       TEXT        UNIQUE,
    recipients       JSONB       NOT NULL,
    subject          TEXT        NOT NULL,
    text_body        TEXT        NOT NULL,
    html_body        TEXT        NOT NULL,
    attachments      JSONB       NOT NULL DEFAULT '[]',
    state            TEXT        NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    attempts         INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at          TIMESTAMPTZ
);

CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at) WHERE state IN ('pending', 'sending');

-- Rectification (GDPR Art. 16, CCPA §1798.106): a third kind of request.
ALTER TABLE dsr_requests DROP CONSTRAINT dsr_requests_kind_check;
ALTER TABLE dsr_requests ADD CONSTRAINT dsr_requests_kind_check
    CHECK (kind IN ('export', 'erasure', 'rectification'));

-- What a rectification sets: one row per column, kept with the request until
-- it is applied; then `subject_key` (a keyed hash of the subject's id, never
-- the id) and `applied_at` make it the ledger a restore re-applies. The values
-- are personal data: they go when the subject is erased, or the request is rejected.
CREATE TABLE dsr_rectifications (
    request_id  BIGINT      NOT NULL,
    table_name  TEXT        NOT NULL,
    column_name TEXT        NOT NULL,
    value       TEXT        NOT NULL,
    org         TEXT,
    subject_key TEXT,
    email_key   TEXT,       -- the keyed hash of the email: an erasure finished after a crash finds them by it
    applied_at  TIMESTAMPTZ,
    PRIMARY KEY (request_id, table_name, column_name)
);
CREATE INDEX dsr_rectifications_applied ON dsr_rectifications (applied_at) WHERE applied_at IS NOT NULL;

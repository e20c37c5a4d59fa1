-- Processor-scoped requests: an org (the controller) asks about one subject's
-- data in its own workspace only. NULL: the request covers every org.
ALTER TABLE dsr_requests ADD COLUMN org TEXT;
-- One open request per subject, kind and scope: two orgs may each ask.
DROP INDEX dsr_one_open;
CREATE UNIQUE INDEX dsr_one_open ON dsr_requests (subject, kind, coalesce(org, ''))
    WHERE state IN ('received', 'verified', 'in_progress', 'failed');

-- Erasures of a subject's rows in one org, re-applied by restores like the
-- erasure_ledger's (which records whole-subject erasures).
CREATE TABLE erasure_ledger_orgs (
    subject_key TEXT        NOT NULL,  -- keyed HMAC of the email, never the email
    org         TEXT        NOT NULL,
    request_id  BIGINT      NOT NULL,
    erased_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (subject_key, org)
);

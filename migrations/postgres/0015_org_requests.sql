-- Requests made by an organisation (a workspace) about all of its data: a
-- deletion that runs after a cooling-off period (`execute_after`), unless
-- cancelled first (`scheduled`); `running` once org.purge started it, when
-- it can no longer be cancelled. At most one open request of a kind per org.
CREATE TABLE org_requests (
    id            BIGSERIAL   PRIMARY KEY,
    org           TEXT        NOT NULL,
    kind          TEXT        NOT NULL,
    classes       JSONB       NOT NULL,
    reason        TEXT        NOT NULL,
    contact       TEXT,
    state         TEXT        NOT NULL,
    requested_by  TEXT        NOT NULL,
    requested_at  TIMESTAMPTZ NOT NULL,
    execute_after TIMESTAMPTZ NOT NULL,
    due_at        TIMESTAMPTZ NOT NULL,
    completed_at  TIMESTAMPTZ,
    result        JSONB
);
CREATE UNIQUE INDEX org_requests_one_open ON org_requests (org, kind) WHERE state IN ('scheduled', 'running');

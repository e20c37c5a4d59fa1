-- Requests made by an organisation (a workspace) about all of its data: a
-- deletion that runs after a cooling-off period (`execute_after`), unless
-- cancelled first (`scheduled`); `running` once org.purge started it, when
-- it can no longer be cancelled. At most one open request of a kind per org.
CREATE TABLE org_requests (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    org           TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    classes       TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    contact       TEXT,
    state         TEXT    NOT NULL,
    requested_by  TEXT    NOT NULL,
    requested_at  TEXT    NOT NULL,
    execute_after TEXT    NOT NULL,
    due_at        TEXT    NOT NULL,
    completed_at  TEXT,
    result        TEXT
);
CREATE UNIQUE INDEX org_requests_one_open ON org_requests (org, kind) WHERE state IN ('scheduled', 'running');

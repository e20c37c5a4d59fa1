-- Per-org retention overrides, legal holds, and per-run checkpoints (resume state).

CREATE TABLE retention_overrides (
    class   TEXT        NOT NULL,
    org     TEXT        NOT NULL,
    period  TEXT        NOT NULL,
    reason  TEXT        NOT NULL,
    set_by  TEXT        NOT NULL,
    set_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (class, org)
);

CREATE TABLE legal_holds (
    id             BIGSERIAL   PRIMARY KEY,
    scope          TEXT        NOT NULL CHECK (scope IN ('org', 'subject')),
    value          TEXT        NOT NULL,
    reason         TEXT        NOT NULL,
    created_by     TEXT        NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at    TIMESTAMPTZ,
    released_by    TEXT,
    release_reason TEXT
);
CREATE INDEX legal_holds_active ON legal_holds (scope, value) WHERE released_at IS NULL;

CREATE TABLE run_checkpoints (
    run_id     BIGINT      NOT NULL REFERENCES job_runs (id) ON DELETE CASCADE,
    key        TEXT        NOT NULL,
    value      JSONB       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, key)
);

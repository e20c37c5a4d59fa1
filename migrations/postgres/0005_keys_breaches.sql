-- Per-org data keys (wrapped by a KMS key) and personal-data breaches.
CREATE TABLE org_keks (
    org          TEXT        PRIMARY KEY,
    kek_id       TEXT        NOT NULL,
    rotated_at   TIMESTAMPTZ NOT NULL,
    shredded_at  TIMESTAMPTZ
);

CREATE TABLE org_deks (
    org          TEXT        NOT NULL,
    version      INTEGER     NOT NULL,
    kek_id       TEXT        NOT NULL,
    kek_version  TEXT        NOT NULL,
    wrapped      TEXT        NOT NULL,  -- base64 of the KMS ciphertext blob
    created_at   TIMESTAMPTZ NOT NULL,
    rewrapped_at TIMESTAMPTZ,
    PRIMARY KEY (org, version)
);

CREATE TABLE breaches (
    id            BIGSERIAL   PRIMARY KEY,
    title         TEXT        NOT NULL,
    detected_at   TIMESTAMPTZ NOT NULL,
    jurisdictions JSONB       NOT NULL,
    orgs          JSONB       NOT NULL,
    subjects      BIGINT      NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE breach_parties (
    breach_id    BIGINT      NOT NULL REFERENCES breaches (id),
    party        TEXT        NOT NULL,
    rule         TEXT        NOT NULL,
    due_at       TIMESTAMPTZ NOT NULL,
    notified_at  TIMESTAMPTZ,
    notified_by  TEXT,
    note         TEXT,
    PRIMARY KEY (breach_id, party)
);

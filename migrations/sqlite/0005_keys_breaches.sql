-- Per-org data keys (wrapped by a KMS key) and personal-data breaches.
CREATE TABLE org_keks (
    org          TEXT        PRIMARY KEY,
    kek_id       TEXT        NOT NULL,
    rotated_at   TEXT        NOT NULL,
    shredded_at  TEXT       
);

CREATE TABLE org_deks (
    org          TEXT        NOT NULL,
    version      INTEGER     NOT NULL,
    kek_id       TEXT        NOT NULL,
    kek_version  TEXT        NOT NULL,
    wrapped      TEXT        NOT NULL,  -- base64 of the KMS ciphertext blob
    created_at   TEXT        NOT NULL,
    rewrapped_at TEXT       ,
    PRIMARY KEY (org, version)
);

CREATE TABLE breaches (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    title         TEXT        NOT NULL,
    detected_at   TEXT        NOT NULL,
    jurisdictions TEXT        NOT NULL,
    orgs          TEXT        NOT NULL,
    subjects      INTEGER     NOT NULL,
    created_at    TEXT        NOT NULL
);

CREATE TABLE breach_parties (
    breach_id    INTEGER     NOT NULL REFERENCES breaches (id),
    party        TEXT        NOT NULL,
    rule         TEXT        NOT NULL,
    due_at       TEXT        NOT NULL,
    notified_at  TEXT       ,
    notified_by  TEXT,
    note         TEXT,
    PRIMARY KEY (breach_id, party)
);

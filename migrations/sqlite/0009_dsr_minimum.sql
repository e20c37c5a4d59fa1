-- Export archives are personal data: each is tracked from before its upload
-- until it is deleted (its link expired, or its subject was erased).
ALTER TABLE dsr_requests ADD COLUMN export_object     TEXT;
ALTER TABLE dsr_requests ADD COLUMN export_expires_at TEXT;
ALTER TABLE dsr_requests ADD COLUMN export_deleted_at TEXT;
CREATE INDEX dsr_exports_live ON dsr_requests (export_expires_at)
    WHERE export_object IS NOT NULL AND export_deleted_at IS NULL;

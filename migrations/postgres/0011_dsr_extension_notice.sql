-- An extension is recorded with when it was decided and when the subject was
-- told (GDPR Art. 12(3), CCPA §1798.130: within the deadline in force).
ALTER TABLE dsr_requests ADD COLUMN extended_at           TIMESTAMPTZ;
ALTER TABLE dsr_requests ADD COLUMN extension_notified_at TIMESTAMPTZ;

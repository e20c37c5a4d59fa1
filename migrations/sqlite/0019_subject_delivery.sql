-- Delivery to the subject: their own copy of an export (a passphrase-protected
-- ZIP) is tracked beside the DPO's archive and deleted with it; the mail that
-- carries its passphrase is a secret, whose body is wiped once delivered.
ALTER TABLE dsr_requests ADD COLUMN subject_object TEXT;
-- The SHA-256 of the copy whose two mails were queued: a retry reuses that
-- copy, so the link and the passphrase the subject holds keep matching.
ALTER TABLE dsr_requests ADD COLUMN subject_copy_sha TEXT;
ALTER TABLE mail_outbox ADD COLUMN secret INTEGER NOT NULL DEFAULT 0;

-- Delivery to the subject: their own copy of an export (a passphrase-protected
-- ZIP) is tracked beside the DPO's archive and deleted with it; the mail that
-- carries its passphrase is a secret, whose body is wiped once delivered.
ALTER TABLE dsr_requests ADD COLUMN subject_object TEXT;
ALTER TABLE mail_outbox ADD COLUMN secret INTEGER NOT NULL DEFAULT 0;

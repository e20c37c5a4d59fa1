-- A hash of the canonical request (kind, subject, jurisdiction) beside its
-- Idempotency-Key, so a key reused for a different request is refused instead
-- of silently answering with the first one. Keyed HMAC when the pseudonym key
-- is configured, so it names no subject by a plain hash.
ALTER TABLE dsr_requests ADD COLUMN request_hash TEXT;

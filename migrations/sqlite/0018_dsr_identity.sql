-- How a request's identity was checked: requests can arrive unverified
-- (state 'received') and are verified by a person, or expire.
ALTER TABLE dsr_requests ADD COLUMN verified_at TEXT;
ALTER TABLE dsr_requests ADD COLUMN verify_method TEXT;
ALTER TABLE dsr_requests ADD COLUMN verified_by TEXT;

-- Which run is working on an in-progress request: a request whose run
-- crashed (no longer running, or retried under the same id) is taken again.
ALTER TABLE dsr_requests ADD COLUMN claimed_by_run BIGINT;

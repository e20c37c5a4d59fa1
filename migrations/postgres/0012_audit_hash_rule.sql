-- The canonical-JSON rule each event was hashed under: 1 (sorted compact
-- JSON) for every event before this migration, 2 (RFC 8785) for new ones.
-- Stored so that old chains stay verifiable after the rule changed.
ALTER TABLE audit_events ADD COLUMN hash_rule SMALLINT NOT NULL DEFAULT 1;

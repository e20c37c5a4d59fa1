-- Why a closed org's keys are not shredded yet (a legal hold, or a class
-- whose org_closed+P retention has not run), as last recorded: evidence is
-- written when the reason changes, not on every keys.rotate run.
ALTER TABLE org_keks ADD COLUMN shred_postponed TEXT;

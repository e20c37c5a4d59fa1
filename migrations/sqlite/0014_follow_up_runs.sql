-- A follow-up run (one job's run queued by another's end, e.g. audit.anchor
-- after a purge) is queued at most once while it waits: a second finisher
-- finds it there and adds nothing.
CREATE UNIQUE INDEX job_runs_one_follow_up ON job_runs (job) WHERE state = 'available' AND trigger = 'follow_up';

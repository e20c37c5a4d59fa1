//! SQLite driver: one process (or a CLI beside it), writes serialised with
//! `BEGIN IMMEDIATE`, timestamps as fixed-width UTC text.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::Row;

use super::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

const TS_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

pub struct SqliteStore {
    pool: SqlitePool,
}

const RUN_COLUMNS: &str =
    "id, job, kind, scheduled_for, trigger, state, attempt, max_attempts, timeout_ms, \
     allow_overlap, dry_run, params, result, error, run_after, lease_owner, lease_expires_at, \
     created_at, started_at, finished_at";

const MAIL_COLUMNS: &str =
    "id, dedupe_key, recipients, subject, text_body, html_body, attachments, state, \
     attempts, next_attempt_at, last_error, created_at, sent_at";

pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.format(TS_FORMAT).to_string()
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::Failed(format!("bad timestamp `{s}` in store: {e}")))
}

fn get_ts(r: &SqliteRow, col: &str) -> Result<DateTime<Utc>> {
    parse_ts(r.try_get::<&str, _>(col)?)
}

fn get_ts_opt(r: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    r.try_get::<Option<&str>, _>(col)?.map(parse_ts).transpose()
}

fn get_json(r: &SqliteRow, col: &str) -> Result<serde_json::Value> {
    let s: &str = r.try_get(col)?;
    serde_json::from_str(s).map_err(|e| Error::Failed(format!("bad JSON in {col}: {e}")))
}

fn lease_until(lease: Duration) -> String {
    ts(Utc::now() + chrono::Duration::milliseconds(millis(lease)))
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)?;
        crate::private_file::precreate_sqlite(opts.get_filename())
            .map_err(|e| Error::io(format!("creating {}", opts.get_filename().display()), e))?;
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(15))
            .foreign_keys(true)
            // Replaced emails (`dsr_forget_subject`) must not linger in free pages.
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        Ok(SqliteStore { pool })
    }
}

fn run_from_row(r: &SqliteRow) -> Result<Run> {
    Ok(Run {
        id: r.try_get("id")?,
        job: r.try_get("job")?,
        kind: r.try_get("kind")?,
        scheduled_for: get_ts(r, "scheduled_for")?,
        trigger: r.try_get("trigger")?,
        state: RunState::parse(r.try_get::<&str, _>("state")?)?,
        attempt: r.try_get("attempt")?,
        max_attempts: r.try_get("max_attempts")?,
        timeout_ms: r.try_get("timeout_ms")?,
        allow_overlap: r.try_get("allow_overlap")?,
        dry_run: r.try_get("dry_run")?,
        params: get_json(r, "params")?,
        result: r
            .try_get::<Option<&str>, _>("result")?
            .map(|s| {
                serde_json::from_str(s)
                    .map_err(|e| Error::Failed(format!("bad JSON in result: {e}")))
            })
            .transpose()?,
        error: r.try_get("error")?,
        run_after: get_ts(r, "run_after")?,
        lease_owner: r.try_get("lease_owner")?,
        lease_expires_at: get_ts_opt(r, "lease_expires_at")?,
        created_at: get_ts(r, "created_at")?,
        started_at: get_ts_opt(r, "started_at")?,
        finished_at: get_ts_opt(r, "finished_at")?,
    })
}

fn mail_from_row(r: &SqliteRow) -> Result<OutboxMail> {
    Ok(OutboxMail {
        id: r.try_get("id")?,
        dedupe_key: r.try_get("dedupe_key")?,
        recipients: serde_json::from_value(get_json(r, "recipients")?)
            .map_err(|e| Error::Mail(format!("bad recipients in outbox: {e}")))?,
        subject: r.try_get("subject")?,
        text: r.try_get("text_body")?,
        html: r.try_get("html_body")?,
        attachments: serde_json::from_value(get_json(r, "attachments")?)
            .map_err(|e| Error::Mail(format!("bad attachments in outbox: {e}")))?,
        state: MailState::parse(r.try_get::<&str, _>("state")?)?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: get_ts(r, "next_attempt_at")?,
        last_error: r.try_get("last_error")?,
        created_at: get_ts(r, "created_at")?,
        sent_at: get_ts_opt(r, "sent_at")?,
    })
}

fn audit_from_row(r: &SqliteRow) -> Result<AuditEvent> {
    Ok(AuditEvent {
        seq: r.try_get("seq")?,
        at: get_ts(r, "at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        details: r.try_get("details")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

fn outcome_parts(o: &Outcome) -> (&'static str, Option<&str>, Option<String>, Option<String>) {
    match o {
        Outcome::Succeeded { result } => ("succeeded", None, Some(result.to_string()), None),
        Outcome::Retry { error, run_after } => {
            ("retryable", Some(error), None, Some(ts(*run_after)))
        }
        Outcome::Dead { error } => ("dead", Some(error), None, None),
    }
}

impl SqliteStore {
    async fn apply_outcome(
        &self,
        id: i64,
        owner: &str,
        outcome: &Outcome,
        require_expired: bool,
    ) -> Result<bool> {
        let (state, error, result, run_after) = outcome_parts(outcome);
        let now = ts(Utc::now());
        let n = sqlx::query(
            "UPDATE job_runs SET state = $3, error = $4, result = COALESCE($5, result),
                    run_after = COALESCE($6, run_after), lease_owner = NULL, lease_expires_at = NULL,
                    finished_at = $7
             WHERE id = $1 AND lease_owner = $2 AND state = 'running' AND (NOT $8 OR lease_expires_at < $7)",
        )
        .bind(id)
        .bind(owner)
        .bind(state)
        .bind(error)
        .bind(result)
        .bind(run_after)
        .bind(&now)
        .bind(require_expired)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn is_migrated(&self) -> Result<bool> {
        let exists: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        if exists == 0 {
            return Ok(false);
        }
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?;
        Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn now(&self) -> Result<DateTime<Utc>> {
        Ok(Utc::now())
    }

    async fn enqueue(&self, run: &NewRun) -> Result<Option<i64>> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO job_runs (job, kind, scheduled_for, trigger, max_attempts, timeout_ms, allow_overlap,
                                   dry_run, params, run_after, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $3, $10)
             ON CONFLICT (job, scheduled_for) DO NOTHING
             RETURNING id",
        )
        .bind(&run.job)
        .bind(&run.kind)
        .bind(ts(run.scheduled_for))
        .bind(&run.trigger)
        .bind(run.max_attempts)
        .bind(millis(run.timeout))
        .bind(run.allow_overlap)
        .bind(run.dry_run)
        .bind(run.params.to_string())
        .bind(ts(Utc::now()))
        .fetch_optional(&self.pool)
        .await?;
        Ok(id)
    }

    async fn latest_scheduled_for(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        let s: Option<String> = sqlx::query_scalar(
            "SELECT max(scheduled_for) FROM job_runs WHERE job = $1 AND trigger = 'schedule'",
        )
        .bind(job)
        .fetch_one(&self.pool)
        .await?;
        s.as_deref().map(parse_ts).transpose()
    }

    async fn claim_next(&self, owner: &str, lease: Duration) -> Result<Option<Run>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = ts(Utc::now());
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM job_runs r
             WHERE state IN ('available', 'retryable') AND run_after <= $1
               AND (allow_overlap OR NOT EXISTS (
                    SELECT 1 FROM job_runs o WHERE o.job = r.job AND o.state = 'running'))
             ORDER BY run_after, id LIMIT 1",
        )
        .bind(&now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else {
            return Ok(None);
        };
        let row = sqlx::query(&format!(
            "UPDATE job_runs SET state = 'running', attempt = attempt + 1, lease_owner = $2,
                    lease_expires_at = $3, started_at = $4, finished_at = NULL
             WHERE id = $1 RETURNING {RUN_COLUMNS}"
        ))
        .bind(id)
        .bind(owner)
        .bind(lease_until(lease))
        .bind(&now)
        .fetch_one(&mut *tx)
        .await?;
        let run = run_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(run))
    }

    async fn claim_run(&self, id: i64, owner: &str, lease: Duration) -> Result<Option<Run>> {
        let now = ts(Utc::now());
        let res = sqlx::query(&format!(
            "UPDATE job_runs SET state = 'running', attempt = attempt + 1, lease_owner = $2,
                    lease_expires_at = $3, started_at = $4, finished_at = NULL
             WHERE id = $1 AND state IN ('available', 'retryable') AND run_after <= $4
             RETURNING {RUN_COLUMNS}"
        ))
        .bind(id)
        .bind(owner)
        .bind(lease_until(lease))
        .bind(&now)
        .fetch_optional(&self.pool)
        .await;
        match res {
            Ok(row) => row.as_ref().map(run_from_row).transpose(),
            // The job is already running elsewhere (one-running index).
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn heartbeat(&self, id: i64, owner: &str, lease: Duration) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE job_runs SET lease_expires_at = $3 WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(owner)
        .bind(lease_until(lease))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn finish(&self, id: i64, owner: &str, outcome: &Outcome) -> Result<bool> {
        self.apply_outcome(id, owner, outcome, false).await
    }

    async fn expired_leases(&self) -> Result<Vec<Run>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM job_runs WHERE state = 'running' AND lease_expires_at < $1 ORDER BY id LIMIT 100"
        ))
        .bind(ts(Utc::now()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn rescue(&self, id: i64, owner: &str, outcome: &Outcome) -> Result<bool> {
        self.apply_outcome(id, owner, outcome, true).await
    }

    async fn get_run(&self, id: i64) -> Result<Option<Run>> {
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM job_runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM job_runs
             WHERE ($1 IS NULL OR job = $1) AND ($2 IS NULL OR state = $2)
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(filter.job.as_deref())
        .bind(filter.state.map(RunState::as_str))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn run_counts(&self) -> Result<Vec<RunCount>> {
        let rows = sqlx::query("SELECT job, state, count(*) AS n FROM job_runs GROUP BY job, state ORDER BY job, state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RunCount {
                    job: r.try_get("job")?,
                    state: RunState::parse(r.try_get::<&str, _>("state")?)?,
                    count: r.try_get("n")?,
                })
            })
            .collect()
    }

    async fn prune_runs(&self, before: DateTime<Utc>, batch: u32) -> Result<u64> {
        let n = sqlx::query(
            "DELETE FROM job_runs WHERE id IN (
                 SELECT id FROM job_runs WHERE state IN ('succeeded', 'dead') AND finished_at < $1
                 ORDER BY finished_at LIMIT $2)",
        )
        .bind(ts(before))
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn count_prunable(&self, before: DateTime<Utc>) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM job_runs WHERE state IN ('succeeded', 'dead') AND finished_at < $1",
        )
        .bind(ts(before))
        .fetch_one(&self.pool)
        .await?)
    }

    async fn append_audit(&self, event: &NewAuditEvent) -> Result<AuditEvent> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let prev = sqlx::query("SELECT * FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let prev = prev.as_ref().map(audit_from_row).transpose()?;
        let e = crate::chain::chain_event(prev.as_ref(), event, Utc::now());
        sqlx::query(
            "INSERT INTO audit_events (seq, at, actor, action, target, details, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(e.seq)
        .bind(ts(e.at))
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.details)
        .bind(&e.prev_hash)
        .bind(&e.hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(e)
    }

    async fn audit_page(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>> {
        let rows = sqlx::query("SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn outbox_enqueue(&self, mail: &NewMail) -> Result<(i64, bool)> {
        let now = ts(Utc::now());
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO mail_outbox (dedupe_key, recipients, subject, text_body, html_body, attachments,
                                      next_attempt_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
             ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
        )
        .bind(&mail.dedupe_key)
        .bind(serde_json::to_string(&mail.recipients).unwrap_or_default())
        .bind(&mail.subject)
        .bind(&mail.text)
        .bind(&mail.html)
        .bind(serde_json::to_string(&mail.attachments).unwrap_or_default())
        .bind(&now)
        .fetch_optional(&self.pool)
        .await?;
        match inserted {
            Some(id) => Ok((id, true)),
            None => {
                let id: i64 =
                    sqlx::query_scalar("SELECT id FROM mail_outbox WHERE dedupe_key = $1")
                        .bind(&mail.dedupe_key)
                        .fetch_one(&self.pool)
                        .await?;
                Ok((id, false))
            }
        }
    }

    async fn outbox_claim(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<OutboxMail>> {
        let now = ts(Utc::now());
        let rows = sqlx::query(&format!(
            "UPDATE mail_outbox SET state = 'sending', lease_owner = $1, lease_expires_at = $3
             WHERE id IN (
                 SELECT id FROM mail_outbox
                 WHERE (state = 'pending' AND next_attempt_at <= $4)
                    OR (state = 'sending' AND lease_expires_at < $4)
                 ORDER BY next_attempt_at, id LIMIT $2)
             RETURNING {MAIL_COLUMNS}"
        ))
        .bind(owner)
        .bind(i64::from(limit))
        .bind(lease_until(lease))
        .bind(&now)
        .fetch_all(&self.pool)
        .await?;
        let mut mails = rows.iter().map(mail_from_row).collect::<Result<Vec<_>>>()?;
        mails.sort_by_key(|m| m.id);
        Ok(mails)
    }

    async fn outbox_sent(&self, id: i64, owner: &str) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE mail_outbox SET state = 'sent', sent_at = $3, attempts = attempts + 1,
                    lease_owner = NULL, lease_expires_at = NULL, last_error = NULL
             WHERE id = $1 AND lease_owner = $2 AND state = 'sending'",
        )
        .bind(id)
        .bind(owner)
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn outbox_failed(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE mail_outbox SET state = CASE WHEN $4 IS NULL THEN 'failed' ELSE 'pending' END,
                    next_attempt_at = COALESCE($4, next_attempt_at), attempts = attempts + 1,
                    last_error = $3, lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1 AND lease_owner = $2 AND state = 'sending'",
        )
        .bind(id)
        .bind(owner)
        .bind(error)
        .bind(retry_at.map(ts))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn outbox_has(&self, dedupe_key: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM mail_outbox WHERE dedupe_key = $1")
            .bind(dedupe_key)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    async fn outbox_list(&self, limit: u32) -> Result<Vec<OutboxMail>> {
        let rows = sqlx::query(&format!(
            "SELECT {MAIL_COLUMNS} FROM mail_outbox ORDER BY id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(mail_from_row).collect()
    }

    async fn override_set(&self, o: &RetentionOverride) -> Result<()> {
        sqlx::query(
            "INSERT INTO retention_overrides (class, org, period, reason, set_by, set_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (class, org) DO UPDATE SET period = $3, reason = $4, set_by = $5, set_at = $6",
        )
        .bind(&o.class)
        .bind(&o.org)
        .bind(&o.period)
        .bind(&o.reason)
        .bind(&o.set_by)
        .bind(ts(o.set_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn override_unset(&self, class: &str, org: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM retention_overrides WHERE class = $1 AND org = $2")
            .bind(class)
            .bind(org)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn overrides(&self) -> Result<Vec<RetentionOverride>> {
        let rows = sqlx::query("SELECT * FROM retention_overrides ORDER BY class, org")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(RetentionOverride {
                    class: r.try_get("class")?,
                    org: r.try_get("org")?,
                    period: r.try_get("period")?,
                    reason: r.try_get("reason")?,
                    set_by: r.try_get("set_by")?,
                    set_at: get_ts(r, "set_at")?,
                })
            })
            .collect()
    }

    async fn hold_add(
        &self,
        scope: HoldScope,
        value: &str,
        reason: &str,
        actor: &str,
    ) -> Result<LegalHold> {
        let row = sqlx::query(
            "INSERT INTO legal_holds (scope, value, reason, created_by, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING *",
        )
        .bind(scope.as_str())
        .bind(value)
        .bind(reason)
        .bind(actor)
        .bind(ts(Utc::now()))
        .fetch_one(&self.pool)
        .await?;
        hold_from_row(&row)
    }

    async fn hold_release(&self, id: i64, reason: &str, actor: &str) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE legal_holds SET released_at = $4, released_by = $3, release_reason = $2
             WHERE id = $1 AND released_at IS NULL",
        )
        .bind(id)
        .bind(reason)
        .bind(actor)
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn holds(&self, include_released: bool) -> Result<Vec<LegalHold>> {
        let rows =
            sqlx::query("SELECT * FROM legal_holds WHERE $1 OR released_at IS NULL ORDER BY id")
                .bind(include_released)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(hold_from_row).collect()
    }

    async fn backup_insert(&self, b: &BackupRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO backups (id, created_at, run_id, object_key, manifest_key, stored_bytes, raw_bytes, sha256, manifest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&b.id)
        .bind(ts(b.created_at))
        .bind(b.run_id)
        .bind(&b.object_key)
        .bind(&b.manifest_key)
        .bind(b.stored_bytes)
        .bind(b.raw_bytes)
        .bind(&b.sha256)
        .bind(b.manifest.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn backup_verified(
        &self,
        id: &str,
        ok: bool,
        restore_ms: Option<i64>,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE backups SET verified_at = $5, verify_ok = $2, restore_ms = $3, verify_error = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(ok)
        .bind(restore_ms)
        .bind(error)
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn backup_deleted(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE backups SET deleted_at = $2 WHERE id = $1")
            .bind(id)
            .bind(ts(Utc::now()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn backups(&self, include_deleted: bool) -> Result<Vec<BackupRecord>> {
        let rows = sqlx::query("SELECT * FROM backups WHERE $1 OR deleted_at IS NULL ORDER BY created_at DESC, id DESC")
            .bind(include_deleted)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(backup_from_row).collect()
    }

    async fn dsr_insert(&self, r: &NewDsr) -> Result<DsrInsert> {
        if let Some(key) = &r.idempotency_key {
            let prior = sqlx::query("SELECT * FROM dsr_requests WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = prior {
                return Ok(r.replay_of(dsr_from_row(&row)?));
            }
        }
        let res = sqlx::query(
            "INSERT INTO dsr_requests (kind, subject, jurisdiction, state, reason, detail, source, idempotency_key,
                                       received_at, due_at, updated_at, request_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9, $11) RETURNING *",
        )
        .bind(&r.kind)
        .bind(&r.subject)
        .bind(&r.jurisdiction)
        .bind(r.state.as_str())
        .bind(&r.reason)
        .bind(&r.detail)
        .bind(&r.source)
        .bind(&r.idempotency_key)
        .bind(ts(r.received_at))
        .bind(ts(r.due_at))
        .bind(&r.request_hash)
        .fetch_one(&self.pool)
        .await;
        match res {
            Ok(row) => Ok(DsrInsert::Created(dsr_from_row(&row)?)),
            Err(e) if matches!(&e, sqlx::Error::Database(d) if d.is_unique_violation()) => {
                // Either the open-request index or a racing idempotent retry.
                if let Some(key) = &r.idempotency_key {
                    if let Some(row) =
                        sqlx::query("SELECT * FROM dsr_requests WHERE idempotency_key = $1")
                            .bind(key)
                            .fetch_optional(&self.pool)
                            .await?
                    {
                        return Ok(r.replay_of(dsr_from_row(&row)?));
                    }
                }
                let row = sqlx::query(
                    "SELECT * FROM dsr_requests WHERE subject = $1 AND kind = $2
                     AND state IN ('received', 'verified', 'in_progress', 'failed') ORDER BY id LIMIT 1",
                )
                .bind(&r.subject)
                .bind(&r.kind)
                .fetch_one(&self.pool)
                .await?;
                Ok(DsrInsert::Duplicate(dsr_from_row(&row)?))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn dsr_get(&self, id: i64) -> Result<Option<DsrRequest>> {
        let row = sqlx::query("SELECT * FROM dsr_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(dsr_from_row).transpose()
    }

    async fn dsr_list(&self, state: Option<DsrState>, limit: u32) -> Result<Vec<DsrRequest>> {
        let rows = sqlx::query(
            "SELECT * FROM dsr_requests WHERE ($1 IS NULL OR state = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(state.map(DsrState::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dsr_from_row).collect()
    }

    async fn dsr_due(&self, limit: u32, run_id: i64) -> Result<Vec<DsrRequest>> {
        let rows = sqlx::query(&format!(
            "SELECT * FROM dsr_requests WHERE {} ORDER BY due_at, id LIMIT $1",
            super::DSR_TAKEABLE
        ))
        .bind(i64::from(limit))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dsr_from_row).collect()
    }

    async fn dsr_claim(&self, id: i64, run_id: i64) -> Result<bool> {
        let n = sqlx::query(&format!(
            "UPDATE dsr_requests SET state = 'in_progress', claimed_by_run = $2,
                    attempts = attempts + 1, updated_at = $3
             WHERE id = $1 AND {}",
            super::DSR_TAKEABLE
        ))
        .bind(id)
        .bind(run_id)
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn dsr_transition(
        &self,
        id: i64,
        from: &[DsrState],
        to: DsrState,
        reason: Option<&str>,
        result: Option<&serde_json::Value>,
    ) -> Result<bool> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let n = sqlx::query(
            "UPDATE dsr_requests SET state = $2, reason = COALESCE($3, reason), result = COALESCE($4, result),
                    attempts = attempts + CASE WHEN $2 = 'in_progress' THEN 1 ELSE 0 END,
                    completed_at = CASE WHEN $2 = 'completed' THEN $6 ELSE completed_at END, updated_at = $6
             WHERE id = $1 AND state IN (SELECT value FROM json_each($5))",
        )
        .bind(id)
        .bind(to.as_str())
        .bind(reason)
        .bind(result.map(|v| v.to_string()))
        .bind(serde_json::to_string(&from).unwrap_or_default())
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn dsr_extend(&self, id: i64, e: &DsrExtension) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE dsr_requests SET due_at = $2, extended_days = extended_days + $3,
                    extension_reason = $4, extended_at = $5, extension_notified_at = $6, updated_at = $5
             WHERE id = $1 AND state IN ('received', 'verified', 'in_progress', 'failed')
               AND due_at = $7 AND due_at >= $5",
        )
        .bind(id)
        .bind(ts(e.due_at))
        .bind(e.days)
        .bind(&e.reason)
        .bind(ts(e.extended_at))
        .bind(ts(e.notified_at))
        .bind(ts(e.from_due_at))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn ledger_add(&self, subject_key: &str, request_id: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO erasure_ledger (subject_key, request_id, erased_at) VALUES ($1, $2, $3)
             ON CONFLICT (subject_key) DO UPDATE SET request_id = $2, erased_at = $3",
        )
        .bind(subject_key)
        .bind(request_id)
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn ledger_keys(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT subject_key FROM erasure_ledger ORDER BY subject_key")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn ledger_check(&self) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT check_value FROM erasure_ledger_check WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn ledger_check_init(&self, value: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO erasure_ledger_check (id, check_value, created_at) VALUES (1, $1, $2)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(value)
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT check_value FROM erasure_ledger_check WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn dsr_export_started(
        &self,
        id: i64,
        object: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE dsr_requests SET export_object = $2, export_expires_at = $3, export_deleted_at = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(object)
        .bind(ts(expires_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn dsr_exports_to_delete(
        &self,
        now: DateTime<Utc>,
        subject: Option<&str>,
    ) -> Result<Vec<(i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT id, export_object FROM dsr_requests
             WHERE export_object IS NOT NULL AND export_deleted_at IS NULL
               AND (CASE WHEN $2 IS NULL THEN export_expires_at <= $1 ELSE subject = $2 END)
             ORDER BY id",
        )
        .bind(ts(now))
        .bind(subject)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn dsr_export_deleted(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE dsr_requests SET export_deleted_at = $2 WHERE id = $1")
            .bind(id)
            .bind(ts(Utc::now()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn dsr_forget_subject(&self, email: &str, pseudonym: &str) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE dsr_requests SET subject = $2, detail = replace(detail, $1, $2), request_hash = NULL
             WHERE subject = $1",
        )
        .bind(email)
        .bind(pseudonym)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let h = sqlx::query(
            "UPDATE legal_holds SET value = $2
             WHERE scope = 'subject' AND value = $1 AND released_at IS NOT NULL",
        )
        .bind(email)
        .bind(pseudonym)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        // The old pages with the email sit in the WAL until a checkpoint: write
        // them back (zeroed by secure_delete) and truncate the WAL now.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await?;
        Ok(n + h)
    }

    async fn dsr_unforgotten_erasures(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT subject FROM dsr_requests
             WHERE kind = 'erasure' AND state = 'completed' AND subject LIKE '%@%' ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn keks(&self) -> Result<Vec<OrgKek>> {
        let rows = sqlx::query("SELECT * FROM org_keks ORDER BY org")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OrgKek {
                    org: r.try_get("org")?,
                    kek_id: r.try_get("kek_id")?,
                    rotated_at: get_ts(r, "rotated_at")?,
                    shredded_at: get_ts_opt(r, "shredded_at")?,
                })
            })
            .collect()
    }

    async fn kek_put(&self, k: &OrgKek) -> Result<()> {
        sqlx::query(
            "INSERT INTO org_keks (org, kek_id, rotated_at, shredded_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (org) DO UPDATE SET kek_id = $2, rotated_at = $3, shredded_at = $4",
        )
        .bind(&k.org)
        .bind(&k.kek_id)
        .bind(ts(k.rotated_at))
        .bind(k.shredded_at.map(ts))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn deks(&self, org: Option<&str>) -> Result<Vec<OrgDek>> {
        let rows = sqlx::query(
            "SELECT * FROM org_deks WHERE ($1 IS NULL OR org = $1) ORDER BY org, version",
        )
        .bind(org)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OrgDek {
                    org: r.try_get("org")?,
                    version: r.try_get("version")?,
                    kek_id: r.try_get("kek_id")?,
                    kek_version: r.try_get("kek_version")?,
                    wrapped: r.try_get("wrapped")?,
                    created_at: get_ts(r, "created_at")?,
                    rewrapped_at: get_ts_opt(r, "rewrapped_at")?,
                })
            })
            .collect()
    }

    async fn dek_insert(&self, d: &OrgDek) -> Result<()> {
        sqlx::query(
            "INSERT INTO org_deks (org, version, kek_id, kek_version, wrapped, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&d.org)
        .bind(d.version)
        .bind(&d.kek_id)
        .bind(&d.kek_version)
        .bind(&d.wrapped)
        .bind(ts(d.created_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn dek_rewrapped(
        &self,
        org: &str,
        version: i32,
        kek_version: &str,
        wrapped: &str,
    ) -> Result<()> {
        sqlx::query("UPDATE org_deks SET kek_version = $3, wrapped = $4, rewrapped_at = $5 WHERE org = $1 AND version = $2")
            .bind(org)
            .bind(version)
            .bind(kek_version)
            .bind(wrapped)
            .bind(ts(Utc::now()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn deks_destroy(&self, org: &str) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM org_deks WHERE org = $1")
            .bind(org)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    async fn breach_insert(&self, b: &Breach) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO breaches (title, detected_at, jurisdictions, orgs, subjects, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&b.title)
        .bind(ts(b.detected_at))
        .bind(b.jurisdictions.to_string())
        .bind(b.orgs.to_string())
        .bind(b.subjects)
        .bind(ts(b.created_at))
        .fetch_one(&mut *tx)
        .await?;
        for p in &b.parties {
            sqlx::query("INSERT INTO breach_parties (breach_id, party, rule, due_at) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(&p.party)
                .bind(&p.rule)
                .bind(ts(p.due_at))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    async fn breaches(&self) -> Result<Vec<Breach>> {
        let rows = sqlx::query("SELECT * FROM breaches ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let prow = sqlx::query("SELECT * FROM breach_parties ORDER BY breach_id, due_at, party")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            let mut parties = Vec::new();
            for r in prow.iter() {
                if r.try_get::<i64, _>("breach_id")? != id {
                    continue;
                }
                parties.push(BreachParty {
                    party: r.try_get("party")?,
                    rule: r.try_get("rule")?,
                    due_at: get_ts(r, "due_at")?,
                    notified_at: get_ts_opt(r, "notified_at")?,
                    notified_by: r.try_get("notified_by")?,
                    note: r.try_get("note")?,
                });
            }
            out.push(Breach {
                id,
                title: r.try_get("title")?,
                detected_at: get_ts(r, "detected_at")?,
                jurisdictions: get_json(r, "jurisdictions")?,
                orgs: get_json(r, "orgs")?,
                subjects: r.try_get("subjects")?,
                created_at: get_ts(r, "created_at")?,
                parties,
            });
        }
        Ok(out)
    }

    async fn breach_notified(
        &self,
        id: i64,
        party: &str,
        by: &str,
        note: Option<&str>,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE breach_parties SET notified_at = $5, notified_by = $3, note = $4
             WHERE breach_id = $1 AND party = $2 AND notified_at IS NULL",
        )
        .bind(id)
        .bind(party)
        .bind(by)
        .bind(note)
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn checkpoint_get(&self, run_id: i64, key: &str) -> Result<Option<serde_json::Value>> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM run_checkpoints WHERE run_id = $1 AND key = $2")
                .bind(run_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        v.map(|s| {
            serde_json::from_str(&s).map_err(|e| Error::Failed(format!("bad checkpoint JSON: {e}")))
        })
        .transpose()
    }

    async fn checkpoint_put(
        &self,
        run_id: i64,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO run_checkpoints (run_id, key, value, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id, key) DO UPDATE SET value = $3, updated_at = $4",
        )
        .bind(run_id)
        .bind(key)
        .bind(value.to_string())
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn hold_from_row(r: &SqliteRow) -> Result<LegalHold> {
    Ok(LegalHold {
        id: r.try_get("id")?,
        scope: HoldScope::parse(r.try_get::<&str, _>("scope")?)?,
        value: r.try_get("value")?,
        reason: r.try_get("reason")?,
        created_by: r.try_get("created_by")?,
        created_at: get_ts(r, "created_at")?,
        released_at: get_ts_opt(r, "released_at")?,
        released_by: r.try_get("released_by")?,
        release_reason: r.try_get("release_reason")?,
    })
}

fn backup_from_row(r: &SqliteRow) -> Result<BackupRecord> {
    Ok(BackupRecord {
        id: r.try_get("id")?,
        created_at: get_ts(r, "created_at")?,
        run_id: r.try_get("run_id")?,
        object_key: r.try_get("object_key")?,
        manifest_key: r.try_get("manifest_key")?,
        stored_bytes: r.try_get("stored_bytes")?,
        raw_bytes: r.try_get("raw_bytes")?,
        sha256: r.try_get("sha256")?,
        manifest: get_json(r, "manifest")?,
        verified_at: get_ts_opt(r, "verified_at")?,
        verify_ok: r.try_get("verify_ok")?,
        restore_ms: r.try_get("restore_ms")?,
        verify_error: r.try_get("verify_error")?,
        deleted_at: get_ts_opt(r, "deleted_at")?,
    })
}

fn dsr_from_row(r: &SqliteRow) -> Result<DsrRequest> {
    Ok(DsrRequest {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        subject: r.try_get("subject")?,
        jurisdiction: r.try_get("jurisdiction")?,
        state: DsrState::parse(r.try_get::<&str, _>("state")?)?,
        reason: r.try_get("reason")?,
        detail: r.try_get("detail")?,
        source: r.try_get("source")?,
        idempotency_key: r.try_get("idempotency_key")?,
        request_hash: r.try_get("request_hash")?,
        received_at: get_ts(r, "received_at")?,
        due_at: get_ts(r, "due_at")?,
        extended_days: r.try_get("extended_days")?,
        extension_reason: r.try_get("extension_reason")?,
        extended_at: get_ts_opt(r, "extended_at")?,
        extension_notified_at: get_ts_opt(r, "extension_notified_at")?,
        completed_at: get_ts_opt(r, "completed_at")?,
        attempts: r.try_get("attempts")?,
        result: r
            .try_get::<Option<&str>, _>("result")?
            .map(|s| serde_json::from_str(s).unwrap_or(serde_json::Value::Null)),
        updated_at: get_ts(r, "updated_at")?,
    })
}

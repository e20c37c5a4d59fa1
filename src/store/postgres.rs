//! PostgreSQL driver: worker tables in schema `lethe`, claims with
//! `FOR UPDATE SKIP LOCKED`, leases against the database clock.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

use super::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Fixed key for the advisory lock that serialises audit appends across replicas.
const AUDIT_LOCK_KEY: i64 = 0x4c45_5448_4541_5544; // "LETHEAUD"

pub struct PgStore {
    pool: PgPool,
}

const RUN_COLUMNS: &str =
    "id, job, kind, scheduled_for, trigger, state, attempt, max_attempts, timeout_ms, \
     allow_overlap, dry_run, params, result, error, run_after, lease_owner, lease_expires_at, \
     created_at, started_at, finished_at";

const MAIL_COLUMNS: &str =
    "id, dedupe_key, recipients, subject, text_body, html_body, attachments, state, \
     attempts, next_attempt_at, last_error, created_at, sent_at";

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)?
            .options([("search_path", "lethe")])
            .application_name("lethe");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(opts)
            .await?;
        Ok(PgStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn run_from_row(r: &PgRow) -> Result<Run> {
    Ok(Run {
        id: r.try_get("id")?,
        job: r.try_get("job")?,
        kind: r.try_get("kind")?,
        scheduled_for: r.try_get("scheduled_for")?,
        trigger: r.try_get("trigger")?,
        state: RunState::parse(r.try_get::<&str, _>("state")?)?,
        attempt: r.try_get("attempt")?,
        max_attempts: r.try_get("max_attempts")?,
        timeout_ms: r.try_get("timeout_ms")?,
        allow_overlap: r.try_get("allow_overlap")?,
        dry_run: r.try_get("dry_run")?,
        params: r.try_get("params")?,
        result: r.try_get("result")?,
        error: r.try_get("error")?,
        run_after: r.try_get("run_after")?,
        lease_owner: r.try_get("lease_owner")?,
        lease_expires_at: r.try_get("lease_expires_at")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

fn mail_from_row(r: &PgRow) -> Result<OutboxMail> {
    let recipients: serde_json::Value = r.try_get("recipients")?;
    let attachments: serde_json::Value = r.try_get("attachments")?;
    Ok(OutboxMail {
        id: r.try_get("id")?,
        dedupe_key: r.try_get("dedupe_key")?,
        recipients: serde_json::from_value(recipients)
            .map_err(|e| Error::Mail(format!("bad recipients in outbox: {e}")))?,
        subject: r.try_get("subject")?,
        text: r.try_get("text_body")?,
        html: r.try_get("html_body")?,
        attachments: serde_json::from_value(attachments)
            .map_err(|e| Error::Mail(format!("bad attachments in outbox: {e}")))?,
        state: MailState::parse(r.try_get::<&str, _>("state")?)?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        sent_at: r.try_get("sent_at")?,
    })
}

fn audit_from_row(r: &PgRow) -> Result<AuditEvent> {
    Ok(AuditEvent {
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        details: r.try_get("details")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// SQL for an outcome: `(state, error, result, run_after, finished)`.
fn outcome_parts(
    o: &Outcome,
) -> (
    &'static str,
    Option<&str>,
    Option<&serde_json::Value>,
    Option<DateTime<Utc>>,
) {
    match o {
        Outcome::Succeeded { result } => ("succeeded", None, Some(result), None),
        Outcome::Retry { error, run_after } => ("retryable", Some(error), None, Some(*run_after)),
        Outcome::Dead { error } => ("dead", Some(error), None, None),
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> Result<()> {
        // Replicas may migrate at once; a lost CREATE SCHEMA race is harmless.
        if let Err(e) = sqlx::query("CREATE SCHEMA IF NOT EXISTS lethe")
            .execute(&self.pool)
            .await
        {
            if !is_unique_violation(&e) {
                return Err(e.into());
            }
        }
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn is_migrated(&self) -> Result<bool> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = 'lethe' AND table_name = '_sqlx_migrations')",
        )
        .fetch_one(&self.pool)
        .await?;
        if !exists {
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
        Ok(sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn enqueue(&self, run: &NewRun) -> Result<Option<i64>> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO job_runs (job, kind, scheduled_for, trigger, max_attempts, timeout_ms, allow_overlap, dry_run, params, run_after)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $3)
             ON CONFLICT (job, scheduled_for) DO NOTHING
             RETURNING id",
        )
        .bind(&run.job)
        .bind(&run.kind)
        .bind(run.scheduled_for)
        .bind(&run.trigger)
        .bind(run.max_attempts)
        .bind(millis(run.timeout))
        .bind(run.allow_overlap)
        .bind(run.dry_run)
        .bind(&run.params)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id)
    }

    async fn latest_scheduled_for(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(
            "SELECT max(scheduled_for) FROM job_runs WHERE job = $1 AND trigger = 'schedule'",
        )
        .bind(job)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn claim_next(&self, owner: &str, lease: Duration) -> Result<Option<Run>> {
        let sql = format!(
            "WITH next AS (
                 SELECT id FROM job_runs r
                 WHERE state IN ('available', 'retryable') AND run_after <= now()
                   AND (allow_overlap OR NOT EXISTS (
                        SELECT 1 FROM job_runs o WHERE o.job = r.job AND o.state = 'running'))
                 ORDER BY run_after, id
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED)
             UPDATE job_runs j SET state = 'running', attempt = attempt + 1, lease_owner = $1,
                    lease_expires_at = now() + $2 * interval '1 millisecond',
                    started_at = now(), finished_at = NULL
             FROM next WHERE j.id = next.id
             RETURNING {}",
            RUN_COLUMNS
                .split(", ")
                .map(|c| format!("j.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        match sqlx::query(&sql)
            .bind(owner)
            .bind(millis(lease))
            .fetch_optional(&self.pool)
            .await
        {
            Ok(row) => row.as_ref().map(run_from_row).transpose(),
            // Another replica started the same job a moment ago; the one-running index said no.
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn claim_run(&self, id: i64, owner: &str, lease: Duration) -> Result<Option<Run>> {
        let sql = format!(
            "UPDATE job_runs SET state = 'running', attempt = attempt + 1, lease_owner = $2,
                    lease_expires_at = now() + $3 * interval '1 millisecond',
                    started_at = now(), finished_at = NULL
             WHERE id = $1 AND state IN ('available', 'retryable') AND run_after <= now()
             RETURNING {RUN_COLUMNS}"
        );
        match sqlx::query(&sql)
            .bind(id)
            .bind(owner)
            .bind(millis(lease))
            .fetch_optional(&self.pool)
            .await
        {
            Ok(row) => row.as_ref().map(run_from_row).transpose(),
            Err(e) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn heartbeat(&self, id: i64, owner: &str, lease: Duration) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE job_runs SET lease_expires_at = now() + $3 * interval '1 millisecond'
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(owner)
        .bind(millis(lease))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn finish(&self, id: i64, owner: &str, outcome: &Outcome) -> Result<bool> {
        let (state, error, result, run_after) = outcome_parts(outcome);
        let n = sqlx::query(
            "UPDATE job_runs SET state = $3, error = $4, result = COALESCE($5, result),
                    run_after = COALESCE($6, run_after), lease_owner = NULL, lease_expires_at = NULL,
                    finished_at = now()
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(owner)
        .bind(state)
        .bind(error)
        .bind(result)
        .bind(run_after)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn expired_leases(&self) -> Result<Vec<Run>> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM job_runs WHERE state = 'running' AND lease_expires_at < now() ORDER BY id LIMIT 100"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn rescue(&self, id: i64, owner: &str, outcome: &Outcome) -> Result<bool> {
        let (state, error, result, run_after) = outcome_parts(outcome);
        let n = sqlx::query(
            "UPDATE job_runs SET state = $3, error = $4, result = COALESCE($5, result),
                    run_after = COALESCE($6, run_after), lease_owner = NULL, lease_expires_at = NULL,
                    finished_at = now()
             WHERE id = $1 AND lease_owner = $2 AND state = 'running' AND lease_expires_at < now()",
        )
        .bind(id)
        .bind(owner)
        .bind(state)
        .bind(error)
        .bind(result)
        .bind(run_after)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
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
             WHERE ($1::text IS NULL OR job = $1) AND ($2::text IS NULL OR state = $2)
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
                 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(before)
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
        .bind(before)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn append_audit(&self, event: &NewAuditEvent) -> Result<AuditEvent> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK_KEY)
            .execute(&mut *tx)
            .await?;
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
        .bind(e.at)
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
        let recipients = serde_json::to_value(&mail.recipients).unwrap_or_default();
        let attachments = serde_json::to_value(&mail.attachments).unwrap_or_default();
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO mail_outbox (dedupe_key, recipients, subject, text_body, html_body, attachments)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
        )
        .bind(&mail.dedupe_key)
        .bind(recipients)
        .bind(&mail.subject)
        .bind(&mail.text)
        .bind(&mail.html)
        .bind(attachments)
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
        let rows = sqlx::query(&format!(
            "WITH due AS (
                 SELECT id FROM mail_outbox
                 WHERE (state = 'pending' AND next_attempt_at <= now())
                    OR (state = 'sending' AND lease_expires_at < now())
                 ORDER BY next_attempt_at, id LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             UPDATE mail_outbox m SET state = 'sending', lease_owner = $1,
                    lease_expires_at = now() + $3 * interval '1 millisecond'
             FROM due WHERE m.id = due.id
             RETURNING {}",
            MAIL_COLUMNS
                .split(", ")
                .map(|c| format!("m.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(owner)
        .bind(i64::from(limit))
        .bind(millis(lease))
        .fetch_all(&self.pool)
        .await?;
        let mut mails = rows.iter().map(mail_from_row).collect::<Result<Vec<_>>>()?;
        mails.sort_by_key(|m| m.id);
        Ok(mails)
    }

    async fn outbox_sent(&self, id: i64, owner: &str) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE mail_outbox SET state = 'sent', sent_at = now(), attempts = attempts + 1,
                    lease_owner = NULL, lease_expires_at = NULL, last_error = NULL
             WHERE id = $1 AND lease_owner = $2 AND state = 'sending'",
        )
        .bind(id)
        .bind(owner)
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
            "UPDATE mail_outbox SET state = CASE WHEN $4::timestamptz IS NULL THEN 'failed' ELSE 'pending' END,
                    next_attempt_at = COALESCE($4, next_attempt_at), attempts = attempts + 1,
                    last_error = $3, lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1 AND lease_owner = $2 AND state = 'sending'",
        )
        .bind(id)
        .bind(owner)
        .bind(error)
        .bind(retry_at)
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
        .bind(o.set_at)
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
                    set_at: r.try_get("set_at")?,
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
            "INSERT INTO legal_holds (scope, value, reason, created_by) VALUES ($1, $2, $3, $4) RETURNING *",
        )
        .bind(scope.as_str())
        .bind(value)
        .bind(reason)
        .bind(actor)
        .fetch_one(&self.pool)
        .await?;
        hold_from_row(&row)
    }

    async fn hold_release(&self, id: i64, reason: &str, actor: &str) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE legal_holds SET released_at = now(), released_by = $3, release_reason = $2
             WHERE id = $1 AND released_at IS NULL",
        )
        .bind(id)
        .bind(reason)
        .bind(actor)
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
        .bind(b.created_at)
        .bind(b.run_id)
        .bind(&b.object_key)
        .bind(&b.manifest_key)
        .bind(b.stored_bytes)
        .bind(b.raw_bytes)
        .bind(&b.sha256)
        .bind(b.manifest.clone())
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
            "UPDATE backups SET verified_at = now(), verify_ok = $2, restore_ms = $3, verify_error = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(ok)
        .bind(restore_ms)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn backup_deleted(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE backups SET deleted_at = now() WHERE id = $1")
            .bind(id)
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
        .bind(r.received_at)
        .bind(r.due_at)
        .bind(&r.request_hash)
        .fetch_one(&self.pool)
        .await;
        match res {
            Ok(row) => Ok(DsrInsert::Created(dsr_from_row(&row)?)),
            Err(e) if is_unique_violation(&e) => {
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
        .bind(Utc::now())
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
             WHERE id = $1 AND state = ANY($5)",
        )
        .bind(id)
        .bind(to.as_str())
        .bind(reason)
        .bind(result.cloned())
        .bind(&from)
        .bind(Utc::now())
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
        .bind(e.due_at)
        .bind(e.days)
        .bind(&e.reason)
        .bind(e.extended_at)
        .bind(e.notified_at)
        .bind(e.from_due_at)
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
        .bind(Utc::now())
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
        .bind(Utc::now())
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
        .bind(expires_at)
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
        .bind(now)
        .bind(subject)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn dsr_export_deleted(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE dsr_requests SET export_deleted_at = $2 WHERE id = $1")
            .bind(id)
            .bind(Utc::now())
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
                    rotated_at: r.try_get("rotated_at")?,
                    shredded_at: r.try_get("shredded_at")?,
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
        .bind(k.rotated_at)
        .bind(k.shredded_at)
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
                    created_at: r.try_get("created_at")?,
                    rewrapped_at: r.try_get("rewrapped_at")?,
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
        .bind(d.created_at)
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
            .bind(Utc::now())
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
        .bind(b.detected_at)
        .bind(&b.jurisdictions)
        .bind(&b.orgs)
        .bind(b.subjects)
        .bind(b.created_at)
        .fetch_one(&mut *tx)
        .await?;
        for p in &b.parties {
            sqlx::query("INSERT INTO breach_parties (breach_id, party, rule, due_at) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(&p.party)
                .bind(&p.rule)
                .bind(p.due_at)
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
                    due_at: r.try_get("due_at")?,
                    notified_at: r.try_get("notified_at")?,
                    notified_by: r.try_get("notified_by")?,
                    note: r.try_get("note")?,
                });
            }
            out.push(Breach {
                id,
                title: r.try_get("title")?,
                detected_at: r.try_get("detected_at")?,
                jurisdictions: r.try_get("jurisdictions")?,
                orgs: r.try_get("orgs")?,
                subjects: r.try_get("subjects")?,
                created_at: r.try_get("created_at")?,
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
        .bind(Utc::now())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn checkpoint_get(&self, run_id: i64, key: &str) -> Result<Option<serde_json::Value>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM run_checkpoints WHERE run_id = $1 AND key = $2")
                .bind(run_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn checkpoint_put(
        &self,
        run_id: i64,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO run_checkpoints (run_id, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (run_id, key) DO UPDATE SET value = $3, updated_at = now()",
        )
        .bind(run_id)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn hold_from_row(r: &PgRow) -> Result<LegalHold> {
    Ok(LegalHold {
        id: r.try_get("id")?,
        scope: HoldScope::parse(r.try_get::<&str, _>("scope")?)?,
        value: r.try_get("value")?,
        reason: r.try_get("reason")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        released_at: r.try_get("released_at")?,
        released_by: r.try_get("released_by")?,
        release_reason: r.try_get("release_reason")?,
    })
}

fn backup_from_row(r: &PgRow) -> Result<BackupRecord> {
    Ok(BackupRecord {
        id: r.try_get("id")?,
        created_at: r.try_get("created_at")?,
        run_id: r.try_get("run_id")?,
        object_key: r.try_get("object_key")?,
        manifest_key: r.try_get("manifest_key")?,
        stored_bytes: r.try_get("stored_bytes")?,
        raw_bytes: r.try_get("raw_bytes")?,
        sha256: r.try_get("sha256")?,
        manifest: r.try_get("manifest")?,
        verified_at: r.try_get("verified_at")?,
        verify_ok: r.try_get("verify_ok")?,
        restore_ms: r.try_get("restore_ms")?,
        verify_error: r.try_get("verify_error")?,
        deleted_at: r.try_get("deleted_at")?,
    })
}

fn dsr_from_row(r: &PgRow) -> Result<DsrRequest> {
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
        received_at: r.try_get("received_at")?,
        due_at: r.try_get("due_at")?,
        extended_days: r.try_get("extended_days")?,
        extension_reason: r.try_get("extension_reason")?,
        extended_at: r.try_get("extended_at")?,
        extension_notified_at: r.try_get("extension_notified_at")?,
        completed_at: r.try_get("completed_at")?,
        attempts: r.try_get("attempts")?,
        result: r.try_get("result")?,
        updated_at: r.try_get("updated_at")?,
    })
}

//! SQLite driver: one process (or a CLI beside it), writes serialised with
//! `BEGIN IMMEDIATE`, timestamps as fixed-width UTC text (`Ts`), leases on
//! the process clock. Everything else is the shared SQL of the concern
//! files, expanded here.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};

use super::audit::impl_audit_log;
use super::backups::impl_backup_catalog;
use super::breaches::impl_breaches;
use super::checkpoints::impl_checkpoints;
use super::dsr::{impl_dsr_requests, DSR_TAKEABLE};
use super::dsr_ledger::impl_dsr_ledger;
use super::dsr_rectifications::impl_dsr_rectifications;
use super::keys::impl_keys;
use super::object_deletes::impl_object_deletes;
use super::org_requests::impl_org_requests;
use super::outbox::{impl_outbox, MAIL_COLUMNS};
use super::policy::impl_policy;
use super::queue::{impl_queue, RUN_COLUMNS};
use super::runs::impl_run_log;
use super::*;

type Db = sqlx::Sqlite;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
}

fn lease_until(lease: Duration) -> Ts {
    Ts(Utc::now() + chrono::Duration::milliseconds(millis(lease)))
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

    /// `BEGIN IMMEDIATE`: takes the write lock up front, so a transaction that
    /// reads the chain head and then appends never deadlocks upgrading its lock.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, Db>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The old pages with the email sit in the WAL until a checkpoint: write
    /// them back (zeroed by secure_delete) and truncate the WAL now.
    async fn after_forget(&self) -> Result<()> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Applies an outcome under the lease; `require_expired` for a rescue.
    async fn apply_outcome(
        &self,
        id: i64,
        owner: &str,
        outcome: &Outcome,
        require_expired: bool,
    ) -> Result<bool> {
        let (state, error, result, run_after) = outcome.parts();
        // Process clock: SQLite has no shared server clock to measure leases on.
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
        .bind(Ts::now())
        .bind(require_expired)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }
}

/// Nothing to take: the transaction is `BEGIN IMMEDIATE`, SQLite's one writer.
async fn audit_lock(_conn: &mut SqliteConnection) -> Result<()> {
    Ok(())
}

#[async_trait]
impl Base for SqliteStore {
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
}

impl_queue!(SqliteStore, {
    async fn claim_next(&self, owner: &str, lease: Duration) -> Result<Option<Run>> {
        // No SKIP LOCKED in SQLite: BEGIN IMMEDIATE makes select-then-update one writer's step.
        let mut tx = self.write_tx().await?;
        let now = Ts::now();
        let id: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM job_runs r
             WHERE state IN ('available', 'retryable') AND run_after <= $1
               AND (allow_overlap OR NOT EXISTS (
                    SELECT 1 FROM job_runs o WHERE o.job = r.job AND o.state = 'running'))
             ORDER BY run_after, id LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else {
            return Ok(None);
        };
        let run: Run = sqlx::query_as(&format!(
            "UPDATE job_runs SET state = 'running', attempt = attempt + 1, lease_owner = $2,
                    lease_expires_at = $3, started_at = $4, finished_at = NULL
             WHERE id = $1 RETURNING {RUN_COLUMNS}"
        ))
        .bind(id)
        .bind(owner)
        .bind(lease_until(lease))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(run))
    }

    async fn claim_run(&self, id: i64, owner: &str, lease: Duration) -> Result<Option<Run>> {
        let res = sqlx::query_as(&format!(
            "UPDATE job_runs SET state = 'running', attempt = attempt + 1, lease_owner = $2,
                    lease_expires_at = $3, started_at = $4, finished_at = NULL
             WHERE id = $1 AND state IN ('available', 'retryable') AND run_after <= $4
             RETURNING {RUN_COLUMNS}"
        ))
        .bind(id)
        .bind(owner)
        .bind(lease_until(lease))
        .bind(Ts::now())
        .fetch_optional(&self.pool)
        .await;
        match res {
            Ok(run) => Ok(run),
            // The job is already running elsewhere (one-running index).
            Err(e) if is_unique_violation(&e) => Ok(None),
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
        Ok(sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM job_runs WHERE state = 'running' AND lease_expires_at < $1
             ORDER BY id LIMIT 100"
        ))
        .bind(Ts::now())
        .fetch_all(&self.pool)
        .await?)
    }

    async fn rescue(&self, id: i64, owner: &str, outcome: &Outcome) -> Result<bool> {
        self.apply_outcome(id, owner, outcome, true).await
    }
});

impl_run_log!(SqliteStore, {
    async fn prune_runs(&self, before: DateTime<Utc>, batch: u32) -> Result<u64> {
        // No row locks in SQLite (one writer at a time); otherwise PostgreSQL's statement.
        let n = sqlx::query(
            "DELETE FROM job_runs WHERE id IN (
                 SELECT id FROM job_runs WHERE state IN ('succeeded', 'dead') AND finished_at < $1
                 ORDER BY finished_at LIMIT $2)",
        )
        .bind(Ts(before))
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }
});

impl_audit_log!(SqliteStore);

impl_outbox!(SqliteStore, {
    async fn outbox_claim(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<OutboxMail>> {
        // One statement is one writer's step in SQLite: no SKIP LOCKED, process clock.
        let mut mails: Vec<OutboxMail> = sqlx::query_as(&format!(
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
        .bind(Ts::now())
        .fetch_all(&self.pool)
        .await?;
        mails.sort_by_key(|m| m.id);
        Ok(mails)
    }
});

impl_policy!(SqliteStore);
impl_backup_catalog!(SqliteStore);
impl_dsr_requests!(SqliteStore);
impl_dsr_ledger!(SqliteStore);
impl_dsr_rectifications!(SqliteStore);
impl_keys!(SqliteStore);
impl_breaches!(SqliteStore);
impl_checkpoints!(SqliteStore);
impl_object_deletes!(SqliteStore);
impl_org_requests!(SqliteStore);

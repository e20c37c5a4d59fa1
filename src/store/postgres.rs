//! PostgreSQL driver: worker tables in schema `lethe`, claims with
//! `FOR UPDATE SKIP LOCKED`, leases against the database clock, audit appends
//! serialised by an advisory lock. Everything else is the shared SQL of the
//! concern files, expanded here.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

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

type Db = sqlx::Postgres;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Fixed key for the advisory lock that serialises audit appends across replicas.
const AUDIT_LOCK_KEY: i64 = 0x4c45_5448_4541_5544; // "LETHEAUD"

pub struct PgStore {
    pool: PgPool,
}

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

    /// A transaction for a change and its evidence (row locks suffice; the
    /// chain append takes its own lock when it comes).
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, Db>> {
        Ok(self.pool.begin().await?)
    }

    /// Nothing follows a forget here (SQLite must checkpoint its WAL).
    async fn after_forget(&self) -> Result<()> {
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
        // Database clock: leases are measured against it on PostgreSQL.
        let n = sqlx::query(
            "UPDATE job_runs SET state = $3, error = $4, result = COALESCE($5, result),
                    run_after = COALESCE($6, run_after), lease_owner = NULL, lease_expires_at = NULL,
                    finished_at = now()
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'
               AND (NOT $7 OR lease_expires_at < now())",
        )
        .bind(id)
        .bind(owner)
        .bind(state)
        .bind(error)
        .bind(result)
        .bind(run_after)
        .bind(require_expired)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }
}

/// Serialises chain appends across replicas until the transaction ends.
async fn audit_lock(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(AUDIT_LOCK_KEY)
        .execute(conn)
        .await?;
    Ok(())
}

/// `cols` prefixed with a table alias, for `UPDATE … FROM … RETURNING`.
fn qualified(cols: &str, alias: &str) -> String {
    cols.split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Base for PgStore {
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
}

impl_queue!(PgStore, {
    async fn claim_next(&self, owner: &str, lease: Duration) -> Result<Option<Run>> {
        // SKIP LOCKED: concurrent claimers pass over each other's candidate row.
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
            qualified(RUN_COLUMNS, "j")
        );
        match sqlx::query_as(&sql)
            .bind(owner)
            .bind(millis(lease))
            .fetch_optional(&self.pool)
            .await
        {
            Ok(run) => Ok(run),
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
        match sqlx::query_as(&sql)
            .bind(id)
            .bind(owner)
            .bind(millis(lease))
            .fetch_optional(&self.pool)
            .await
        {
            Ok(run) => Ok(run),
            // The job is already running elsewhere (one-running index).
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
        self.apply_outcome(id, owner, outcome, false).await
    }

    async fn expired_leases(&self) -> Result<Vec<Run>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM job_runs WHERE state = 'running' AND lease_expires_at < now()
             ORDER BY id LIMIT 100"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn rescue(&self, id: i64, owner: &str, outcome: &Outcome) -> Result<bool> {
        self.apply_outcome(id, owner, outcome, true).await
    }
});

impl_run_log!(PgStore, {
    async fn prune_runs(&self, before: DateTime<Utc>, batch: u32) -> Result<u64> {
        // SKIP LOCKED: two pruners never wait on (or delete twice) the same rows.
        let n = sqlx::query(
            "DELETE FROM job_runs WHERE id IN (
                 SELECT id FROM job_runs WHERE state IN ('succeeded', 'dead') AND finished_at < $1
                 ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(Ts(before))
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }
});

impl_audit_log!(PgStore);

impl_outbox!(PgStore, {
    async fn outbox_claim(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<OutboxMail>> {
        // Database clock for the lease; SKIP LOCKED so senders split the due mail.
        let mut mails: Vec<OutboxMail> = sqlx::query_as(&format!(
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
            qualified(MAIL_COLUMNS, "m")
        ))
        .bind(owner)
        .bind(i64::from(limit))
        .bind(millis(lease))
        .fetch_all(&self.pool)
        .await?;
        mails.sort_by_key(|m| m.id);
        Ok(mails)
    }
});

impl_policy!(PgStore);
impl_backup_catalog!(PgStore);
impl_dsr_requests!(PgStore);
impl_dsr_ledger!(PgStore);
impl_dsr_rectifications!(PgStore);
impl_keys!(PgStore);
impl_breaches!(PgStore);
impl_checkpoints!(PgStore);
impl_object_deletes!(PgStore);
impl_org_requests!(PgStore);

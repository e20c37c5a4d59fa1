//! The job queue: enqueue, claim under a lease, heartbeat, finish, rescue.
//! Claims and outcomes stay per driver (leases run on the database clock on
//! PostgreSQL, on the process clock on SQLite); enqueue is shared SQL.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Waiting for `run_after`.
    Available,
    Running,
    /// An attempt failed; another is due at `run_after`.
    Retryable,
    Succeeded,
    /// Out of attempts.
    Dead,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Available => "available",
            RunState::Running => "running",
            RunState::Retryable => "retryable",
            RunState::Succeeded => "succeeded",
            RunState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "available" => RunState::Available,
            "running" => RunState::Running,
            "retryable" => RunState::Retryable,
            "succeeded" => RunState::Succeeded,
            "dead" => RunState::Dead,
            other => {
                return Err(Error::Failed(format!(
                    "unknown run state `{other}` in store"
                )))
            }
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Dead)
    }
}

super::types::text_enum!(RunState);

/// A run to put in the queue. `(job, scheduled_for)` is unique.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub job: String,
    pub kind: String,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: String,
    pub max_attempts: i32,
    pub timeout: Duration,
    pub allow_overlap: bool,
    pub dry_run: bool,
    pub params: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Run {
    pub id: i64,
    pub job: String,
    pub kind: String,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: String,
    pub state: RunState,
    pub attempt: i32,
    pub max_attempts: i32,
    pub timeout_ms: i64,
    pub allow_overlap: bool,
    pub dry_run: bool,
    pub params: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub run_after: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// How an attempt ended; the store applies it only if the caller still holds the lease.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        result: serde_json::Value,
    },
    Retry {
        error: String,
        run_after: DateTime<Utc>,
    },
    Dead {
        error: String,
    },
}

impl Outcome {
    /// `(state, error, result, run_after)` as the outcome's UPDATE binds them.
    pub(super) fn parts(
        &self,
    ) -> (
        RunState,
        Option<&str>,
        Option<&serde_json::Value>,
        Option<super::Ts>,
    ) {
        match self {
            Outcome::Succeeded { result } => (RunState::Succeeded, None, Some(result), None),
            Outcome::Retry { error, run_after } => (
                RunState::Retryable,
                Some(error),
                None,
                Some(super::Ts(*run_after)),
            ),
            Outcome::Dead { error } => (RunState::Dead, Some(error), None, None),
        }
    }
}

pub(super) const RUN_COLUMNS: &str =
    "id, job, kind, scheduled_for, trigger, state, attempt, max_attempts, timeout_ms, \
     allow_overlap, dry_run, params, result, error, run_after, lease_owner, lease_expires_at, \
     created_at, started_at, finished_at";

#[async_trait]
pub trait Queue: Send + Sync {
    /// `Ok(None)` when `(job, scheduled_for)` is already queued: N replicas, one row.
    async fn enqueue(&self, run: &NewRun) -> Result<Option<i64>>;
    /// A follow-up run (`trigger = 'follow_up'`), queued unless a run of the
    /// same job already waits unstarted: `Ok(None)` then. A partial unique
    /// index keeps two finishers racing from both adding one.
    async fn enqueue_follow_up(&self, run: &NewRun) -> Result<Option<i64>>;
    async fn latest_scheduled_for(&self, job: &str) -> Result<Option<DateTime<Utc>>>;
    /// Claims the next due run whose job is not already running (unless it allows overlap).
    async fn claim_next(&self, owner: &str, lease: Duration) -> Result<Option<Run>>;
    /// Claims one given run if it is due and claimable (for `lethe run`).
    async fn claim_run(&self, id: i64, owner: &str, lease: Duration) -> Result<Option<Run>>;
    /// Extends the lease; false when `owner` no longer holds it (the run was rescued).
    async fn heartbeat(&self, id: i64, owner: &str, lease: Duration) -> Result<bool>;
    /// Applies the outcome if `owner` still holds the lease; false otherwise.
    async fn finish(&self, id: i64, owner: &str, outcome: &Outcome) -> Result<bool>;
    /// Running runs whose lease has lapsed.
    async fn expired_leases(&self) -> Result<Vec<Run>>;
    /// Applies `outcome` to a running run whose lease (held by `owner`) has lapsed.
    async fn rescue(&self, id: i64, owner: &str, outcome: &Outcome) -> Result<bool>;
}

/// `impl Queue` for a driver: the shared methods here, the lease methods
/// (`claim_next`, `claim_run`, `heartbeat`, `finish`, `expired_leases`,
/// `rescue`) given by the driver as `{ ... }`.
macro_rules! impl_queue {
    ($store:ty, { $($lease_methods:tt)* }) => {
        #[async_trait::async_trait]
        impl Queue for $store {
            async fn enqueue(&self, run: &NewRun) -> Result<Option<i64>> {
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO job_runs (job, kind, scheduled_for, trigger, max_attempts, timeout_ms,
                                           allow_overlap, dry_run, params, run_after, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $3, $10)
                     ON CONFLICT (job, scheduled_for) DO NOTHING
                     RETURNING id",
                )
                .bind(&run.job)
                .bind(&run.kind)
                .bind(Ts(run.scheduled_for))
                .bind(&run.trigger)
                .bind(run.max_attempts)
                .bind(millis(run.timeout))
                .bind(run.allow_overlap)
                .bind(run.dry_run)
                .bind(&run.params)
                .bind(Ts::now())
                .fetch_optional(&self.pool)
                .await?;
                Ok(id)
            }

            async fn enqueue_follow_up(&self, run: &NewRun) -> Result<Option<i64>> {
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO job_runs (job, kind, scheduled_for, trigger, max_attempts, timeout_ms,
                                           allow_overlap, dry_run, params, run_after, created_at)
                     SELECT $1, $2, $3, 'follow_up', $4, $5, $6, false, $7, $3, $8
                     WHERE NOT EXISTS (SELECT 1 FROM job_runs WHERE job = $1 AND state = 'available')
                     ON CONFLICT DO NOTHING
                     RETURNING id",
                )
                .bind(&run.job)
                .bind(&run.kind)
                .bind(Ts(run.scheduled_for))
                .bind(run.max_attempts)
                .bind(millis(run.timeout))
                .bind(run.allow_overlap)
                .bind(&run.params)
                .bind(Ts::now())
                .fetch_optional(&self.pool)
                .await?;
                Ok(id)
            }

            async fn latest_scheduled_for(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
                let t: Option<Ts> = sqlx::query_scalar(
                    "SELECT max(scheduled_for) FROM job_runs WHERE job = $1 AND trigger = 'schedule'",
                )
                .bind(job)
                .fetch_one(&self.pool)
                .await?;
                Ok(t.map(|t| t.0))
            }

            $($lease_methods)*
        }
    };
}
pub(super) use impl_queue;

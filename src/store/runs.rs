//! The run history: one run, listings, counts, and pruning finished runs.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::queue::{Run, RunState};
use crate::error::Result;

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub job: Option<String>,
    pub state: Option<RunState>,
    pub limit: u32,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunCount {
    pub job: String,
    pub state: RunState,
    #[sqlx(rename = "n")]
    pub count: i64,
}

#[async_trait]
pub trait RunLog: Send + Sync {
    async fn get_run(&self, id: i64) -> Result<Option<Run>>;
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>>;
    async fn run_counts(&self) -> Result<Vec<RunCount>>;
    /// Deletes up to `batch` finished runs that finished before `before`; returns how many.
    async fn prune_runs(&self, before: DateTime<Utc>, batch: u32) -> Result<u64>;
    /// How many finished runs `prune_runs` would delete (for dry runs).
    async fn count_prunable(&self, before: DateTime<Utc>) -> Result<i64>;
}

/// `impl RunLog` for a driver; `prune_runs` is the driver's (row locking differs).
macro_rules! impl_run_log {
    ($store:ty, { $($driver:tt)* }) => {
        #[async_trait::async_trait]
        impl RunLog for $store {
            async fn get_run(&self, id: i64) -> Result<Option<Run>> {
                Ok(sqlx::query_as(&format!("SELECT {RUN_COLUMNS} FROM job_runs WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
                Ok(sqlx::query_as(&format!(
                    "SELECT {RUN_COLUMNS} FROM job_runs
                     WHERE ($1 IS NULL OR job = $1) AND ($2 IS NULL OR state = $2)
                     ORDER BY id DESC LIMIT $3"
                ))
                .bind(filter.job.as_deref())
                .bind(filter.state)
                .bind(i64::from(filter.limit))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn run_counts(&self) -> Result<Vec<RunCount>> {
                Ok(sqlx::query_as(
                    "SELECT job, state, count(*) AS n FROM job_runs GROUP BY job, state ORDER BY job, state",
                )
                .fetch_all(&self.pool)
                .await?)
            }

            async fn count_prunable(&self, before: DateTime<Utc>) -> Result<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT count(*) FROM job_runs WHERE state IN ('succeeded', 'dead') AND finished_at < $1",
                )
                .bind(Ts(before))
                .fetch_one(&self.pool)
                .await?)
            }

            $($driver)*
        }
    };
}
pub(super) use impl_run_log;

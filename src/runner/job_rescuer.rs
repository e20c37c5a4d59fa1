//! Runs whose lease lapsed belong to a worker that died (SIGKILL, OOM, lost
//! node). They go back to the queue with backoff, or are declared dead.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::executor::after_outcome;
use super::retry_delay;
use crate::context::Context;
use crate::error::Result;
use crate::store::Outcome;

/// One sweep; returns how many runs were rescued.
pub async fn rescue_expired(ctx: &Arc<Context>) -> Result<usize> {
    let mut rescued = 0;
    for run in ctx.store.expired_leases().await? {
        let Some(owner) = run.lease_owner.clone() else {
            continue;
        };
        let error =
            format!("lease expired: worker {owner} stopped renewing it (crashed or was killed)");
        let outcome = if run.attempt >= run.max_attempts {
            Outcome::Dead { error }
        } else {
            let delay = retry_delay(
                run.attempt,
                ctx.config.runner.retry_base,
                ctx.config.runner.retry_max,
            );
            Outcome::Retry {
                error,
                run_after: ctx.store.now().await?
                    + chrono::Duration::milliseconds(crate::store::millis(delay)),
            }
        };
        // Guarded by owner + still expired: a late heartbeat from a slow but live worker wins.
        if ctx.store.rescue(run.id, &owner, &outcome).await? {
            rescued += 1;
            tracing::warn!(run_id = run.id, job = %run.job, dead_owner = %owner, "rescued run with lapsed lease");
            if let Some(done) = ctx.store.get_run(run.id).await? {
                let elapsed = done
                    .started_at
                    .map(|s| (Utc::now() - s).to_std().unwrap_or_default())
                    .unwrap_or(Duration::ZERO);
                after_outcome(ctx, &done, &format!("worker:{}", ctx.worker_id), elapsed).await?;
            }
        }
    }
    Ok(rescued)
}

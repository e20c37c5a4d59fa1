//! Follow-up runs: as a run ends, the registry's follow-up rules may queue
//! another job's run to go at once (`audit.anchor` after a purge, a backup,
//! a DSR run that completed a request), so its evidence is anchored now
//! rather than at the next scheduled fire. A follow-up is queued once: not
//! while a run of its job already waits unstarted (the store's partial
//! unique index settles two finishers racing).

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::watch;

use super::executor::{claim_and_attempt, due_now};
use super::{Registry, RunReport};
use crate::config::JobSpec;
use crate::context::Context;
use crate::error::Result;
use crate::store::Run;

/// Queues the follow-ups of `run`, which just ended; their run ids. A
/// follow-up that cannot be queued is logged, never a failure of `run`
/// (which is over): its job still runs on its own schedule.
pub(super) async fn enqueue(ctx: &Context, registry: &Registry, run: &Run) -> Vec<i64> {
    let mut queued = Vec::new();
    for kind in registry.follow_ups(&ctx.config, run) {
        let spec = JobSpec::of_kind(&ctx.config.jobs, kind, &ctx.config.path);
        let added = match ctx.store.now().await {
            Ok(now) => {
                let new = due_now(&spec, now, "follow_up", spec.params.clone(), false);
                ctx.store.enqueue_follow_up(&new).await
            }
            Err(e) => Err(e),
        };
        match added {
            Ok(Some(id)) => {
                tracing::info!(run_id = run.id, job = %run.job, follow_up = id, then = %spec.name, "follow-up run queued");
                queued.push(id);
            }
            Ok(None) => {
                tracing::debug!(run_id = run.id, then = %spec.name, "a run of the follow-up's job already waits; none added");
            }
            Err(e) => {
                tracing::warn!(run_id = run.id, then = %spec.name, error = %e, "could not queue the follow-up run; its job runs on its schedule");
            }
        }
    }
    queued
}

/// `lethe run`: the follow-ups the run queued, claimed and run here in turn
/// (one a `lethe serve` replica took first is left to it). Their own
/// follow-ups stay queued.
pub(super) async fn run_here(
    ctx: &Arc<Context>,
    registry: &Registry,
    ids: Vec<i64>,
    cancel: watch::Receiver<bool>,
) -> Result<Vec<RunReport>> {
    let mut reports = Vec::new();
    for id in ids {
        if let Some((done, _)) = claim_and_attempt(ctx, registry, id, cancel.clone()).await? {
            reports.push(RunReport::from_run(&done));
        }
    }
    Ok(reports)
}

/// For the registry's rules: a result field that is a non-empty array.
pub fn result_lists(run: &Run, field: &str) -> bool {
    run.result
        .as_ref()
        .and_then(|r| r.get(field))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

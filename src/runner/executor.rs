//! One attempt of one run: heartbeat the lease, enforce the timeout, record the
//! outcome, schedule the retry or declare the run dead and tell ops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{retry_delay, JobContext, Registry};
use crate::config::JobSpec;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::notify;
use crate::store::{NewRun, Outcome, Run, RunState};

/// What `lethe run --json` prints (the first fields are a fixed contract).
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub job: String,
    pub kind: String,
    /// `succeeded`, `failed` (will be retried) or `dead`.
    pub status: &'static str,
    pub attempts: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<Value>,
    pub run_id: i64,
    pub scheduled_for: DateTime<Utc>,
    pub dry_run: bool,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    /// When a `failed` run will be tried again by `lethe serve`.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Runs this one queued as it ended (`audit.anchor` after a purge), run
    /// here right after it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub follow_ups: Vec<RunReport>,
}

impl RunReport {
    pub fn from_run(run: &Run) -> Self {
        let status = match run.state {
            RunState::Succeeded => "succeeded",
            RunState::Dead => "dead",
            _ => "failed",
        };
        RunReport {
            job: run.job.clone(),
            kind: run.kind.clone(),
            status,
            attempts: run.attempt,
            started_at: run.started_at,
            finished_at: run.finished_at,
            result: run.result.clone(),
            run_id: run.id,
            scheduled_for: run.scheduled_for,
            dry_run: run.dry_run,
            duration_ms: match (run.started_at, run.finished_at) {
                (Some(s), Some(f)) => Some((f - s).num_milliseconds()),
                _ => None,
            },
            error: run.error.clone(),
            next_attempt_at: (run.state == RunState::Retryable).then_some(run.run_after),
            follow_ups: Vec::new(),
        }
    }

    pub fn succeeded(&self) -> bool {
        self.status == "succeeded"
    }
}

/// `lethe run JOB`: the same queue path as a cron fire, executed here and now.
pub async fn run_now(
    ctx: &Arc<Context>,
    registry: &Registry,
    spec: &JobSpec,
    params: Value,
    dry_run: bool,
) -> Result<RunReport> {
    let (id, _) = enqueue_manual(ctx, spec, params, dry_run).await?;
    let (_never, cancel) = watch::channel(false);
    let Some((done, follow_ups)) = claim_and_attempt(ctx, registry, id, cancel.clone()).await?
    else {
        return Err(Error::Failed(format!(
            "job {} is already running elsewhere and does not allow overlap; run {id} stays queued and \
             `lethe serve` will take it when the other run ends",
            spec.name
        )));
    };
    let mut report = RunReport::from_run(&done);
    report.follow_ups = super::follow_up::run_here(ctx, registry, follow_ups, cancel).await?;
    Ok(report)
}

/// Claims run `id` for this process and runs one attempt of it; `None` when
/// it is not claimable (running elsewhere, or taken by a `serve` replica).
pub(super) async fn claim_and_attempt(
    ctx: &Arc<Context>,
    registry: &Registry,
    id: i64,
    cancel: watch::Receiver<bool>,
) -> Result<Option<(Run, Vec<i64>)>> {
    let owner = ctx.worker_id.clone();
    let claimed_at = Instant::now();
    let lease = ctx.config.runner.lease;
    let Some(run) = ctx.store.claim_run(id, &owner, lease).await? else {
        return Ok(None);
    };
    let ended = attempt(ctx.clone(), registry, run, owner, cancel, claimed_at).await?;
    Ok(Some(ended))
}

/// Queues a manual run due now; a worker (this process or any `lethe serve`)
/// takes it. Returns its id and `scheduled_for`.
pub async fn enqueue_manual(
    ctx: &Context,
    spec: &JobSpec,
    params: Value,
    dry_run: bool,
) -> Result<(i64, chrono::DateTime<chrono::Utc>)> {
    let now = ctx.store.now().await?;
    let new = due_now(spec, now, "manual", params, dry_run);
    let id = ctx.store.enqueue(&new).await?.ok_or_else(|| {
        Error::Failed(format!(
            "job {} was enqueued twice in the same microsecond; try again",
            spec.name
        ))
    })?;
    Ok((id, new.scheduled_for))
}

/// A run of `spec` due at `now` (whole microseconds, as the store keeps them).
pub(super) fn due_now(
    spec: &JobSpec,
    now: DateTime<Utc>,
    trigger: &str,
    params: Value,
    dry_run: bool,
) -> NewRun {
    NewRun {
        job: spec.name.clone(),
        kind: spec.kind.clone(),
        scheduled_for: crate::audit::truncate_micros(now),
        trigger: trigger.into(),
        max_attempts: i32::try_from(spec.max_attempts).unwrap_or(i32::MAX),
        timeout: spec.timeout,
        allow_overlap: spec.allow_overlap,
        dry_run,
        params,
    }
}

/// Runs one claimed attempt to its end and returns the run as stored afterwards.
/// `cancel` set to true makes the attempt stop and go back to the queue (shutdown).
pub async fn execute(
    ctx: Arc<Context>,
    registry: &Registry,
    run: Run,
    owner: String,
    cancel: watch::Receiver<bool>,
) -> Result<Run> {
    execute_claimed_at(ctx, registry, run, owner, cancel, Instant::now()).await
}

/// `execute` for a run whose claim was *sent* at `claimed_at`: the store's
/// lease runs from no earlier than that, so the attempt's fence does too.
pub async fn execute_claimed_at(
    ctx: Arc<Context>,
    registry: &Registry,
    run: Run,
    owner: String,
    cancel: watch::Receiver<bool>,
    claimed_at: Instant,
) -> Result<Run> {
    let (done, _queued) = attempt(ctx, registry, run, owner, cancel, claimed_at).await?;
    Ok(done)
}

/// One attempt: the run as stored afterwards, and the follow-up runs its end queued.
pub(super) async fn attempt(
    ctx: Arc<Context>,
    registry: &Registry,
    run: Run,
    owner: String,
    mut cancel: watch::Receiver<bool>,
    claimed_at: Instant,
) -> Result<(Run, Vec<i64>)> {
    let started = Instant::now();
    let lease = ctx.config.runner.lease;
    let id = run.id;
    let job = run.job.clone();
    tracing::info!(run_id = id, job = %job, kind = %run.kind, attempt = run.attempt, "run started");

    let fence = Fence::new(lease, claimed_at);
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(heartbeat(
        ctx.clone(),
        id,
        owner.clone(),
        lease,
        fence.clone(),
        lost_tx,
    ));

    let outcome_err: std::result::Result<Value, String> = match registry.runner(&run.kind) {
        Err(e) => Err(e),
        Ok((kind, run_job)) => {
            let jc = JobContext {
                ctx: ctx.clone(),
                run: run.clone(),
                kind,
                dry_run: run.dry_run,
                actor: format!("worker:{owner}"),
                fence: fence.clone(),
            };
            let timeout = Duration::from_millis(u64::try_from(run.timeout_ms).unwrap_or(0));
            let mut task = tokio::spawn(run_job(jc));
            tokio::select! {
                joined = tokio::time::timeout(timeout, &mut task) => {
                    if joined.is_err() {
                        // Dropped before the failure is recorded (children killed, clean-ups started).
                        stop(&mut task).await;
                    }
                    attempt_result(joined, timeout)
                }
                _ = async { let _ = lost_rx.wait_for(|lost| *lost).await; } => {
                    // Another replica rescued this run; stop now so it is not done twice.
                    heartbeat.abort();
                    stop(&mut task).await;
                    tracing::warn!(run_id = id, job = %job, "lease lost; attempt abandoned");
                    return Ok((fetch(&ctx, id).await?, Vec::new()));
                }
                _ = fence.expired() => {
                    // Heartbeats kept failing: stop (dropping the task rolls back its open
                    // transactions) before the store can hand the run to another worker. The
                    // attempt then ends as failed; if the store is unreachable, finishing fails
                    // too and the rescuer returns the run once the lease lapses.
                    stop(&mut task).await; // its open transactions are rolled back before we report
                    tracing::warn!(run_id = id, job = %job, "lease could not be renewed; attempt stopped before it could lapse");
                    Err("stopped: the lease could not be renewed in time (store unreachable?)".to_string())
                }
                _ = async { let _ = cancel.wait_for(|c| *c).await; } => {
                    heartbeat.abort();
                    stop(&mut task).await;
                    let back = Outcome::Retry { error: "interrupted: the worker shut down".into(), run_after: Utc::now() };
                    ctx.store.finish(id, &owner, &back).await?;
                    tracing::warn!(run_id = id, job = %job, "attempt interrupted by shutdown; run returned to the queue");
                    return Ok((fetch(&ctx, id).await?, Vec::new()));
                }
            }
        }
    };
    heartbeat.abort();

    finish_attempt(&ctx, registry, &run, &owner, outcome_err, started.elapsed()).await
}

/// Records the attempt's outcome (if this worker still holds the lease), its
/// metrics, evidence, alerts and follow-up runs; returns the run as stored
/// and the follow-ups queued (none when the run was rescued from this attempt).
async fn finish_attempt(
    ctx: &Context,
    registry: &Registry,
    run: &Run,
    owner: &str,
    result: std::result::Result<Value, String>,
    elapsed: Duration,
) -> Result<(Run, Vec<i64>)> {
    let (outcome, label) = outcome_of(ctx, run, result).await?;
    ctx.metrics
        .observe_attempt(&run.job, label, elapsed.as_secs_f64());
    if !ctx.store.finish(run.id, owner, &outcome).await? {
        tracing::warn!(run_id = run.id, job = %run.job, "run was rescued by another worker before it finished; outcome dropped");
        return Ok((fetch(ctx, run.id).await?, Vec::new()));
    }
    let done = fetch(ctx, run.id).await?;
    after_outcome(ctx, &done, &format!("worker:{owner}"), elapsed).await?;
    let queued = super::follow_up::enqueue(ctx, registry, &done).await;
    Ok((done, queued))
}

/// Aborts a job's task and waits until it is dropped (its guards have run).
async fn stop<T>(task: &mut tokio::task::JoinHandle<T>) {
    task.abort();
    let _ = task.await;
}

/// The job task's end as the attempt's result: its value, or why it failed.
fn attempt_result(
    joined: std::result::Result<
        std::result::Result<Result<Value>, tokio::task::JoinError>,
        tokio::time::error::Elapsed,
    >,
    timeout: Duration,
) -> std::result::Result<Value, String> {
    match joined {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(join)) if join.is_panic() => {
            Err("the job panicked (a bug: please report it)".into())
        }
        Ok(Err(join)) => Err(format!("the job task ended: {join}")),
        Err(_) => Err(format!(
            "timed out after {}",
            crate::config::format_duration(timeout)
        )),
    }
}

/// Succeeded, dead (out of attempts), or a retry after backoff from the store's clock.
async fn outcome_of(
    ctx: &Context,
    run: &Run,
    result: std::result::Result<Value, String>,
) -> Result<(Outcome, &'static str)> {
    Ok(match result {
        Ok(result) => (Outcome::Succeeded { result }, "succeeded"),
        Err(error) if run.attempt >= run.max_attempts => (Outcome::Dead { error }, "dead"),
        Err(error) => {
            let delay = retry_delay(
                run.attempt,
                ctx.config.runner.retry_base,
                ctx.config.runner.retry_max,
            );
            let run_after = ctx.store.now().await?
                + chrono::Duration::milliseconds(crate::store::millis(delay));
            (Outcome::Retry { error, run_after }, "failed")
        }
    })
}

/// Evidence and alerts for a finished attempt.
pub(crate) async fn after_outcome(
    ctx: &Context,
    run: &Run,
    actor: &str,
    elapsed: Duration,
) -> Result<()> {
    let action = match run.state {
        RunState::Succeeded => "job.succeeded",
        RunState::Dead => "job.dead",
        _ => "job.failed",
    };
    match run.state {
        RunState::Succeeded => tracing::info!(run_id = run.id, job = %run.job, "run succeeded"),
        _ => tracing::warn!(run_id = run.id, job = %run.job, state = run.state.as_str(),
                            error = run.error.as_deref().unwrap_or(""), "run attempt failed"),
    }
    crate::audit::record(
        ctx.store.as_ref(),
        actor,
        action,
        &format!("job:{}", run.job),
        json!({
            "run_id": run.id, "kind": run.kind, "attempt": run.attempt, "dry_run": run.dry_run,
            "scheduled_for": run.scheduled_for.to_rfc3339(), "duration_ms": elapsed.as_millis() as u64,
            "error": run.error,
        }),
    )
    .await?;
    if run.state == RunState::Dead {
        notify::job_dead(ctx, run).await?;
    }
    Ok(())
}

async fn fetch(ctx: &Context, id: i64) -> Result<Run> {
    ctx.store
        .get_run(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("run {id} disappeared from the queue")))
}

async fn heartbeat(
    ctx: Arc<Context>,
    id: i64,
    owner: String,
    lease: Duration,
    fence: Fence,
    lost: watch::Sender<bool>,
) {
    // Four beats a lease: the fence stops the attempt at 3/4 of it, so two
    // beats in a row may fail or be slow before a healthy attempt is stopped.
    let every = (lease / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        match tokio::time::timeout(lease / 2, ctx.store.heartbeat(id, &owner, lease)).await {
            Ok(Ok(true)) => fence.renewed(sent),
            Err(_) => tracing::warn!(run_id = id, "heartbeat timed out"),
            Ok(Ok(false)) => {
                let _ = lost.send(true);
                return;
            }
            // A blip: keep trying; the fence stops the attempt before the lease lapses.
            Ok(Err(e)) => tracing::warn!(run_id = id, error = %e, "heartbeat failed"),
        }
    }
}

//! Kind → handler. A handler gets a `JobContext` and returns its result JSON.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::JobKind;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::Run;

pub struct JobContext {
    pub ctx: Arc<Context>,
    pub run: Run,
    pub kind: JobKind,
    pub dry_run: bool,
    /// Who the audit log says did it: `worker:<id>`.
    pub actor: String,
    /// Checked before every side effect commits: the attempt still holds its lease.
    pub fence: crate::fence::Fence,
}

impl JobContext {
    /// The run's params as the kind's typed struct (validated again: CLI overrides bypass load).
    pub fn params<T: for<'de> Deserialize<'de>>(&self) -> Result<T> {
        serde_json::from_value(self.run.params.clone())
            .map_err(|e| Error::Usage(format!("params for {}: {e}", self.kind)))
    }
}

pub async fn dispatch(jc: JobContext) -> Result<Value> {
    match jc.kind {
        JobKind::RetentionPurge => crate::retention::purge_job(&jc).await,
        JobKind::BackupCreate => crate::backup::create_job(&jc).await,
        JobKind::BackupVerify => crate::backup::verify_job(&jc).await,
        JobKind::BackupPrune => crate::backup::prune_job(&jc).await,
        JobKind::BackupRpoCheck => crate::backup::rpo_check_job(&jc).await,
        JobKind::DsrProcess => crate::dsr::process_job(&jc).await,
        JobKind::DsrSlaReport => crate::dsr::report_job(&jc).await,
        JobKind::KeysRotate => crate::keys::rotate_job(&jc).await,
        JobKind::BreachTick => crate::breach::tick_job(&jc).await,
        JobKind::RunnerPrune => super::job_cleaner::run(&jc).await,
        JobKind::MailFlush => crate::notify::flush_job(&jc).await,
        JobKind::TestSleep => test_sleep(&jc).await,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepParams {
    #[serde(default)]
    pub ms: u64,
    #[serde(default)]
    pub fail: bool,
}

/// Records its start in the audit chain (the tests count executions there), then sleeps.
async fn test_sleep(jc: &JobContext) -> Result<Value> {
    let p: SleepParams = jc.params()?;
    crate::audit::record(
        jc.ctx.store.as_ref(),
        &jc.actor,
        "test.sleep.started",
        &format!("run:{}", jc.run.id),
        json!({"run_id": jc.run.id, "job": jc.run.job, "attempt": jc.run.attempt,
               "scheduled_for": jc.run.scheduled_for.to_rfc3339()}),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(p.ms)).await;
    if p.fail {
        return Err(Error::Failed("test.sleep asked to fail".into()));
    }
    // A side effect at the end, fenced like every real job's commits.
    jc.fence.check()?;
    crate::audit::record(
        jc.ctx.store.as_ref(),
        &jc.actor,
        "test.sleep.finished",
        &format!("run:{}", jc.run.id),
        json!({"run_id": jc.run.id, "attempt": jc.run.attempt}),
    )
    .await?;
    Ok(json!({"slept_ms": p.ms}))
}

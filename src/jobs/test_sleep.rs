//! `test.sleep` (cargo feature `testing` only): records that it ran, sleeps,
//! and optionally fails; the runner's fault tests kill processes during it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, Result};
use crate::runner::{Job, JobContext, JobParams};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepParams {
    #[serde(default)]
    pub ms: u64,
    #[serde(default)]
    pub fail: bool,
}

impl JobParams for SleepParams {}

#[derive(Debug, Serialize)]
pub struct SleepOutput {
    pub slept_ms: u64,
}

pub struct TestSleep;

impl Job for TestSleep {
    const KIND: &'static str = "test.sleep";
    type Params = SleepParams;
    type Output = SleepOutput;

    /// Records its start in the audit chain (the tests count executions there), then sleeps.
    async fn run(jc: &JobContext, p: SleepParams) -> Result<SleepOutput> {
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
        Ok(SleepOutput { slept_ms: p.ms })
    }
}

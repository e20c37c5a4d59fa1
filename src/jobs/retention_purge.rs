//! `retention.purge`: deletes (or redacts) rows past their retention period, in budgeted batches.

use serde_json::Value;

use crate::context::Context;
use crate::error::Result;
use crate::runner::{Job, JobContext};

pub struct RetentionPurge;

impl Job for RetentionPurge {
    const KIND: &'static str = "retention.purge";
    type Params = crate::retention::PurgeParams;
    type Output = Value;

    async fn run(jc: &JobContext, params: Self::Params) -> Result<Value> {
        crate::retention::purge_job(jc, params).await
    }

    /// The schema check plus the timestamp columns' storage forms.
    async fn preflight(ctx: &Context) -> Result<()> {
        crate::retention::preflight(&ctx.config, &ctx.app_db().await?).await?;
        Ok(())
    }
}

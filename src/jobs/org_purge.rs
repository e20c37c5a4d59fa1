//! `org.purge`: executes org deletions whose cooling-off period has ended.

use serde_json::Value;

use crate::context::Context;
use crate::error::Result;
use crate::runner::{Job, JobContext};

pub struct OrgPurge;

impl Job for OrgPurge {
    const KIND: &'static str = "org.purge";
    type Params = crate::org::PurgeParams;
    type Output = Value;

    async fn run(jc: &JobContext, params: Self::Params) -> Result<Value> {
        crate::org::purge_job(jc, params).await
    }

    /// A data map that does not fit the schema would delete nothing.
    async fn preflight(ctx: &Context) -> Result<()> {
        crate::appdb::preflight(&ctx.config, &ctx.app_db().await?).await?;
        Ok(())
    }
}

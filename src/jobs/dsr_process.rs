//! `dsr.process`: carries out due data-subject requests (erasures, exports).

use serde_json::Value;

use crate::context::Context;
use crate::error::Result;
use crate::runner::{Job, JobContext};

pub struct DsrProcess;

impl Job for DsrProcess {
    const KIND: &'static str = "dsr.process";
    type Params = crate::dsr::ProcessParams;
    type Output = Value;

    async fn run(jc: &JobContext, params: Self::Params) -> Result<Value> {
        crate::dsr::process_job(jc, params).await
    }

    /// A data map that does not fit the schema would erase nothing.
    async fn preflight(ctx: &Context) -> Result<()> {
        crate::appdb::preflight(&ctx.config, &ctx.app_db().await?).await?;
        Ok(())
    }
}

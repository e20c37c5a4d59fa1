//! `keys.reencrypt`: moves encrypted values to their org's newest data key, in batches.

use crate::context::Context;
use crate::error::Result;
use crate::keys::{ReencryptOutput, ReencryptParams};
use crate::runner::{Job, JobContext};

pub struct KeysReencrypt;

impl Job for KeysReencrypt {
    const KIND: &'static str = "keys.reencrypt";
    type Params = ReencryptParams;
    type Output = ReencryptOutput;

    async fn run(jc: &JobContext, params: Self::Params) -> Result<ReencryptOutput> {
        crate::keys::reencrypt_job(jc, params).await
    }

    /// The encrypted columns and the key table come from the application database.
    async fn preflight(ctx: &Context) -> Result<()> {
        crate::appdb::preflight(&ctx.config, &ctx.app_db().await?).await?;
        Ok(())
    }
}

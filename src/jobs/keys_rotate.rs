//! `keys.rotate`: rotates per-org keys and shreds the keys of closed orgs.

use serde_json::Value;

use crate::context::Context;
use crate::error::Result;
use crate::runner::{Job, JobContext};

pub struct KeysRotate;

impl Job for KeysRotate {
    const KIND: &'static str = "keys.rotate";
    type Params = crate::keys::RotateParams;
    type Output = Value;

    async fn run(jc: &JobContext, params: Self::Params) -> Result<Value> {
        crate::keys::rotate_job(jc, params).await
    }

    /// The orgs come from the application database.
    async fn preflight(ctx: &Context) -> Result<()> {
        crate::appdb::preflight(&ctx.config, &ctx.app_db().await?).await?;
        Ok(())
    }
}

//! `backup.verify`: restores a backup into a scratch database and checks it.

use serde_json::Value;

use crate::error::Result;
use crate::runner::{Job, JobContext};

pub struct BackupVerify;

impl Job for BackupVerify {
    const KIND: &'static str = crate::backup::VERIFY_KIND;
    type Params = crate::backup::VerifyParams;
    type Output = Value;

    async fn run(jc: &JobContext, params: Self::Params) -> Result<Value> {
        crate::backup::verify_job(jc, params).await
    }
}

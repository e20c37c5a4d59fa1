//! `backup.verify`: restores a backup into a scratch database and checks it.

use crate::error::Result;
use crate::runner::{Job, JobContext};

pub struct BackupVerify;

impl Job for BackupVerify {
    const KIND: &'static str = crate::backup::VERIFY_KIND;
    type Params = crate::backup::VerifyParams;
    type Output = crate::backup::VerifyOutput;

    async fn run(jc: &JobContext, params: Self::Params) -> Result<Self::Output> {
        crate::backup::verify_job(jc, params).await
    }
}

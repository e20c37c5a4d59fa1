//! `backup.rpo_check`: alarms when the newest backup, or the newest verified
//! one, is older than the RPO allows.

use crate::backup::{rpo_check_job, RpoParams, RpoReport};
use crate::error::Result;
use crate::runner::{Job, JobContext};

pub struct BackupRpoCheck;

impl Job for BackupRpoCheck {
    const KIND: &'static str = "backup.rpo_check";
    type Params = RpoParams;
    type Output = RpoReport;

    async fn run(jc: &JobContext, params: RpoParams) -> Result<RpoReport> {
        rpo_check_job(jc, params).await
    }
}

//! `backup.prune`: deletes backups the keep policy (GFS) no longer keeps.

use serde_json::Value;

use crate::error::Result;
use crate::runner::{Job, JobContext};

pub struct BackupPrune;

impl Job for BackupPrune {
    const KIND: &'static str = "backup.prune";
    type Params = crate::backup::PruneParams;
    type Output = Value;

    async fn run(jc: &JobContext, params: Self::Params) -> Result<Value> {
        crate::backup::prune_job(jc, params).await
    }
}

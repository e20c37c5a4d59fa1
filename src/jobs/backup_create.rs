//! `backup.create`: dumps the application database, encrypted, to the object store.

use serde_json::Value;

use crate::error::Result;
use crate::runner::{Job, JobContext};

pub struct BackupCreate;

impl Job for BackupCreate {
    const KIND: &'static str = crate::backup::CREATE_KIND;
    type Params = crate::backup::CreateParams;
    type Output = Value;

    async fn run(jc: &JobContext, params: Self::Params) -> Result<Value> {
        crate::backup::create_job(jc, params).await
    }
}

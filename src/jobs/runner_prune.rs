//! `runner.prune`: deletes old finished runs (runner maintenance, registered
//! like any other kind).

use crate::error::Result;
use crate::runner::job_cleaner::{prune, PruneOutput, PruneParams};
use crate::runner::{Job, JobContext};

pub struct RunnerPrune;

impl Job for RunnerPrune {
    const KIND: &'static str = "runner.prune";
    type Params = PruneParams;
    type Output = PruneOutput;

    async fn run(jc: &JobContext, params: PruneParams) -> Result<PruneOutput> {
        prune(jc, params).await
    }
}

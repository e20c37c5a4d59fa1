//! `dsr.sla_report`: the periodic DSR deadline report, mailed to the DPO.

use crate::error::Result;
use crate::runner::{Job, JobContext};

pub struct DsrSlaReport;

impl Job for DsrSlaReport {
    const KIND: &'static str = "dsr.sla_report";
    type Params = crate::dsr::ReportParams;
    type Output = crate::dsr::ReportOutput;

    async fn run(jc: &JobContext, params: Self::Params) -> Result<Self::Output> {
        let backups = crate::backup::wal_rpo::for_report(&jc.ctx).await;
        crate::dsr::report_job(jc, params, backups).await
    }
}

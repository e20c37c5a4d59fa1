//! `mail.flush`: delivers due outbox mail (see `crate::notify::flush`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::notify::{flush, FlushReport};
use crate::runner::{in_range, Job, JobContext, JobParams};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FlushParams {
    /// Overrides `mail.batch_size` for this job.
    pub batch_size: Option<u32>,
}

impl JobParams for FlushParams {
    fn validate(&self) -> Result<(), String> {
        match self.batch_size {
            Some(b) => in_range("batch_size", b.into(), 1, 10_000_000),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum FlushOutput {
    DryRun { dry_run: bool, pending: usize },
    Flushed(FlushReport),
}

pub struct MailFlush;

impl Job for MailFlush {
    const KIND: &'static str = "mail.flush";
    type Params = FlushParams;
    type Output = FlushOutput;

    async fn run(jc: &JobContext, p: FlushParams) -> Result<FlushOutput> {
        if jc.dry_run {
            let pending = jc
                .ctx
                .store
                .outbox_list(1000)
                .await?
                .iter()
                .filter(|m| m.state.as_str() == "pending")
                .count();
            return Ok(FlushOutput::DryRun {
                dry_run: true,
                pending,
            });
        }
        let batch = p.batch_size.unwrap_or(jc.ctx.config.mail.batch_size);
        let report = flush(&jc.ctx, batch, &jc.fence).await?;
        if report.retrying + report.failed > 0 {
            // Failing the run makes an SMTP outage visible in history and metrics; the mail itself stays queued.
            return Err(Error::Mail(format!(
                "{} delivered, {} not delivered (will retry), {} given up: {}",
                report.sent,
                report.retrying,
                report.failed,
                report.last_error.unwrap_or_default()
            )));
        }
        Ok(FlushOutput::Flushed(report))
    }
}

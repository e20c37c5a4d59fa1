//! The DSR SLA report for the DPO: what needs action (overdue and at-risk
//! requests with the command to run), the open queue by days left, the
//! period's intake and outcomes, time to close and its weekly trend. Mailed
//! as HTML and text from the same blocks, with a CSV of every request.

mod attachment;
mod mail;
mod stats;

pub use mail::{BUCKET_COLORS, TREND_COLOR};
pub use stats::{BackupRpo, SlaReport};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::error::Result;
use crate::notify::{self, Message, Role};
use crate::runner::{JobContext, JobParams};
use crate::store::Attachment;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {}

impl JobParams for ReportParams {}

/// The report and its CSV, as of the store's now.
pub async fn sla_report(ctx: &Context, backups: Option<BackupRpo>) -> Result<(SlaReport, String)> {
    let (all, now) = stats::requests(ctx).await?;
    let mut report = stats::compute(ctx, &all, now);
    report.org_requests = stats::org_items(ctx, now).await?;
    report.backups = backups;
    let csv = attachment::csv(ctx, &all, now)?;
    Ok((report, csv))
}

/// The report as plain text: the mail's text part, for the terminal.
pub fn text(ctx: &Context, r: &SlaReport) -> String {
    let zone = notify::zone(ctx);
    notify::render_text(&mail::subject(r, &zone), &mail::blocks(r, &zone), &zone)
}

/// A report queued to the DPO, or the one already queued for this period.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub mail_id: i64,
    /// True when this period's report had been sent before: nothing new was queued.
    pub already_sent: bool,
    /// The report period (`dsr.report_period`) this report stands for.
    pub period_start: DateTime<Utc>,
}

/// The start of the report period containing `t`. Periods are aligned to
/// the Unix epoch, so every replica and every caller agrees on them.
fn period_start(t: DateTime<Utc>, period: std::time::Duration) -> DateTime<Utc> {
    let len = i64::try_from(period.as_secs()).unwrap_or(i64::MAX).max(1);
    DateTime::from_timestamp(t.timestamp().div_euclid(len) * len, 0).unwrap_or(t)
}

/// Queues the report to the DPO, at most once per report period: a second
/// send in the same period (a manual `--send` after the scheduled one, two
/// replicas, a retry) returns the first one's mail and queues nothing.
pub async fn send(ctx: &Context, r: &SlaReport, csv: String) -> Result<Option<Sent>> {
    let zone = notify::zone(ctx);
    let day = zone.date(r.generated_at);
    let start = period_start(r.generated_at, ctx.config.dsr.report_period);
    let queued = notify::enqueue(
        ctx,
        Message {
            role: Role::Dpo,
            subject: mail::subject(r, &zone),
            blocks: mail::blocks(r, &zone),
            attachments: vec![Attachment {
                filename: format!("dsr-sla-{day}.csv"),
                content_type: "text/csv".into(),
                content: csv,
            }],
            dedupe_key: Some(format!(
                "dsr-sla:{}:{}",
                ctx.config.dsr.report_period.as_secs(),
                start.timestamp()
            )),
        },
    )
    .await?;
    Ok(queued.map(|(mail_id, created)| Sent {
        mail_id,
        already_sent: !created,
        period_start: start,
    }))
}

/// The report, and the mail that carries it (none in a dry run).
#[derive(Debug, Serialize)]
pub struct ReportOutput {
    #[serde(flatten)]
    pub report: SlaReport,
    pub mail_id: Option<i64>,
    pub already_sent: Option<bool>,
}

/// `backups`: the backups' achieved RPO, from the caller (the layer above).
pub async fn report_job(
    jc: &JobContext,
    _: ReportParams,
    backups: Option<BackupRpo>,
) -> Result<ReportOutput> {
    let (report, csv) = sla_report(&jc.ctx, backups).await?;
    let mail = if jc.dry_run {
        None
    } else {
        send(&jc.ctx, &report, csv).await?
    };
    Ok(ReportOutput {
        report,
        mail_id: mail.as_ref().map(|m| m.mail_id),
        already_sent: mail.as_ref().map(|m| m.already_sent),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_epoch_aligned_and_contain_their_instant() {
        let week = std::time::Duration::from_secs(7 * 86_400);
        let t = DateTime::parse_from_rfc3339("2026-11-30T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = period_start(t, week);
        assert!(s <= t && t - s < chrono::Duration::days(7));
        assert_eq!(s.timestamp() % (7 * 86_400), 0);
        assert_eq!(period_start(t + chrono::Duration::seconds(1), week), s);
    }
}

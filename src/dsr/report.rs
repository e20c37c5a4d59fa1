//! The DSR SLA report for the DPO: open requests by state and days left,
//! at-risk and overdue lists, requests completed in the period with median
//! and p95 days to close and the share closed within deadline. HTML (with a
//! small chart) and plain text, plus a CSV attachment.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{sla, Sla};
use crate::context::Context;
use crate::error::Result;
use crate::notify::{self, html_escape, Message, Role};
use crate::runner::{JobContext, JobParams};
use crate::store::{Attachment, DsrRequest, DsrState};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {}

impl JobParams for ReportParams {}

#[derive(Debug, Serialize)]
pub struct SlaReport {
    pub generated_at: DateTime<Utc>,
    pub period_days: u64,
    pub open_by_state: BTreeMap<String, usize>,
    /// Open requests by days left: "overdue", "0-2", "3-6", "7-13", "14+".
    pub open_by_days_left: BTreeMap<String, usize>,
    pub at_risk: Vec<Value>,
    pub overdue: Vec<Value>,
    pub completed_in_period: usize,
    pub median_days_to_close: Option<f64>,
    pub p95_days_to_close: Option<f64>,
    pub percent_within_deadline: Option<f64>,
    pub rejected_in_period: usize,
}

const BUCKETS: [&str; 5] = ["overdue", "0-2", "3-6", "7-13", "14+"];

fn bucket(days_left: i64, overdue: bool) -> &'static str {
    match days_left {
        _ if overdue => "overdue",
        0..=2 => "0-2",
        3..=6 => "3-6",
        7..=13 => "7-13",
        _ => "14+",
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank - 1).copied()
}

fn median(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

pub async fn sla_report(ctx: &Context) -> Result<(SlaReport, String)> {
    let now = ctx.store.now().await?;
    let period = ctx.config.dsr.report_period;
    let since = now - chrono::Duration::seconds(period.as_secs() as i64);
    let all = ctx.store.dsr_list(None, 100_000).await?;
    let mut r = SlaReport {
        generated_at: now,
        period_days: period.as_secs() / 86_400,
        open_by_state: BTreeMap::new(),
        open_by_days_left: BUCKETS.iter().map(|b| (b.to_string(), 0)).collect(),
        at_risk: vec![],
        overdue: vec![],
        completed_in_period: 0,
        median_days_to_close: None,
        p95_days_to_close: None,
        percent_within_deadline: None,
        rejected_in_period: 0,
    };
    let mut csv = String::from(
        "id,kind,jurisdiction,state,reason,received_at,due_at,completed_at,days_left,sla\n",
    );
    let mut closes = Vec::new();
    let mut within = 0usize;
    for d in &all {
        let state = sla(ctx, d, now);
        let days_left = (d.due_at - now).num_hours().div_euclid(24);
        if d.state.is_open() {
            *r.open_by_state
                .entry(d.state.as_str().to_string())
                .or_default() += 1;
            *r.open_by_days_left
                .entry(bucket(days_left, state == Some(Sla::Overdue)).to_string())
                .or_default() += 1;
            let item = json!({"id": d.id, "kind": d.kind, "jurisdiction": d.jurisdiction, "due_at": d.due_at, "days_left": days_left});
            match state {
                Some(Sla::Overdue) => r.overdue.push(item),
                Some(Sla::AtRisk) => r.at_risk.push(item),
                _ => {}
            }
        }
        if let (DsrState::Completed, Some(done)) = (d.state, d.completed_at) {
            if done >= since {
                r.completed_in_period += 1;
                closes.push((done - d.received_at).num_seconds() as f64 / 86_400.0);
                if done <= d.due_at {
                    within += 1;
                }
            }
        }
        if d.state == DsrState::Rejected && d.updated_at >= since {
            r.rejected_in_period += 1;
        }
        csv.push_str(&csv_line(d, days_left, state));
    }
    closes.sort_by(|a, b| a.total_cmp(b));
    r.median_days_to_close = median(&closes).map(|v| (v * 10.0).round() / 10.0);
    r.p95_days_to_close = percentile(&closes, 95.0).map(|v| (v * 10.0).round() / 10.0);
    r.percent_within_deadline =
        (!closes.is_empty()).then(|| (within as f64 * 1000.0 / closes.len() as f64).round() / 10.0);
    Ok((r, csv))
}

/// One request's CSV row. No subject emails in the CSV: the DPO looks them up
/// by id when needed.
fn csv_line(d: &DsrRequest, days_left: i64, state: Option<Sla>) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{}\n",
        d.id,
        d.kind,
        d.jurisdiction,
        d.state.as_str(),
        d.reason.clone().unwrap_or_default(),
        d.received_at.to_rfc3339(),
        d.due_at.to_rfc3339(),
        d.completed_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        if d.state.is_open() {
            days_left.to_string()
        } else {
            String::new()
        },
        state
            .map(|s| serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default())
            .unwrap_or_default(),
    )
}

fn chart(r: &SlaReport) -> String {
    let max = r
        .open_by_days_left
        .values()
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let mut svg = String::from(
        "<h3>Open requests by days left</h3><svg width=\"420\" height=\"150\" role=\"img\" aria-label=\"open requests by days left\">",
    );
    for (i, b) in BUCKETS.iter().enumerate() {
        let n = r.open_by_days_left.get(*b).copied().unwrap_or(0);
        let h = (n as f64 / max as f64 * 100.0).round() as usize;
        let x = 10 + i * 80;
        let color = if *b == "overdue" {
            "#c0392b"
        } else if *b == "0-2" || *b == "3-6" {
            "#e67e22"
        } else {
            "#27ae60"
        };
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"60\" height=\"{h}\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{n}</text><text x=\"{}\" y=\"140\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
            115 - h,
            x + 30,
            110 - h,
            x + 30,
            html_escape(b)
        ));
    }
    svg.push_str("</svg>");
    svg
}

fn paragraphs(r: &SlaReport) -> Vec<String> {
    let fmt = |v: Option<f64>| v.map_or("—".to_string(), |x| format!("{x}"));
    let list = |items: &[Value]| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items
                .iter()
                .map(|i| {
                    format!(
                        "#{} ({}, {}, due {})",
                        i["id"],
                        i["kind"].as_str().unwrap_or(""),
                        i["jurisdiction"].as_str().unwrap_or(""),
                        i["due_at"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
    };
    vec![
        format!(
            "Open requests by state: {}.",
            if r.open_by_state.is_empty() { "none".into() } else { r.open_by_state.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ") }
        ),
        format!("Open by days left: {}.", BUCKETS.iter().map(|b| format!("{b}: {}", r.open_by_days_left.get(*b).copied().unwrap_or(0))).collect::<Vec<_>>().join(", ")),
        format!("Overdue: {}.", list(&r.overdue)),
        format!("At risk: {}.", list(&r.at_risk)),
        format!(
            "Completed in the last {} days: {} (median {} days to close, p95 {} days, {}% within deadline). Rejected: {}.",
            r.period_days, r.completed_in_period, fmt(r.median_days_to_close), fmt(r.p95_days_to_close), fmt(r.percent_within_deadline), r.rejected_in_period
        ),
        "The attached CSV lists every request with its deadline and SLA state.".into(),
    ]
}

/// Queues the report mail to the DPO; returns the outbox id.
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
    let day = r.generated_at.format("%Y-%m-%d");
    let start = period_start(r.generated_at, ctx.config.dsr.report_period);
    let queued = notify::enqueue(
        ctx,
        Message {
            role: Role::Dpo,
            subject: format!(
                "[lethe] DSR SLA report {day}: {} overdue, {} at risk",
                r.overdue.len(),
                r.at_risk.len()
            ),
            paragraphs: paragraphs(r),
            html_extra: Some(chart(r)),
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

pub async fn report_job(jc: &JobContext, _: ReportParams) -> Result<ReportOutput> {
    let (report, csv) = sla_report(&jc.ctx).await?;
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

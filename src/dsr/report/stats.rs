//! The numbers of the SLA report: the open queue with what needs action, the
//! period's intake and outcomes by kind, jurisdiction and reason, time to
//! close, and a weekly trend. Computed once; the mail, the CLI and `--json`
//! all show these.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::super::{sla, Jurisdiction, Sla};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::{DsrRequest, DsrState};

/// Weeks in the time-to-close trend.
pub const TREND_WEEKS: i64 = 12;

/// The most requests one report reads; more is refused rather than counted short.
const MAX_REQUESTS: u32 = 1_000_000;

pub(super) const BUCKETS: [&str; 5] = ["overdue", "0-2", "3-6", "7-13", "14+"];

/// An open request as the report lists it.
#[derive(Debug, Clone, Serialize)]
pub struct OpenItem {
    pub id: i64,
    pub kind: String,
    pub jurisdiction: String,
    pub state: String,
    pub due_at: DateTime<Utc>,
    /// Whole days left (negative: overdue), rounded down.
    pub days_left: i64,
    pub hours_left: i64,
    pub sla: Option<Sla>,
    pub extended_days: i32,
    /// How many more days the jurisdiction allows the deadline to move, when
    /// it may still be moved (not once it has passed).
    pub extendable_days: Option<u32>,
    /// What to run: extend it, look it up, process it.
    pub commands: Vec<String>,
}

/// An organisation's request (deletion, export) as the report lists it:
/// open ones, and those closed in the period.
#[derive(Debug, Clone, Serialize)]
pub struct OrgItem {
    pub id: i64,
    pub org: String,
    pub kind: String,
    pub state: String,
    pub due_at: DateTime<Utc>,
    /// Whole days left (negative: overdue), rounded down; `None` once closed.
    pub days_left: Option<i64>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Closed after its deadline, or open past it.
    pub late: bool,
}

/// Open org requests, then those closed in the period; earliest deadline first.
pub(super) async fn org_items(ctx: &Context, now: DateTime<Utc>) -> Result<Vec<OrgItem>> {
    let period = ctx.config.dsr.report_period;
    let since = now - Duration::seconds(i64::try_from(period.as_secs()).unwrap_or(i64::MAX / 2));
    let mut items: Vec<OrgItem> = ctx
        .store
        .org_requests(None)
        .await?
        .into_iter()
        .filter(|r| r.completed_at.is_none_or(|c| c >= since))
        .map(|r| {
            let open = r.completed_at.is_none();
            let left = r.due_at - now;
            OrgItem {
                days_left: open.then(|| left.num_seconds().div_euclid(86_400)),
                late: r
                    .completed_at
                    .map_or(left < Duration::zero(), |c| c > r.due_at),
                id: r.id,
                org: r.org,
                kind: r.kind,
                state: r.state,
                due_at: r.due_at,
                completed_at: r.completed_at,
            }
        })
        .collect();
    items.sort_by_key(|i| (i.completed_at.is_some(), i.due_at));
    Ok(items)
}

/// Received, completed and rejected in the period, for one kind or jurisdiction.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub received: usize,
    pub completed: usize,
    pub completed_late: usize,
    pub rejected: usize,
}

/// One week of the trend: requests completed that week and their time to close.
#[derive(Debug, Clone, Serialize)]
pub struct Week {
    pub start: DateTime<Utc>,
    pub completed: usize,
    pub completed_late: usize,
    pub median_days_to_close: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct SlaReport {
    pub generated_at: DateTime<Utc>,
    pub period_days: u64,
    /// The report period as a person reads it ("7 days", "36 hours").
    pub period: String,
    pub open_by_state: BTreeMap<String, usize>,
    /// Open requests by days left: "overdue", "0-2", "3-6", "7-13", "14+".
    pub open_by_days_left: BTreeMap<String, usize>,
    pub at_risk: Vec<OpenItem>,
    pub overdue: Vec<OpenItem>,
    /// Every open request, earliest deadline first.
    pub open: Vec<OpenItem>,
    pub received_in_period: usize,
    pub completed_in_period: usize,
    pub completed_late_in_period: usize,
    pub median_days_to_close: Option<f64>,
    pub p95_days_to_close: Option<f64>,
    pub percent_within_deadline: Option<f64>,
    pub rejected_in_period: usize,
    pub rejected_by_reason: BTreeMap<String, usize>,
    pub by_kind: BTreeMap<String, Counts>,
    pub by_jurisdiction: BTreeMap<String, Counts>,
    /// Deadlines extended in the period, and open requests running on an extension.
    pub extensions_in_period: usize,
    pub open_extended: usize,
    /// The last [`TREND_WEEKS`] weeks, oldest first; the last ends now.
    pub weekly: Vec<Week>,
    /// Requests of organisations (deletions, exports): open, and closed in the period.
    pub org_requests: Vec<OrgItem>,
    /// The backups' RPO achieved over the last 30 days (`None`: no backup yet).
    pub backups: Option<BackupRpo>,
}

/// The RPO promised and achieved over the last 30 days, as the backups
/// measure it (given to the report: backups sit above DSRs).
#[derive(Debug, Clone, Serialize)]
pub struct BackupRpo {
    pub rpo_s: u64,
    /// The longest time without a newer recovery point (the current wait included).
    pub achieved_30d_s: u64,
    /// `wal archive` (physical mode) or `backups` (the catalog's backups).
    pub measured_from: &'static str,
}

fn period_text(p: std::time::Duration) -> String {
    let s = p.as_secs();
    let (n, unit) = match s {
        _ if s % 86_400 == 0 => (s / 86_400, "day"),
        _ if s % 3_600 == 0 => (s / 3_600, "hour"),
        _ => (s.div_ceil(60), "minute"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

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

fn one_decimal(v: Option<f64>) -> Option<f64> {
    v.map(|v| (v * 10.0).round() / 10.0)
}

/// Days from receipt to completion, for a completed request.
pub fn days_to_close(d: &DsrRequest) -> Option<f64> {
    match (d.state, d.completed_at) {
        (DsrState::Completed, Some(done)) => {
            Some((done - d.received_at).num_seconds() as f64 / 86_400.0)
        }
        _ => None,
    }
}

/// The jurisdiction's room left to extend `d`'s deadline, in whole days, or
/// why there is none (its law allows none or no further one, it is at its
/// limit, or the deadline has passed).
fn extendable_days(
    ctx: &Context,
    d: &DsrRequest,
    now: DateTime<Utc>,
) -> std::result::Result<u32, String> {
    if d.due_at < now {
        return Err("the deadline has passed: it can no longer be extended".into());
    }
    let j = Jurisdiction::find(&d.jurisdiction).map_err(|e| e.to_string())?;
    let limit = j.extension_limit(&d.kind, d.received_at, d.extended_days, &ctx.config.dsr)?;
    match u32::try_from((limit - d.due_at).num_days()) {
        Ok(days) if days > 0 => Ok(days),
        _ => Err(format!(
            "extended to {}'s limit already ({})",
            j.name, j.extension_text
        )),
    }
}

fn open_item(ctx: &Context, d: &DsrRequest, now: DateTime<Utc>) -> OpenItem {
    let state = sla(ctx, d, now);
    let extendable = extendable_days(ctx, d, now);
    let mut commands = Vec::new();
    let mut show = format!("lethe dsr show {}", d.id);
    if state != Some(Sla::OnTrack) {
        match &extendable {
            Ok(days) => commands.push(format!(
                "lethe dsr extend {} --days {days} --reason \"WHY, AS TOLD TO THE SUBJECT\"",
                d.id
            )),
            // Say why there is no extend command, beside the look-up.
            Err(why) => show = format!("{show}   # {why}"),
        }
    }
    if matches!(d.state, DsrState::Verified | DsrState::Failed) {
        commands.push("lethe run dsr.process".into());
    }
    // Nothing happens to a request that waits for its identity check but that check.
    if d.state == DsrState::Received {
        let clock = match Jurisdiction::find(&d.jurisdiction) {
            Ok(j) if j.clock_from_verification => "   # its deadline then runs from the check",
            _ => "",
        };
        commands.insert(
            0,
            format!(
                "lethe dsr verify {} --method id_document --by \"WHO CHECKED\"{clock}",
                d.id
            ),
        );
    }
    commands.push(show);
    OpenItem {
        id: d.id,
        kind: d.kind.clone(),
        jurisdiction: d.jurisdiction.clone(),
        state: d.state.as_str().into(),
        due_at: d.due_at,
        // Floored, so any time past the deadline is negative.
        days_left: (d.due_at - now).num_seconds().div_euclid(86_400),
        hours_left: (d.due_at - now).num_seconds().div_euclid(3_600),
        sla: state,
        extended_days: d.extended_days,
        extendable_days: extendable.ok(),
        commands,
    }
}

/// Every request in the store, and the store's now.
pub(super) async fn requests(ctx: &Context) -> Result<(Vec<DsrRequest>, DateTime<Utc>)> {
    let now = ctx.store.now().await?;
    let all = ctx.store.dsr_list(None, MAX_REQUESTS).await?;
    if all.len() >= MAX_REQUESTS as usize {
        return Err(Error::Failed(format!(
            "the store holds {MAX_REQUESTS} or more requests, more than one SLA report reads; \
             nothing was reported rather than a report that counts some of them"
        )));
    }
    Ok((all, now))
}

pub(super) fn compute(ctx: &Context, all: &[DsrRequest], now: DateTime<Utc>) -> SlaReport {
    let period = ctx.config.dsr.report_period;
    let since = now - Duration::seconds(i64::try_from(period.as_secs()).unwrap_or(i64::MAX / 2));
    let mut r = SlaReport {
        generated_at: now,
        period_days: period.as_secs() / 86_400,
        period: period_text(period),
        open_by_state: BTreeMap::new(),
        open_by_days_left: BUCKETS.iter().map(|b| (b.to_string(), 0)).collect(),
        at_risk: vec![],
        overdue: vec![],
        open: vec![],
        received_in_period: 0,
        completed_in_period: 0,
        completed_late_in_period: 0,
        median_days_to_close: None,
        p95_days_to_close: None,
        percent_within_deadline: None,
        rejected_in_period: 0,
        rejected_by_reason: BTreeMap::new(),
        by_kind: BTreeMap::new(),
        by_jurisdiction: BTreeMap::new(),
        extensions_in_period: 0,
        open_extended: 0,
        weekly: vec![],
        org_requests: vec![],
        backups: None,
    };
    let mut closes = Vec::new();
    for d in all {
        if d.state.is_open() {
            count_open(ctx, &mut r, d, now);
        }
        if d.extended_at.is_some_and(|t| t >= since && t <= now) {
            r.extensions_in_period += 1;
        }
        let mut tally = |f: &dyn Fn(&mut Counts)| {
            f(r.by_kind.entry(d.kind.clone()).or_default());
            f(r.by_jurisdiction.entry(d.jurisdiction.clone()).or_default());
        };
        if d.received_at >= since {
            r.received_in_period += 1;
            tally(&|c| c.received += 1);
        }
        if let (Some(days), Some(done)) = (days_to_close(d), d.completed_at) {
            if done >= since {
                let late = done > d.due_at;
                r.completed_in_period += 1;
                r.completed_late_in_period += usize::from(late);
                tally(&|c| {
                    c.completed += 1;
                    c.completed_late += usize::from(late);
                });
                closes.push(days);
            }
        }
        if d.state == DsrState::Rejected && d.updated_at >= since {
            r.rejected_in_period += 1;
            tally(&|c| c.rejected += 1);
            let reason = d.reason.clone().unwrap_or_else(|| "unspecified".into());
            *r.rejected_by_reason.entry(reason).or_default() += 1;
        }
    }
    r.open.sort_by_key(|i| (i.due_at, i.id));
    r.overdue.sort_by_key(|i| (i.due_at, i.id));
    r.at_risk.sort_by_key(|i| (i.due_at, i.id));
    closes.sort_by(|a, b| a.total_cmp(b));
    r.median_days_to_close = one_decimal(median(&closes));
    r.p95_days_to_close = one_decimal(percentile(&closes, 95.0));
    r.percent_within_deadline = (!closes.is_empty()).then(|| {
        let within = closes.len() - r.completed_late_in_period;
        (within as f64 * 1000.0 / closes.len() as f64).round() / 10.0
    });
    r.weekly = weekly(all, now);
    r
}

fn count_open(ctx: &Context, r: &mut SlaReport, d: &DsrRequest, now: DateTime<Utc>) {
    let item = open_item(ctx, d, now);
    *r.open_by_state.entry(item.state.clone()).or_default() += 1;
    let b = bucket(item.days_left, item.sla == Some(Sla::Overdue));
    *r.open_by_days_left.entry(b.to_string()).or_default() += 1;
    r.open_extended += usize::from(d.extended_days > 0);
    match item.sla {
        Some(Sla::Overdue) => r.overdue.push(item.clone()),
        Some(Sla::AtRisk) => r.at_risk.push(item.clone()),
        _ => {}
    }
    r.open.push(item);
}

/// Requests completed in each of the last weeks, and their median time to close.
fn weekly(all: &[DsrRequest], now: DateTime<Utc>) -> Vec<Week> {
    (0..TREND_WEEKS)
        .map(|i| {
            let start = now - Duration::weeks(TREND_WEEKS - i);
            let end = start + Duration::weeks(1);
            let mut days: Vec<f64> = Vec::new();
            let mut late = 0;
            for d in all {
                if let (Some(t), Some(done)) = (days_to_close(d), d.completed_at) {
                    if done >= start && done < end {
                        days.push(t);
                        late += usize::from(done > d.due_at);
                    }
                }
            }
            days.sort_by(|a, b| a.total_cmp(b));
            Week {
                start,
                completed: days.len(),
                completed_late: late,
                median_days_to_close: one_decimal(median(&days)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians_by_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(median(&v), Some(3.0));
        assert_eq!(median(&v[..4]), Some(2.5));
        assert_eq!(percentile(&v, 95.0), Some(10.0));
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&[], 95.0), None);
    }

    #[test]
    fn days_left_fall_in_buckets() {
        // Snapshot table: (days left, overdue, bucket).
        for (days, overdue, want) in [
            (-3, true, "overdue"),
            (0, false, "0-2"),
            (2, false, "0-2"),
            (3, false, "3-6"),
            (13, false, "7-13"),
            (14, false, "14+"),
        ] {
            assert_eq!(bucket(days, overdue), want, "{days}");
        }
    }
}

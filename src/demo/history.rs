//! Six months of data subject requests for the demo, imported as a former
//! tool's records would be: across GDPR, CCPA and UU PDP, most closed in
//! time, some late, some extended, some rejected, and a few still open (one
//! overdue, two at risk), so the first SLA report a newcomer opens shows
//! every section.

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::config::DsrConfig;
use crate::context::Context;
use crate::dsr::Jurisdiction;
use crate::error::Result;
use crate::store::{DsrState, ImportedDsr, NewDsr};

#[derive(Debug, Default, Serialize)]
pub struct History {
    pub requests: usize,
    pub completed: usize,
    pub completed_late: usize,
    pub extended: usize,
    pub rejected: usize,
    pub open: usize,
}

const REASONS: [&str; 3] = ["not_found", "sole_owner", "legal_hold"];
const LAWS: [&str; 5] = ["gdpr", "ccpa", "uu_pdp", "gdpr", "ccpa"];

fn request(
    cfg: &DsrConfig,
    i: usize,
    kind: &str,
    law: &str,
    received: DateTime<Utc>,
) -> Result<ImportedDsr> {
    imported(
        cfg,
        format!("history-{i}@customers.demo.example"),
        (kind, law),
        received,
    )
}

/// A request of `subject` received at `received`, due by its law's
/// deadline, recorded as completed by a former tool (callers change what differs).
pub(super) fn imported(
    cfg: &DsrConfig,
    subject: String,
    (kind, law): (&str, &str),
    received: DateTime<Utc>,
) -> Result<ImportedDsr> {
    let due = Jurisdiction::find(law)?
        .deadline(kind, cfg)
        .after(received)?;
    Ok(ImportedDsr {
        request: NewDsr {
            kind: kind.into(),
            subject,
            org: None,
            jurisdiction: law.into(),
            state: DsrState::Completed,
            reason: None,
            detail: None,
            source: "demo-history".into(),
            idempotency_key: None,
            request_hash: None,
            received_at: received,
            due_at: due,
            corrections: vec![],
        },
        extended_days: 0,
        extension_reason: None,
        extended_at: None,
        extension_notified_at: None,
        completed_at: None,
        updated_at: received,
    })
}

/// Closes `h` after `took`; false (nothing changed) when that is not yet past.
fn close(h: &mut ImportedDsr, took: Duration, now: DateTime<Utc>) -> bool {
    let done = h.request.received_at + took;
    if done > now - Duration::hours(1) {
        return false;
    }
    h.completed_at = Some(done);
    h.updated_at = done;
    true
}

fn extend(h: &mut ImportedDsr, days: i64, decided_after: Duration) {
    let at = h.request.received_at + decided_after;
    h.request.due_at += Duration::days(days);
    h.extended_days = i32::try_from(days).unwrap_or(0);
    h.extended_at = Some(at);
    h.extension_notified_at = Some(at);
    h.extension_reason = Some("several systems hold the subject's data".into());
}

/// The closed history: one request every three and a half days or so.
fn closed(cfg: &DsrConfig, now: DateTime<Utc>, rng: &mut StdRng) -> Result<Vec<ImportedDsr>> {
    let mut out = Vec::new();
    let mut hours_ago = 182 * 24;
    let mut i = 0;
    while hours_ago > 30 {
        i += 1;
        let law = LAWS[i % LAWS.len()];
        let kind = if i % 3 == 0 { "erasure" } else { "export" };
        let mut h = request(cfg, i, kind, law, now - Duration::hours(hours_ago))?;
        let (fast, slow, late) = match law {
            "uu_pdp" => (
                Duration::hours(10),
                Duration::hours(60),
                Duration::hours(90),
            ),
            "ccpa" => (Duration::days(3), Duration::days(35), Duration::days(50)),
            _ => (Duration::days(2), Duration::days(24), Duration::days(36)),
        };
        let span = (slow - fast).num_minutes().max(1);
        let took = fast + Duration::minutes(rng.random_range(0..span));
        let closed = if i % 11 == 0 {
            h.request.state = DsrState::Rejected;
            h.request.reason = Some(REASONS[(i / 11) % REASONS.len()].into());
            h.updated_at = h.request.received_at + Duration::hours(20);
            true
        } else if i % 9 == 0 {
            close(&mut h, late, now)
        } else if i % 7 == 0 && law != "uu_pdp" {
            extend(&mut h, 30, Duration::days(20));
            close(&mut h, slow + Duration::days(12), now)
        } else {
            close(&mut h, took, now)
        };
        // One whose closing is not yet past would be a request still open: the open ones are chosen below.
        if closed {
            out.push(h);
        }
        hours_ago -= rng.random_range(60..110);
    }
    Ok(out)
}

/// Still open: one overdue, two at risk, the rest on track (one extended).
fn open(cfg: &DsrConfig, now: DateTime<Utc>, first: usize) -> Result<Vec<ImportedDsr>> {
    let spec: [(&str, &str, Duration); 6] = [
        ("export", "ccpa", Duration::days(47)),
        ("erasure", "gdpr", Duration::days(26)),
        ("export", "uu_pdp", Duration::hours(40)),
        ("export", "gdpr", Duration::days(10)),
        ("erasure", "gdpr", Duration::days(40)),
        ("erasure", "ccpa", Duration::days(5)),
    ];
    let mut out = Vec::new();
    for (n, (kind, law, ago)) in spec.into_iter().enumerate() {
        let mut h = request(cfg, first + n, kind, law, now - ago)?;
        h.request.state = DsrState::Received;
        h.request.detail = Some("awaiting the subject's identity verification".into());
        if n == 4 {
            extend(&mut h, 30, Duration::days(25));
            h.updated_at = h.extended_at.unwrap_or(h.updated_at);
        }
        out.push(h);
    }
    Ok(out)
}

pub async fn seed_dsr_history(ctx: &Context, now: DateTime<Utc>) -> Result<History> {
    let mut rng = StdRng::seed_from_u64(0x1e7e);
    let cfg = &ctx.config.dsr;
    let mut all = closed(cfg, now, &mut rng)?;
    all.extend(open(cfg, now, all.len() + 1)?);
    let mut h = History::default();
    for r in all {
        h.requests += 1;
        h.extended += usize::from(r.extended_days > 0);
        match (r.request.state, r.completed_at) {
            (DsrState::Completed, Some(done)) => {
                h.completed += 1;
                h.completed_late += usize::from(done > r.request.due_at);
            }
            (DsrState::Rejected, _) => h.rejected += 1,
            _ => h.open += 1,
        }
        crate::dsr::import(ctx, r, "demo").await?;
    }
    Ok(h)
}

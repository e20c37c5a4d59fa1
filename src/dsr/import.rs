//! Requests recorded elsewhere (a former tool, a spreadsheet of last year's
//! requests), imported with their timelines so the SLA report's history and
//! trend carry on. Each import is checked for a consistent timeline and
//! commits with its evidence (`dsr.imported`), the subject as a pseudonym.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::{normalize_email, process, subject_pseudonym, Jurisdiction};
use crate::config::DsrConfig;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::{DsrRequest, DsrState, ImportedDsr};

/// The first way `h`'s timeline is inconsistent, or could not have happened
/// under its law.
fn problem(
    h: &ImportedDsr,
    j: &Jurisdiction,
    cfg: &DsrConfig,
    now: DateTime<Utc>,
) -> Option<String> {
    let r = &h.request;
    let soon = now + Duration::minutes(5);
    let within = |t: DateTime<Utc>, to: DateTime<Utc>| t >= r.received_at && t <= to;
    if !matches!(r.kind.as_str(), "export" | "erasure") {
        return Some(format!("kind `{}` must be export or erasure", r.kind));
    }
    if r.received_at > soon || r.due_at < r.received_at || !within(h.updated_at, soon) {
        return Some(
            "received in the future, due before it was received, or changed outside receipt..now"
                .into(),
        );
    }
    match (r.state, h.completed_at) {
        (DsrState::Completed, Some(done)) if within(done, now) => {}
        (DsrState::Completed, _) => return Some("a completed request needs its completion time, between receipt and now".into()),
        (DsrState::Received | DsrState::Rejected, None) => {}
        (DsrState::Received | DsrState::Rejected, Some(_)) => return Some(format!("a {} request has no completion time", r.state.as_str())),
        (other, _) => return Some(format!("an imported request is received, completed or rejected, not {}: an open one waits as received for the intake checks", other.as_str())),
    }
    let extended = (
        h.extended_at,
        h.extension_notified_at,
        h.extension_reason.as_deref(),
    );
    let limit = match (h.extended_days, extended) {
        (0, (None, None, None)) => j.deadline(&r.kind, cfg).after(r.received_at).ok(),
        (d, (Some(at), Some(told), Some(why))) if d > 0 && !why.trim().is_empty() => {
            if !within(at, h.completed_at.unwrap_or(now)) || !within(told, r.due_at) {
                return Some("an extension decided outside receipt..completion, or told to the subject after the deadline".into());
            }
            j.extension_limit(&r.kind, r.received_at, 0, cfg).ok()
        }
        _ => return Some("an extension needs its days (> 0), when it was decided, when the subject was told, and why; none of them without it".into()),
    };
    match limit {
        Some(max) if r.due_at <= max => None,
        Some(max) => Some(format!(
            "due {} is later than {} allows ({})",
            r.due_at.to_rfc3339(),
            j.name,
            max.to_rfc3339()
        )),
        None => Some(format!("{} allows no such deadline", j.name)),
    }
}

pub async fn import(ctx: &Context, mut h: ImportedDsr, actor: &str) -> Result<DsrRequest> {
    h.request.subject = normalize_email(&h.request.subject)?;
    let j = Jurisdiction::find(&h.request.jurisdiction)?;
    h.request.jurisdiction = j.code.to_string();
    if let Some(why) = problem(&h, j, &ctx.config.dsr, ctx.store.now().await?) {
        let r = &h.request;
        return Err(Error::Usage(format!(
            "imported {} request ({}, received {}): {why}",
            r.kind,
            j.name,
            r.received_at.to_rfc3339()
        )));
    }
    let pseudonym = process::pseudonym_key(&ctx.config)
        .ok()
        .map(|k| subject_pseudonym(&k, &h.request.subject));
    let event = |r: &DsrRequest| {
        crate::store::evidence(
            actor,
            "dsr.imported",
            &format!("dsr:{}", r.id),
            json!({"kind": r.kind, "jurisdiction": r.jurisdiction, "state": r.state.as_str(),
                   "reason": r.reason, "received_at": r.received_at.to_rfc3339(),
                   "due_at": r.due_at.to_rfc3339(), "extended_days": r.extended_days,
                   "completed_at": r.completed_at.map(|t| t.to_rfc3339()),
                   "source": r.source, "subject": pseudonym}),
        )
    };
    ctx.store.dsr_import(&h, &event).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewDsr;
    use chrono::TimeZone;

    fn cfg() -> DsrConfig {
        DsrConfig::for_tests()
    }

    fn at(m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, m, d, 10, 0, 0).unwrap()
    }

    /// A GDPR export received 1 March, due 1 April, completed 20 March.
    fn done() -> ImportedDsr {
        ImportedDsr {
            request: NewDsr {
                kind: "export".into(),
                subject: "a@x.example".into(),
                org: None,
                jurisdiction: "gdpr".into(),
                state: DsrState::Completed,
                reason: None,
                detail: None,
                source: "import".into(),
                idempotency_key: None,
                request_hash: None,
                received_at: at(3, 1),
                due_at: at(4, 1),
                corrections: vec![],
            },
            extended_days: 0,
            extension_reason: None,
            extended_at: None,
            extension_notified_at: None,
            completed_at: Some(at(3, 20)),
            updated_at: at(3, 20),
        }
    }

    fn extended(mut h: ImportedDsr, days: i64) -> ImportedDsr {
        h.request.due_at += Duration::days(days);
        h.extended_days = i32::try_from(days).unwrap();
        h.extended_at = Some(at(3, 15));
        h.extension_notified_at = Some(at(3, 15));
        h.extension_reason = Some("complex".into());
        h
    }

    #[test]
    fn only_timelines_that_could_have_happened_are_imported() {
        let now = at(6, 1);
        let gdpr = Jurisdiction::find("gdpr").unwrap();
        let ccpa = Jurisdiction::find("ccpa").unwrap();
        let ok = |h: &ImportedDsr, j| problem(h, j, &cfg(), now);
        assert_eq!(ok(&done(), gdpr), None);
        assert_eq!(ok(&extended(done(), 30), gdpr), None);
        // Snapshot table: (what is wrong, the record) → refused.
        let mut cases: Vec<(&str, ImportedDsr)> = Vec::new();
        let mut h = done();
        h.completed_at = Some(at(7, 1));
        cases.push(("completed in the future", h));
        let mut h = done();
        h.completed_at = None;
        cases.push(("completed without a time", h));
        let mut h = done();
        h.request.state = DsrState::Verified;
        h.completed_at = None;
        cases.push(("imported as verified (skips the intake checks)", h));
        let mut h = done();
        h.request.due_at = at(5, 1);
        cases.push(("due later than GDPR allows without an extension", h));
        cases.push((
            "extended past GDPR's two further months",
            extended(done(), 70),
        ));
        let mut h = extended(done(), 30);
        h.extension_reason = None;
        cases.push(("an extension without its reason", h));
        let mut h = extended(done(), 30);
        h.extended_at = Some(at(3, 25));
        cases.push(("an extension decided after completion", h));
        let mut h = extended(done(), 30);
        h.extended_days = -5;
        cases.push(("negative extension days", h));
        let mut h = done();
        h.updated_at = at(8, 1);
        cases.push(("changed in the future", h));
        for (what, h) in &cases {
            assert!(ok(h, gdpr).is_some(), "{what} was accepted");
        }
        let mut c = extended(done(), 40);
        c.request.jurisdiction = "ccpa".into();
        c.request.due_at = at(3, 1) + Duration::days(45 + 40);
        assert_eq!(ok(&c, ccpa), None, "one CCPA extension within 45 days");
    }
}

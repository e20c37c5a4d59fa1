//! Requests recorded elsewhere (a former tool, a spreadsheet of last year's
//! requests), imported with their timelines so the SLA report's history and
//! trend carry on. Each import is checked for a consistent timeline and
//! commits with its evidence (`dsr.imported`), the subject as a pseudonym.

use chrono::Duration;
use serde_json::json;

use super::{normalize_email, process, subject_pseudonym, Jurisdiction};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::{DsrRequest, DsrState, ImportedDsr};

fn check(h: &ImportedDsr, now: chrono::DateTime<chrono::Utc>) -> Result<()> {
    let r = &h.request;
    let bad = |m: String| {
        Err(Error::Usage(format!(
            "imported request for {}: {m}",
            r.kind
        )))
    };
    if !matches!(r.kind.as_str(), "export" | "erasure") {
        return bad(format!("kind `{}` must be export or erasure", r.kind));
    }
    if r.received_at > now + Duration::minutes(5) || r.due_at < r.received_at {
        return bad("received in the future, or due before it was received".into());
    }
    match (r.state, h.completed_at) {
        (DsrState::Completed, Some(done)) if done >= r.received_at && done <= now => {}
        (DsrState::Completed, _) => {
            return bad(
                "a completed request needs a completion time between receipt and now".into(),
            )
        }
        (_, Some(_)) => {
            return bad(format!(
                "a {} request has no completion time",
                r.state.as_str()
            ))
        }
        _ => {}
    }
    if h.updated_at < r.received_at || (h.extended_days > 0) != h.extended_at.is_some() {
        return bad("its last change precedes receipt, or an extension has no time".into());
    }
    Ok(())
}

pub async fn import(ctx: &Context, mut h: ImportedDsr, actor: &str) -> Result<DsrRequest> {
    h.request.subject = normalize_email(&h.request.subject)?;
    h.request.jurisdiction = Jurisdiction::find(&h.request.jurisdiction)?
        .code
        .to_string();
    check(&h, ctx.store.now().await?)?;
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

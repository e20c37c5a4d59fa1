//! Identity. A request can arrive unverified (`received`): `dsr verify`
//! records how the subject's identity was checked and by whom, and, where the
//! law starts the clock at verification, moves the deadline. A request still
//! unverified `dsr.verify_within` after receipt is rejected
//! (`identity_unverified`), with evidence.

use serde_json::json;

use super::Jurisdiction;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::{DsrRequest, DsrState, DsrVerification};

/// `method`: a short label such as `id_document`, `email_link` or
/// `account_login`; `by`: who checked (1–200 printable characters).
pub async fn verify(
    ctx: &Context,
    id: i64,
    (method, by): (&str, &str),
    actor: &str,
) -> Result<DsrRequest> {
    let label = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if method.is_empty() || method.len() > 40 || !method.chars().all(label) {
        return Err(Error::Usage(format!(
            "--method `{method}` must be a short label of a-z, 0-9, `_` and `-` (e.g. id_document, email_link, account_login)"
        )));
    }
    let by = by.trim();
    if by.is_empty() || by.chars().count() > 200 || by.chars().any(char::is_control) {
        return Err(Error::Usage(
            "--by must name who checked the identity (1 to 200 printable characters)".into(),
        ));
    }
    let r = ctx
        .store
        .dsr_get(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no request {id} (see `lethe dsr list`)")))?;
    if r.state != DsrState::Received {
        return Err(Error::Refused(format!(
            "request {id} is {}; only a request awaiting verification (received) can be verified",
            r.state.as_str()
        )));
    }
    let now = ctx.store.now().await?;
    if let Some(within) = verify_within(ctx) {
        if r.received_at
            .checked_add_signed(within)
            .is_some_and(|t| t <= now)
        {
            return Err(Error::Refused(format!(
                "request {id} was not verified within dsr.verify_within of its receipt; \
                 the next dsr.process rejects it (identity_unverified)"
            )));
        }
    }
    let j = Jurisdiction::find(&r.jurisdiction)?;
    let due_at = if j.clock_from_verification {
        // From now, with any extension granted meanwhile, and never earlier
        // than the deadline in force (month ends clamp).
        let fresh = j.deadline(&r.kind, &ctx.config.dsr).after(now)?;
        let extended = u64::try_from(r.extended_days).unwrap_or(0);
        let fresh = fresh
            .checked_add_days(chrono::Days::new(extended))
            .unwrap_or(fresh);
        fresh.max(r.due_at)
    } else {
        r.due_at
    };
    let v = DsrVerification {
        at: now,
        method: method.to_string(),
        by: by.to_string(),
        due_at,
        from_due_at: r.due_at,
    };
    // Who checked stays on the request; the evidence names the actor and how.
    let event = crate::store::evidence(
        actor,
        "dsr.identity_verified",
        &format!("dsr:{id}"),
        json!({"method": method, "due_at": due_at.to_rfc3339(),
               "deadline_from": if j.clock_from_verification { "verification" } else { "receipt" }}),
    );
    if !ctx.store.dsr_verify(id, &v, &event).await? {
        return Err(Error::Refused(format!(
            "request {id} changed meanwhile (verified, extended or expired); nothing recorded"
        )));
    }
    ctx.store
        .dsr_get(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no request {id}")))
}

/// `dsr.verify_within`, as a span of time on the store's clock.
fn verify_within(ctx: &Context) -> Option<chrono::Duration> {
    let within = ctx.config.dsr.verify_within?;
    Some(chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX))
}

/// Rejects the requests still unverified `dsr.verify_within` after receipt;
/// returns their ids.
pub(super) async fn expire_unverified(ctx: &Context, actor: &str) -> Result<Vec<i64>> {
    let Some(within) = verify_within(ctx) else {
        return Ok(Vec::new());
    };
    let now = ctx.store.now().await?;
    let Some(cutoff) = now.checked_sub_signed(within) else {
        return Ok(Vec::new());
    };
    let mut expired = Vec::new();
    // Oldest first, page by page: each request leaves `received` as it goes.
    loop {
        let page = ctx.store.dsr_received_before(cutoff, 500).await?;
        let full = page.len() == 500;
        let before = expired.len();
        for r in page {
            if reject(ctx, actor, &r, within).await? {
                expired.push(r.id);
            }
        }
        if !full || expired.len() == before {
            return Ok(expired);
        }
    }
}

/// Rejects one request as `identity_unverified`, with evidence; false if it
/// left `received` meanwhile.
async fn reject(
    ctx: &Context,
    actor: &str,
    r: &DsrRequest,
    within: chrono::Duration,
) -> Result<bool> {
    let detail = json!({"detail": format!(
        "the subject's identity was not verified within {} of receipt",
        crate::config::format_duration(within.to_std().unwrap_or_default())
    )});
    let event = crate::store::evidence(
        actor,
        "dsr.rejected",
        &format!("dsr:{}", r.id),
        json!({"reason": "identity_unverified"}),
    );
    ctx.store
        .dsr_transition(
            r.id,
            &[DsrState::Received],
            DsrState::Rejected,
            Some("identity_unverified"),
            Some(&detail),
            Some(&event),
        )
        .await
}

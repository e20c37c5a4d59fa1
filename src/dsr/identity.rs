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
    let j = Jurisdiction::find(&r.jurisdiction)?;
    let due_at = if j.clock_from_verification {
        j.deadline(&r.kind, &ctx.config.dsr).after(now)?
    } else {
        r.due_at
    };
    let v = DsrVerification {
        at: now,
        method: method.to_string(),
        by: by.to_string(),
        due_at,
    };
    let event = crate::store::evidence(
        actor,
        "dsr.identity_verified",
        &format!("dsr:{id}"),
        json!({"method": method, "by": by, "due_at": due_at.to_rfc3339(),
               "deadline_from": if j.clock_from_verification { "verification" } else { "receipt" }}),
    );
    if !ctx.store.dsr_verify(id, &v, &event).await? {
        return Err(Error::Refused(format!(
            "request {id} changed meanwhile (verified, or expired); nothing recorded"
        )));
    }
    ctx.store
        .dsr_get(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no request {id}")))
}

/// Rejects the requests still unverified `dsr.verify_within` after receipt;
/// returns their ids.
pub(super) async fn expire_unverified(ctx: &Context, actor: &str) -> Result<Vec<i64>> {
    let Some(within) = ctx.config.dsr.verify_within else {
        return Ok(Vec::new());
    };
    let within = chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
    let now = ctx.store.now().await?;
    let mut expired = Vec::new();
    for r in ctx.store.dsr_list(Some(DsrState::Received), 10_000).await? {
        if r.received_at
            .checked_add_signed(within)
            .is_none_or(|t| t > now)
        {
            continue;
        }
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
        let moved = ctx
            .store
            .dsr_transition(
                r.id,
                &[DsrState::Received],
                DsrState::Rejected,
                Some("identity_unverified"),
                Some(&detail),
                Some(&event),
            )
            .await?;
        if moved {
            expired.push(r.id);
        }
    }
    Ok(expired)
}

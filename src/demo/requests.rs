//! The demo's own data subject requests: one of each outcome a newcomer
//! should see (a sole owner refused, an export mailed to its subject, an
//! erasure, a rectification that a restore of an older backup keeps, and a
//! request whose identity was never checked expiring), and the restore that
//! shows the ledger at work.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use crate::context::Context;
use crate::dsr::{Intake, Submission};
use crate::error::{Error, Result};
use crate::store::{Correction, DsrState};

/// The name the demo's rectification gives the plain member.
pub const CORRECTED_NAME: &str = "Mira Member-Okafor";

/// Submits the tour's requests; each as `{id, kind, subject, intake, reason}`.
pub async fn submit_sample_requests(ctx: &Context) -> Result<Vec<Value>> {
    let correction = [Correction {
        table: "users".into(),
        column: "name".into(),
        value: CORRECTED_NAME.into(),
    }];
    let mut dsrs = Vec::new();
    for (kind, subject, corrections) in [
        ("erasure", super::SOLE_OWNER.to_string(), &[][..]),
        ("export", super::PLAIN_MEMBER.to_string(), &[][..]),
        (
            "rectification",
            super::PLAIN_MEMBER.to_string(),
            &correction[..],
        ),
        ("erasure", super::user_email(42), &[][..]),
    ] {
        let sub = Submission {
            kind,
            subject: &subject,
            jurisdiction: Some("gdpr"),
            source: "demo",
            idempotency_key: None,
            actor: "demo",
            org: None,
            for_org: None,
            unverified: false,
            corrections,
        };
        let (r, outcome) = match crate::dsr::submit(ctx, sub).await? {
            Intake::Accepted(r) | Intake::Replayed(r) => (r, "accepted"),
            Intake::Rejected { request, .. } => (request, "rejected"),
            Intake::KeyReused(r) => (r, "key_reused"),
        };
        dsrs.push(json!({"id": r.id, "kind": kind, "subject": subject, "intake": outcome, "reason": r.reason}));
    }
    Ok(dsrs)
}

/// An export asked for 61 days ago whose identity was never checked: with
/// the demo's `dsr.verify_within = "60d"`, the tour's dsr.process rejects it
/// as `identity_unverified`.
pub async fn unverified_past_its_window(ctx: &Context, now: DateTime<Utc>) -> Result<Value> {
    let subject = super::user_email(57);
    let received = now - Duration::days(61);
    let mut h = super::history::imported(
        &ctx.config.dsr,
        subject.clone(),
        ("export", "gdpr"),
        received,
    )?;
    h.request.state = DsrState::Received;
    h.request.detail = Some("awaiting the subject's identity verification".into());
    h.request.source = "demo".into();
    let r = crate::dsr::import(ctx, h, "demo").await?;
    Ok(
        json!({"id": r.id, "kind": "export", "subject": subject, "intake": "arrived unverified, 61 days ago",
              "reason": Value::Null}),
    )
}

/// Restores the tour's backup (taken before dsr.process ran) beside the app
/// database, as a restore after an incident would: the ledger applies the
/// rectification and the erasures again. Returns what it did and the plain
/// member's name in the restored copy.
pub async fn restore_older_backup(ctx: &Context, dir: &std::path::Path) -> Result<Value> {
    let backup = ctx
        .store
        .backups(false)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Failed("the tour made no backup".into()))?;
    let target = dir.join("restored-app.db");
    let url = format!("sqlite://{}", target.display());
    let mut report = crate::backup::restore(ctx, &backup.id, &url).await?;
    let pool = sqlx::SqlitePool::connect(&url).await?;
    let name: Option<String> = sqlx::query_scalar("SELECT name FROM users WHERE email = ?")
        .bind(super::PLAIN_MEMBER)
        .fetch_optional(&pool)
        .await?;
    pool.close().await;
    report["member_name"] = json!(name);
    report["backup_taken_at"] = json!(backup.created_at.to_rfc3339());
    Ok(report)
}

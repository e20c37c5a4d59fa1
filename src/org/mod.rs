//! Requests an organisation (a workspace) makes about all of its data: a
//! deletion recorded now and executed by `org.purge` after a cooling-off
//! period, cancellable until then; and the answer to "where is our data
//! still?", including which backups still hold it and until when.

mod backups;
mod deletion;
mod export;
mod purge;
mod reseal;

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

pub use backups::{backups_holding, HeldIn};
pub use export::{delete_exports, export, record_export, run_export};
pub use purge::{purge_job, PurgeParams};

use crate::appdb::AppDb;
use crate::config::DataMapEntry;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::org_requests::{CANCELLED, SCHEDULED};
use crate::store::{HoldScope, OrgRequest};

/// The longest cooling-off period a deletion may ask for.
pub const MAX_AFTER: Duration = Duration::from_secs(90 * 86_400);
/// How long an org's request may take (Art. 28(3)(g) names no term; 30 days
/// mirrors the subject requests').
pub const DEADLINE: Duration = Duration::from_secs(30 * 86_400);

pub struct DeletionAsk<'a> {
    pub org: &'a str,
    pub classes: &'a [String],
    pub reason: &'a str,
    pub after: Duration,
    pub contact: Option<&'a str>,
    pub actor: &'a str,
}

/// The data map's org-scoped tables of `classes` (every class when empty).
pub fn org_tables<'a>(ctx: &'a Context, classes: &[String]) -> Result<Vec<&'a DataMapEntry>> {
    let mapped: Vec<&DataMapEntry> = ctx
        .config
        .data_map
        .iter()
        .filter(|e| e.org.is_some())
        .collect();
    if mapped.is_empty() {
        return Err(Error::Usage(
            "no table of the data map has an `org` column: there is no org data to act on \
             (map each org-scoped table with `org = \"COLUMN\"`)"
                .into(),
        ));
    }
    for c in classes {
        if !mapped.iter().any(|e| &e.class == c) {
            let mut known: Vec<&str> = mapped.iter().map(|e| e.class.as_str()).collect();
            known.sort_unstable();
            known.dedup();
            return Err(Error::Usage(format!(
                "class `{c}` has no org-scoped table in the data map (org-scoped classes: {})",
                known.join(", ")
            )));
        }
    }
    Ok(mapped
        .into_iter()
        .filter(|e| classes.is_empty() || classes.contains(&e.class))
        .collect())
}

/// The org's active legal holds, as `#ID (reason)`.
pub async fn holds_on(ctx: &Context, org: &str) -> Result<Vec<String>> {
    Ok(ctx
        .store
        .holds(false)
        .await?
        .into_iter()
        .filter(|h| h.scope == HoldScope::Org && h.value == org)
        .map(|h| format!("#{} ({})", h.id, h.reason))
        .collect())
}

/// The org exists: in the orgs table when one is mapped, else in some org-scoped table.
pub(super) async fn check_org_exists(
    ctx: &Context,
    org: &str,
    tables: &[&DataMapEntry],
) -> Result<()> {
    let db = AppDb::connect(&ctx.config.database.url).await?;
    let orgs = ctx.config.app.as_ref().and_then(|a| a.orgs.as_ref());
    let found = db.org_known(orgs, tables, org).await;
    db.close().await;
    if found? {
        Ok(())
    } else {
        Err(Error::NotFound(format!(
            "org `{org}` is not in the application database"
        )))
    }
}

/// Records a deletion request; it runs once `after` has passed.
pub async fn request_deletion(ctx: &Context, ask: DeletionAsk<'_>) -> Result<OrgRequest> {
    let org = ask.org.trim();
    if org.is_empty() {
        return Err(Error::Usage("--org must name an org".into()));
    }
    if ask.reason.trim().is_empty() {
        return Err(Error::Usage(
            "--reason must say why (it goes into the certificate)".into(),
        ));
    }
    if ask.after > MAX_AFTER {
        return Err(Error::Usage(format!(
            "--after {}s is beyond the limit of {} days: a deletion that waits longer should be requested later",
            ask.after.as_secs(),
            MAX_AFTER.as_secs() / 86_400
        )));
    }
    if let Some(c) = ask.contact {
        crate::dsr::normalize_email(c)?;
    }
    let tables = org_tables(ctx, ask.classes)?;
    check_org_exists(ctx, org, &tables).await?;
    let holds = holds_on(ctx, org).await?;
    if !holds.is_empty() {
        return Err(Error::Refused(format!(
            "org {org} is under legal hold {}: release it first (`lethe hold release`)",
            holds.join(", ")
        )));
    }
    let now = Utc::now();
    let span = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let r = OrgRequest {
        id: 0,
        org: org.to_string(),
        kind: crate::store::org_requests::DELETION.into(),
        classes: json!(ask.classes),
        reason: ask.reason.trim().to_string(),
        contact: ask.contact.map(|c| c.trim().to_lowercase()),
        state: SCHEDULED.into(),
        requested_by: ask.actor.to_string(),
        requested_at: now,
        execute_after: now + span(ask.after),
        due_at: now + span(DEADLINE),
        completed_at: None,
        result: None,
    };
    let (actor, classes, after) = (ask.actor, r.classes.clone(), r.execute_after);
    let event = move |id: &i64| {
        crate::store::evidence(
            actor,
            "org.deletion_requested",
            &format!("org:{}", org),
            json!({"request": id, "classes": classes, "execute_after": after.to_rfc3339()}),
        )
    };
    ctx.store.org_request_insert(&r, &event).await
}

/// Cancels a scheduled request.
pub async fn cancel(ctx: &Context, id: i64, actor: &str) -> Result<OrgRequest> {
    let r = find(ctx, id).await?;
    if r.kind != crate::store::org_requests::DELETION {
        return Err(Error::Refused(format!(
            "org request {id} is an {}: only a scheduled deletion can be cancelled",
            r.kind
        )));
    }
    if r.state != SCHEDULED {
        return Err(Error::Refused(format!(
            "org request {id} is {}, not scheduled: it can no longer be cancelled",
            r.state
        )));
    }
    let event = crate::store::evidence(
        actor,
        "org.deletion_cancelled",
        &format!("org:{}", r.org),
        json!({"request": id}),
    );
    if !ctx
        .store
        .org_request_move(
            id,
            SCHEDULED,
            CANCELLED,
            &json!({"cancelled_by": actor}),
            &event,
        )
        .await?
    {
        return Err(Error::Refused(format!(
            "org request {id} started or ended meanwhile: not cancelled"
        )));
    }
    find(ctx, id).await
}

async fn find(ctx: &Context, id: i64) -> Result<OrgRequest> {
    ctx.store
        .org_requests(None)
        .await?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| Error::NotFound(format!("no org request {id} (see `lethe org status`)")))
}

/// The org's requests and the backups that still hold its data.
/// An org's requests and where its data still is (`org status`, `GET /v1/orgs/{id}`).
#[derive(Debug, serde::Serialize)]
pub struct OrgStatus {
    pub org: String,
    pub requests: Vec<OrgRequest>,
    /// When its last deletion completed.
    pub deleted_at: Option<chrono::DateTime<Utc>>,
    pub backups_holding_data: Vec<HeldIn>,
}

pub async fn status(ctx: &Context, org: &str) -> Result<OrgStatus> {
    let requests = ctx.store.org_requests(Some(org)).await?;
    let deleted_at = requests
        .iter()
        .filter(|r| r.kind == crate::store::org_requests::DELETION)
        .filter(|r| r.state == crate::store::org_requests::DONE)
        .filter_map(|r| r.completed_at)
        .max();
    let held = backups_holding(ctx, deleted_at.unwrap_or_else(Utc::now)).await?;
    Ok(OrgStatus {
        org: org.to_string(),
        requests,
        deleted_at,
        backups_holding_data: held,
    })
}

//! Data subject requests: intake (CLI and HTTP) with identity, sole-owner and
//! legal-hold checks; deadlines per jurisdiction with calendar-month
//! arithmetic; processing (export, erasure); the SLA report to the DPO.

mod decrypt;
mod deliver;
mod export;
mod files;
mod identity;
mod import;
mod jurisdiction;
mod ledger;
mod process;
mod reach;
mod reapply_orgs;
mod rectify;
mod report;
mod subject_copy;

pub use decrypt::{drain_opened, open_rows};
pub use identity::verify;
pub use import::import;
pub use jurisdiction::{Deadline, Jurisdiction, JURISDICTIONS};
pub use ledger::{reapply_ledger, LedgerReapply, ReapplyReport};
pub use process::{process_job, pseudonym_key, subject_pseudonym, ProcessParams};
pub use rectify::parse_set;
pub use report::{
    report_job, send as send_report, sla_report, text as report_text, BackupRpo, ReportOutput,
    ReportParams, SlaReport, BUCKET_COLORS, TREND_COLOR,
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::appdb::AppDb;
use crate::config::AppMapping;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::{DsrInsert, DsrRequest, DsrState, HoldScope, NewDsr};

/// What a request asks for. The store keeps the kind as text; a kind this
/// build does not know (written by a newer version) is an error, never
/// treated as some other kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DsrKind {
    Export,
    Erasure,
    Rectification,
}

impl DsrKind {
    pub fn parse(s: &str) -> Result<DsrKind> {
        match s {
            "export" => Ok(DsrKind::Export),
            "erasure" => Ok(DsrKind::Erasure),
            "rectification" => Ok(DsrKind::Rectification),
            other => Err(Error::Failed(format!(
                "request kind `{other}` is unknown to this version of Lethe (it knows export, erasure and rectification); \
                 upgrade this worker or reject the request"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sla {
    OnTrack,
    AtRisk,
    Overdue,
}

pub fn sla(ctx: &Context, r: &DsrRequest, now: DateTime<Utc>) -> Option<Sla> {
    if !r.state.is_open() {
        return None;
    }
    let left = r.due_at - now;
    Some(if left < chrono::Duration::zero() {
        Sla::Overdue
    } else if left.to_std().unwrap_or_default() < ctx.config.dsr.at_risk {
        Sla::AtRisk
    } else {
        Sla::OnTrack
    })
}

/// A request as the CLI and API show it: the stored row plus SLA state and time left.
pub fn view(ctx: &Context, r: &DsrRequest, now: DateTime<Utc>) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["sla"] = json!(sla(ctx, r, now));
    v["hours_left"] = json!(r.state.is_open().then(|| (r.due_at - now).num_hours()));
    v
}

pub struct Submission<'a> {
    pub kind: &'a str,
    pub subject: &'a str,
    pub jurisdiction: Option<&'a str>,
    pub source: &'a str,
    pub idempotency_key: Option<&'a str>,
    /// Who asks, as the audit log names them: `cli:USER`, `http:KEYNAME`.
    pub actor: &'a str,
    /// Only this org's workspace (a processor-scoped request: the org, as
    /// controller, asks); `None`: every org.
    pub org: Option<&'a str>,
    /// A caller that acts for one org may submit only for that org's members,
    /// and only about that org's workspace.
    pub for_org: Option<&'a str>,
    /// The subject's identity is still to be checked (`dsr verify`): the
    /// request waits in `received`.
    pub unverified: bool,
    /// What a rectification sets (empty for the other kinds).
    pub corrections: &'a [crate::store::Correction],
}

/// The outcome of intake. `Rejected` requests are recorded too (evidence).
pub enum Intake {
    Accepted(DsrRequest),
    Replayed(DsrRequest),
    /// The idempotency key was first used for this other request; nothing recorded.
    KeyReused(DsrRequest),
    Rejected {
        request: DsrRequest,
        blocking_orgs: Vec<String>,
    },
}

pub fn normalize_email(s: &str) -> Result<String> {
    let e = s.trim().to_lowercase();
    e.parse::<lettre::Address>()
        .map_err(|err| Error::Usage(format!("subject `{s}` is not an email address ({err})")))?;
    Ok(e)
}

/// Validates, checks the subject, and records the request (accepted or rejected).
pub async fn submit(ctx: &Context, s: Submission<'_>) -> Result<Intake> {
    let kind = match s.kind {
        "export" | "erasure" | "rectification" => s.kind,
        other => {
            return Err(Error::Usage(format!(
                "kind `{other}` must be export, erasure or rectification"
            )))
        }
    };
    if kind == "rectification" {
        rectify::check_map(&ctx.config, s.org.or(s.for_org), s.corrections)?;
    } else if !s.corrections.is_empty() {
        return Err(Error::Usage(format!(
            "--set (API: \"set\") is for rectification requests; a {kind} request sets nothing"
        )));
    }
    let subject = normalize_email(s.subject)?;
    // Evidence links a subject's events by pseudonym when the key is configured.
    let pseudonym = process::pseudonym_key(&ctx.config)
        .ok()
        .map(|k| subject_pseudonym(&k, &subject));
    let j = Jurisdiction::find(s.jurisdiction.unwrap_or("default"))?;
    let org = request_scope(s.org, s.for_org)?;
    let app = ctx.config.app.as_ref().ok_or_else(|| {
        Error::Usage("DSRs need [app] in lethe.toml: where subjects (and memberships) live".into())
    })?;
    let db = ctx.app_db_checked().await?;
    let now = ctx.store.now().await?;
    let due_at = j.deadline(kind, &ctx.config.dsr).after(now)?;

    if let Some(o) = org {
        check_scope(ctx, &db, o).await?;
    }
    if kind == "rectification" {
        rectify::check_schema(&ctx.config, &db, s.corrections).await?;
    }
    let subject_id = db.subject_id(app, &subject).await?;
    if let Some(org) = s.for_org {
        require_member(&db, app, org, subject_id.as_deref()).await?;
    }
    let check = intake_check(ctx, &db, (app, org), kind, &subject, subject_id).await?;
    let new = NewDsr {
        kind: kind.into(),
        subject: subject.clone(),
        org: org.map(str::to_string),
        jurisdiction: j.code.into(),
        state: match (check.reason, s.unverified) {
            (Some(_), _) => DsrState::Rejected,
            (None, true) => DsrState::Received,
            (None, false) => DsrState::Verified,
        },
        reason: check.reason.map(str::to_string),
        detail: check.detail,
        source: s.source.into(),
        idempotency_key: s.idempotency_key.map(str::to_string),
        request_hash: match s.idempotency_key {
            Some(_) => Some(request_hash(
                ctx,
                (kind, s.corrections),
                &subject,
                (org, s.unverified),
                j.code,
            )?),
            None => None,
        },
        received_at: now,
        due_at,
        corrections: s.corrections.to_vec(),
    };
    record_intake(ctx, new, s.actor, pseudonym, check.blocking).await
}

/// The org a request is limited to: the one asked for; for a caller that acts
/// for one org, always that org, so its requests never reach another org's data.
fn request_scope<'a>(asked: Option<&'a str>, for_org: Option<&'a str>) -> Result<Option<&'a str>> {
    let asked = asked.map(str::trim);
    match (asked, for_org) {
        (Some(""), _) => Err(Error::Usage(
            "org must name an org (leave it out for a request about every org)".into(),
        )),
        (Some(a), Some(f)) if a != f => Err(Error::Forbidden(format!(
            "this API key acts for org {f} only; it cannot ask about org {a}"
        ))),
        (a, f) => Ok(a.or(f)),
    }
}

/// A request limited to `org` needs org-scoped tables and an org that exists.
async fn check_scope(ctx: &Context, db: &AppDb, org: &str) -> Result<()> {
    let tables: Vec<&crate::config::DataMapEntry> = ctx
        .config
        .data_map
        .iter()
        .filter(|e| e.org.is_some())
        .collect();
    if tables.is_empty() {
        return Err(Error::Usage(
            "no table of the data map has an `org` column, so a request limited to an org \
             would reach nothing (map org-scoped tables with `org = \"COLUMN\"`, or leave out the org)"
                .into(),
        ));
    }
    let orgs = ctx.config.app.as_ref().and_then(|a| a.orgs.as_ref());
    if !db.org_known(orgs, &tables, org).await? {
        return Err(Error::NotFound(format!(
            "org `{org}` is not in the application database"
        )));
    }
    Ok(())
}

/// A caller scoped to `org` may submit only for the org's members.
async fn require_member(
    db: &AppDb,
    app: &AppMapping,
    org: &str,
    subject_id: Option<&str>,
) -> Result<()> {
    // The same answer whether the subject is unknown or in another org:
    // a caller scoped to one org learns nothing about the others.
    let member = match subject_id {
        Some(id) => db.is_member(app, org, id).await?,
        None => false,
    };
    if !member {
        return Err(Error::Forbidden(format!(
            "this API key acts for org {org} only, and the subject is not a member of it"
        )));
    }
    Ok(())
}

/// Why intake rejects a request (`reason` is `None` when it does not).
struct IntakeCheck {
    reason: Option<&'static str>,
    detail: Option<String>,
    /// Orgs the subject solely owns: an erasure would leave them ownerless.
    blocking: Vec<String>,
}

/// Rejects an unknown subject, and an erasure under a legal hold (of the
/// subject, or of the one org a processor-scoped request is limited to) or of
/// a sole owner of an org (of that org).
async fn intake_check(
    ctx: &Context,
    db: &AppDb,
    (app, org): (&AppMapping, Option<&str>),
    kind: &str,
    subject: &str,
    subject_id: Option<String>,
) -> Result<IntakeCheck> {
    let mut check = IntakeCheck {
        reason: None,
        detail: None,
        blocking: Vec::new(),
    };
    let Some(id) = subject_id else {
        check.reason = Some("not_found");
        check.detail = Some(format!(
            "no {} row has this {}",
            app.subjects.table, app.subjects.email
        ));
        return Ok(check);
    };
    let holds = ctx.store.holds(false).await?;
    if kind == "erasure" {
        let held = |h: &&crate::store::LegalHold| match h.scope {
            HoldScope::Subject => h.value == subject,
            HoldScope::Org => Some(h.value.as_str()) == org,
        };
        if let Some(h) = holds.iter().find(held) {
            check.reason = Some("legal_hold");
            check.detail = Some(format!("legal hold {}: {}", h.id, h.reason));
        } else {
            check.blocking = db.sole_owned_orgs(app, &id, org).await?;
            if !check.blocking.is_empty() {
                check.reason = Some("sole_owner");
                check.detail = Some(format!(
                    "the subject is the sole owner of org(s) {}; transfer ownership or close the org(s) first",
                    check.blocking.join(", ")
                ));
            }
        }
    }
    Ok(check)
}

/// Inserts the request with its evidence; a duplicate of an open request is
/// recorded as a rejected request of its own.
async fn record_intake(
    ctx: &Context,
    new: NewDsr,
    actor: &str,
    pseudonym: Option<String>,
    blocking: Vec<String>,
) -> Result<Intake> {
    // A created request commits with its evidence. The subject's email is
    // personal data: evidence names the request, not the person.
    let event = |r: &DsrRequest| {
        let action = if r.state == DsrState::Rejected {
            "dsr.rejected"
        } else {
            "dsr.received"
        };
        crate::store::evidence(
            actor,
            action,
            &format!("dsr:{}", r.id),
            json!({"kind": r.kind, "jurisdiction": r.jurisdiction, "due_at": r.due_at.to_rfc3339(),
                   "reason": r.reason, "source": r.source, "subject": pseudonym}),
        )
    };
    let outcome = match ctx.store.dsr_insert(&new, &event).await? {
        DsrInsert::Replayed(r) => return Ok(Intake::Replayed(r)),
        DsrInsert::KeyConflict(r) => return Ok(Intake::KeyReused(r)),
        DsrInsert::Duplicate(existing) => {
            let dup = NewDsr {
                state: DsrState::Rejected,
                reason: Some("duplicate".into()),
                detail: Some(if existing.state == DsrState::Received {
                    format!(
                        "request {} for this subject is still open, waiting for its identity check: \
                         verify that one (lethe dsr verify {} --method … --by …)",
                        existing.id, existing.id
                    )
                } else {
                    format!("request {} for this subject is still open", existing.id)
                }),
                idempotency_key: None,
                request_hash: None,
                ..new
            };
            match ctx.store.dsr_insert(&dup, &event).await? {
                DsrInsert::Created(r) => Intake::Rejected {
                    request: r,
                    blocking_orgs: vec![],
                },
                _ => {
                    return Err(Error::Failed(
                        "could not record the duplicate request".into(),
                    ))
                }
            }
        }
        DsrInsert::Created(r) if r.state == DsrState::Rejected => Intake::Rejected {
            request: r,
            blocking_orgs: blocking,
        },
        DsrInsert::Created(r) => Intake::Accepted(r),
    };
    Ok(outcome)
}

/// What an idempotency key is bound to: the canonical request (kind, normalized
/// subject, org, resolved jurisdiction), as `scheme:hex`. Keyed HMAC under the
/// pseudonym key when one is configured, so Lethe's store holds no plain hash
/// of an email an erasure later replaces by its pseudonym.
fn request_hash(
    ctx: &Context,
    (kind, corrections): (&str, &[crate::store::Correction]),
    subject: &str,
    (org, unverified): (Option<&str>, bool),
    jurisdiction: &str,
) -> Result<String> {
    use hmac::Mac;
    use sha2::Digest;
    let mut canonical = json!({"jurisdiction": jurisdiction, "kind": kind, "subject": subject});
    // Only when scoped: a request about every org hashes as it always did.
    if let Some(o) = org {
        canonical["org"] = json!(o);
    }
    if unverified {
        canonical["identity_verified"] = json!(false);
    }
    if !corrections.is_empty() {
        let mut set: Vec<(String, &str)> = corrections
            .iter()
            .map(|c| (format!("{}.{}", c.table, c.column), c.value.as_str()))
            .collect();
        set.sort();
        canonical["set"] = json!(set);
    }
    let canonical = canonical.to_string();
    // An unreadable key file is the server's problem (500 on the API), not the caller's.
    let key = ctx
        .config
        .dsr
        .pseudonym_key
        .load()
        .map_err(|m| Error::Failed(format!("pseudonym key: {m}")))?;
    Ok(match key {
        Some(k) => {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(k.expose().as_bytes())
                .map_err(|e| Error::Failed(format!("pseudonym key: {e}")))?;
            mac.update(canonical.as_bytes());
            format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
        }
        None => format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
        ),
    })
}

/// `dsr extend ID --days N --reason TEXT [--notified-at T]`. GDPR Art. 12(3)
/// and CCPA §1798.130 allow an extension only when the subject is told within
/// the deadline in force, so an extension is refused (exit 3) once that
/// deadline has passed: a missed deadline stays missed, and since no later
/// step can move a passed deadline, "completed after `due_at`" is exactly
/// "ever late" for the reports.
pub async fn extend(
    ctx: &Context,
    id: i64,
    days: u32,
    reason: &str,
    notified_at: Option<&str>,
) -> Result<DsrRequest> {
    if reason.trim().is_empty() {
        return Err(Error::Usage(
            "--reason is required: the subject must be told why".into(),
        ));
    }
    if !(1..=3650).contains(&days) {
        return Err(Error::Usage(format!(
            "--days must be between 1 and 3650 (got {days})"
        )));
    }
    let r = ctx
        .store
        .dsr_get(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no request {id}")))?;
    if !r.state.is_open() {
        return Err(Error::Usage(format!(
            "request {id} is {}; only open requests can be extended",
            r.state.as_str()
        )));
    }
    let now = ctx.store.now().await?;
    let notified = subject_notified_at(&r, now, notified_at)?;
    let new_due = within_extension_limit(ctx, &r, days)?;
    let ext = crate::store::DsrExtension {
        from_due_at: r.due_at,
        due_at: new_due,
        days: i32::try_from(days).unwrap_or(i32::MAX),
        reason: reason.to_string(),
        extended_at: now,
        notified_at: notified,
    };
    let event = crate::store::evidence(
        &crate::audit::actor_cli(),
        "dsr.extended",
        &format!("dsr:{id}"),
        json!({"days": days, "from_due_at": r.due_at.to_rfc3339(), "due_at": new_due.to_rfc3339(),
               "reason": reason, "subject_notified_at": notified.to_rfc3339()}),
    );
    if !ctx.store.dsr_extend(id, &ext, &event).await? {
        return Err(Error::Refused(format!(
            "request {id} changed meanwhile (closed, extended, or its deadline passed); nothing extended"
        )));
    }
    ctx.store
        .dsr_get(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no request {id}")))
}

/// When the subject was told of the extension (`--notified-at`, else now):
/// refused (exit 3) unless both now and that time are within the deadline in
/// force, since the law wants the subject told before it.
fn subject_notified_at(
    r: &DsrRequest,
    now: DateTime<Utc>,
    notified_at: Option<&str>,
) -> Result<DateTime<Utc>> {
    let id = r.id;
    let due = r.due_at.format("%Y-%m-%d %H:%M UTC");
    if now > r.due_at {
        return Err(Error::Refused(format!(
            "request {id}'s deadline in force ({due}) has passed; an extension must be decided and the \
             subject told before it, so the request stays overdue"
        )));
    }
    let notified = match notified_at {
        None => now,
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| {
                Error::Usage(format!(
                    "--notified-at `{t}` is not an RFC 3339 time such as 2026-03-01T09:00:00Z ({e})"
                ))
            })?
            .with_timezone(&Utc),
    };
    if notified > now || notified < r.received_at {
        return Err(Error::Usage(format!(
            "--notified-at must lie between the request's receipt ({}) and now",
            r.received_at.format("%Y-%m-%d %H:%M UTC")
        )));
    }
    if notified > r.due_at {
        return Err(Error::Refused(format!(
            "the subject was told after the deadline in force ({due}); the extension is not valid"
        )));
    }
    Ok(notified)
}

/// The new deadline `days` later, refused (exit 3) past the jurisdiction's
/// limit, or when its law allows no (further) extension.
fn within_extension_limit(ctx: &Context, r: &DsrRequest, days: u32) -> Result<DateTime<Utc>> {
    let j = Jurisdiction::find(&r.jurisdiction)?;
    let max = j
        .extension_limit(&r.kind, r.received_at, r.extended_days, &ctx.config.dsr)
        .map_err(Error::Refused)?;
    let new_due = r
        .due_at
        .checked_add_days(chrono::Days::new(u64::from(days)))
        .ok_or_else(|| Error::Usage(format!("--days {days} is out of range")))?;
    if new_due > max {
        return Err(Error::Refused(format!(
            "{} allows extending to {} at the latest ({}); {days} more days would reach {}",
            j.name,
            max.format("%Y-%m-%d %H:%M UTC"),
            j.extension_text,
            new_due.format("%Y-%m-%d %H:%M UTC")
        )));
    }
    Ok(new_due)
}

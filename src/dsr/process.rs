//! `dsr.process`: queued requests in deadline order. Export: every mapped row
//! of the subject as JSON per table in one tar, zstd + age, uploaded, SHA-256
//! recorded, an expiring link mailed to the DPO. Erasure: one transaction on
//! the application database per the data map, evidence in the audit chain,
//! and the subject's keyed hash in the erasure ledger.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::appdb::{AppDb, EraseAction, EraseOutcome, EraseStep, NewValue, OrgScope};
use crate::config::{AnonymizeRule, AppMapping, Config, Erasure, Secret};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::runner::{in_range, JobContext, JobParams};
use crate::store::{DsrRequest, DsrState};

use super::reach::{confirm, held, reach, Reach};
use super::DsrKind;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessParams {
    /// At most this many requests per run.
    #[serde(default = "default_limit")]
    pub limit: u32,
}

impl JobParams for ProcessParams {
    fn validate(&self) -> Result<(), String> {
        in_range("limit", self.limit.into(), 1, 1_000_000)
    }
}

fn default_limit() -> u32 {
    100
}

pub fn pseudonym_key(config: &Config) -> Result<Secret> {
    let src = &config.dsr.pseudonym_key;
    src.load().map_err(Error::Usage)?.ok_or_else(|| {
        Error::Usage(format!(
            "erasures and evidence about a subject need the pseudonym key (keyed HMAC) in {}; \
             set it (the same key on every replica, kept for as long as the erasure ledger)",
            src.describe()
        ))
    })
}

pub(super) fn keyed(key: &Secret, what: &str) -> String {
    use hmac::Mac;
    let mut m = crate::audit::signer(key.expose().as_bytes());
    m.update(what.as_bytes());
    crate::audit::finish_hex(m)
}

/// The ledger's key for a subject: a keyed hash of the email, never the email.
pub fn ledger_key(key: &Secret, email: &str) -> String {
    keyed(key, &format!("ledger:{}", email.to_lowercase()))
}

/// The one-org ledger's key for a subject: a keyed hash of their id, which
/// (unlike the email) a subject who is still a user keeps.
pub(super) fn ledger_id_key(key: &Secret, subject_id: &str) -> String {
    keyed(key, &format!("ledger-subject-id:{subject_id}"))
}

/// How Lethe's own rows and evidence name a subject: a keyed hash of the
/// email, stable per subject (so events about one person can be linked by
/// someone who holds the key) and never the email itself.
pub fn subject_pseudonym(key: &Secret, email: &str) -> String {
    let h = keyed(key, &format!("subject-email:{}", email.to_lowercase()));
    format!("pseudonym:{}", &h[..24])
}

/// What erasing one subject does: the steps (children before the subject's
/// own row), and the tables kept with their legal basis.
pub(super) struct ErasePlan {
    pub(super) steps: Vec<EraseStep>,
    pub(super) retained: BTreeMap<String, String>,
}

impl ErasePlan {
    /// The org-scoped tables only: the account and other shared rows stay.
    fn narrow_to_org_tables(&mut self, config: &Config) {
        let org_scoped = |t: &str| {
            config
                .data_map
                .iter()
                .any(|e| e.table == t && e.org.is_some())
        };
        self.steps.retain(|s| s.org.is_some());
        self.retained.retain(|t, _| org_scoped(t));
    }
}

pub(super) fn erase_plan(config: &Config, key: &Secret, subject_id: &str) -> ErasePlan {
    let pseudonym = format!(
        "erased-{}",
        &keyed(key, &format!("subject:{subject_id}"))[..20]
    );
    let mut plan = ErasePlan {
        steps: Vec::new(),
        retained: BTreeMap::new(),
    };
    for e in config.data_map.iter().rev() {
        let Some(subject) = &e.subject else { continue };
        let action = match &e.erasure {
            Erasure::Delete => EraseAction::Delete,
            Erasure::Anonymize(cols) => EraseAction::Update(
                cols.iter()
                    .map(|(c, r)| {
                        let v = match r {
                            AnonymizeRule::Null => NewValue::Null,
                            AnonymizeRule::Fixed(v) => NewValue::Text(v.clone()),
                            AnonymizeRule::Hmac => NewValue::Text(pseudonym.clone()),
                        };
                        (c.clone(), v)
                    })
                    .collect(),
            ),
            Erasure::Retain { legal_basis } => {
                plan.retained.insert(e.table.clone(), legal_basis.clone());
                continue;
            }
        };
        plan.steps.push(EraseStep {
            table: e.table.clone(),
            subject: subject.clone(),
            org: e.org.clone(),
            action,
        });
    }
    plan
}

fn app_of(ctx: &Context) -> Result<&AppMapping> {
    ctx.config
        .app
        .as_ref()
        .ok_or_else(|| Error::Usage("DSRs need [app]".into()))
}

/// The `[app]` mapping and the request's subject id, or the `not_found`
/// rejection when the subject no longer exists.
pub(super) async fn subject_of<'a>(
    ctx: &'a Context,
    db: &AppDb,
    r: &DsrRequest,
) -> Result<std::result::Result<(&'a AppMapping, String), (String, String)>> {
    let app = app_of(ctx)?;
    Ok(match db.subject_id(app, &r.subject).await? {
        Some(id) => Ok((app, id)),
        None => Err(("not_found".into(), "the subject no longer exists".into())),
    })
}

async fn erase(
    ctx: &Context,
    db: &AppDb,
    r: &DsrRequest,
    actor: &str,
    fence: &Fence,
) -> Result<std::result::Result<Value, (String, String)>> {
    let config = ctx.config.as_ref();
    let key = super::ledger::checked_key(ctx).await?;
    // Files an interrupted attempt of this request left checkpointed.
    let earlier = super::files::finish(ctx, db, r.id, fence).await?;
    let (app, subject_id) = match subject_of(ctx, db, r).await? {
        Ok(found) => found,
        // Absent from the application: an earlier attempt of this request
        // committed the erasure but not the steps after it (store or object
        // store down, lease lost), or the application deleted them. Either way
        // they asked to be erased: finish the record, so no restore brings them back.
        Err(_) if !r.subject.contains('@') => {
            // Forgotten: another request erased the whole subject first.
            return Ok(Ok(json!({"subject_absent": true, "superseded": true,
                                "whole_subject": true, "files": earlier})));
        }
        Err(_) => {
            let done = json!({"subject_absent": true, "files": earlier});
            return after_erasure(ctx, r, actor, &key, done).await.map(Ok);
        }
    };
    let reach = reach(config, db, app, r, Some(&subject_id)).await?;
    let holds = super::ledger::HoldsInForce::load(ctx).await?;
    if let Some(refused) = held(&holds, r) {
        return Ok(Err(refused));
    }
    let held_orgs = holds.held_orgs();
    let scope = match reach {
        Reach::Org(o) => OrgScope::Only(o),
        Reach::Subject => OrgScope::AllExcept(&held_orgs),
    };
    let mut plan = erase_plan(config, &key, &subject_id);
    if scope.only().is_some() {
        plan.narrow_to_org_tables(config);
    }
    let ErasePlan {
        mut steps,
        retained,
    } = plan;
    super::decrypt::seal_anonymised(ctx, db, &subject_id, &mut steps).await?;
    super::files::pend(ctx, db, (r.id, &subject_id), &steps, scope).await?;
    confirm(config, db, app, r, (&subject_id, reach)).await?;
    let outcome = db
        .erase_subject(app, &subject_id, &steps, scope, fence)
        .await?;
    // After the commit (or the veto: then every file is still referenced, none goes).
    let files = super::files::finish(ctx, db, r.id, fence).await?;
    match outcome {
        EraseOutcome::SoleOwner(orgs) => Ok(Err((
            "sole_owner".into(),
            format!(
                "the subject became the sole owner of org(s) {} before erasure",
                orgs.join(", ")
            ),
        ))),
        EraseOutcome::Done {
            changed,
            kept_for_holds,
        } => {
            let dropped = forget_corrections(ctx, &key, &subject_id, reach).await?;
            let done = json!({"rows_changed": changed, "kept_for_legal_holds": kept_for_holds,
                              "retained_with_legal_basis": retained, "files": files,
                              "corrections_dropped": dropped});
            match reach {
                Reach::Subject => after_erasure(ctx, r, actor, &key, done).await,
                Reach::Org(org) => {
                    let k = ledger_id_key(&key, &subject_id);
                    after_org_erasure(ctx, r, actor, (&k, org), done).await
                }
            }
            .map(Ok)
        }
    }
}

/// An erased subject's corrections (in the org erased, or all): personal
/// data, and moot once they are erased.
async fn forget_corrections(
    ctx: &Context,
    key: &Secret,
    subject_id: &str,
    reach: Reach<'_>,
) -> Result<u64> {
    let org = match reach {
        Reach::Org(o) => Some(o),
        Reach::Subject => None,
    };
    ctx.store
        .corrections_forget(&ledger_id_key(key, subject_id), org)
        .await
}

/// What follows an erasure's commit in the application database (or finds it
/// already done): the subject's export archives deleted (a whole-subject
/// erasure's), then the ledger entry committed with the evidence. Each step is
/// idempotent, so a retry after a crash between them completes the record.
async fn after_erasure(
    ctx: &Context,
    r: &DsrRequest,
    actor: &str,
    key: &Secret,
    done: Value,
) -> Result<Value> {
    let mut evidence = json!({"request": r.id, "subject": subject_pseudonym(key, &r.subject),
                              "whole_subject": true, "org": r.org});
    // Their export archives hold every erased row: they go too, now.
    let exports = ctx
        .store
        .dsr_exports_to_delete(ctx.store.now().await?, Some(&r.subject))
        .await?;
    let (exports_deleted, exports_failed) =
        delete_exports(ctx, actor, exports, "subject erased").await?;
    evidence["exports_deleted"] = json!(exports_deleted);
    if exports_failed > 0 {
        // Still tracked: the expiry sweep of a later run deletes them.
        evidence["exports_not_deleted"] = json!(exports_failed);
    }
    if let (Some(e), Some(d)) = (evidence.as_object_mut(), done.as_object()) {
        e.extend(d.clone());
    }
    let event = crate::store::evidence(
        actor,
        "dsr.erased",
        &format!("dsr:{}", r.id),
        evidence.clone(),
    );
    // The subject's corrections go too (found by email: after a crash the id may be gone).
    ctx.store
        .corrections_forget_email(&ledger_key(key, &r.subject))
        .await?;
    ctx.store
        .ledger_add(&ledger_key(key, &r.subject), r.id, &event)
        .await?;
    Ok(evidence)
}

/// What follows an erasure in one org's rows: the one-org ledger entry (by
/// the subject's id key), committed with the evidence; idempotent.
async fn after_org_erasure(
    ctx: &Context,
    r: &DsrRequest,
    actor: &str,
    (id_key, org): (&str, &str),
    done: Value,
) -> Result<Value> {
    let key = super::ledger::checked_key(ctx).await?;
    let mut evidence = json!({"request": r.id, "subject": subject_pseudonym(&key, &r.subject),
                              "whole_subject": false, "org": org});
    if let (Some(e), Some(d)) = (evidence.as_object_mut(), done.as_object()) {
        e.extend(d.clone());
    }
    let target = format!("dsr:{}", r.id);
    let event = crate::store::evidence(actor, "dsr.erased", &target, evidence.clone());
    ctx.store.ledger_add_org(id_key, org, r.id, &event).await?;
    Ok(evidence)
}

pub async fn process_job(jc: &JobContext, p: ProcessParams) -> Result<Value> {
    let ctx = jc.ctx.as_ref();
    let due = ctx.store.dsr_due(p.limit.max(1), jc.run.id).await?;
    if jc.dry_run {
        let ids: Vec<i64> = due.iter().map(|r| r.id).collect();
        return Ok(json!({"dry_run": true, "would_process": ids}));
    }
    // First: nothing below (schema drift, a bad request) holds these up.
    let (exports_expired, exports_stuck, identity_unverified) = expire(ctx, &jc.actor).await?;
    let db = ctx.app_db().await?;
    // A data map that does not fit the schema would erase nothing and call it done.
    crate::appdb::preflight(&ctx.config, &db).await?;
    forget_erased(ctx).await?;
    let (mut completed, mut rejected, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    let mut took_ms: Vec<f64> = Vec::new();
    let bar = crate::progress::bar(
        "dsr requests",
        Some(due.len() as u64),
        crate::progress::Unit::Items,
    );
    for r in due {
        bar.inc(1);
        let started = std::time::Instant::now();
        if !ctx.store.dsr_claim(r.id, jc.run.id).await? {
            continue; // another worker took it
        }
        let kind = DsrKind::parse(&r.kind);
        let outcome = match &kind {
            Ok(DsrKind::Erasure) => erase(ctx, &db, &r, &jc.actor, &jc.fence).await,
            Ok(DsrKind::Export) => super::export::export(ctx, &db, &r, &jc.actor, &jc.fence).await,
            Ok(DsrKind::Rectification) => {
                super::rectify::rectify(ctx, &db, &r, &jc.actor, &jc.fence).await
            }
            Err(e) => Err(Error::Failed(e.to_string())),
        };
        let erasure = matches!(kind, Ok(DsrKind::Erasure));
        match record_outcome(jc, &r, erasure, outcome).await? {
            Recorded::Completed => {
                // Both leave old values in free pages until compacted.
                let overwrote = erasure || matches!(kind, Ok(DsrKind::Rectification));
                completed.push((r.id, overwrote));
                took_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            Recorded::Rejected(v) => rejected.push(v),
            Recorded::Failed(v) => failed.push(v),
        }
    }
    let compacted = if completed.iter().any(|c| c.1) {
        Some(compact(&db).await)
    } else {
        None
    };
    let completed: Vec<i64> = completed.into_iter().map(|c| c.0).collect();
    if !failed.is_empty() {
        return Err(Error::Failed(format!(
            "{} request(s) failed and will be retried: {}",
            failed.len(),
            Value::from(failed)
        )));
    }
    if exports_stuck > 0 {
        return Err(Error::Failed(format!(
            "{exports_stuck} expired export archive(s) could not be deleted from the object store \
             (see the log); they stay tracked and the next run tries again"
        )));
    }
    took_ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        took_ms
            .get(((p / 100.0) * took_ms.len() as f64).ceil().max(1.0) as usize - 1)
            .map(|v| (v * 10.0).round() / 10.0)
    };
    Ok(
        json!({"completed": completed, "rejected": rejected, "exports_expired": exports_expired,
               "identity_unverified": identity_unverified,
               "compacted": compacted,
              "per_request_ms": {"median": pct(50.0), "p95": pct(95.0), "max": took_ms.last()}}),
    )
}

/// Export archives whose link expired, deleted (deleted, not deleted), and
/// requests left unverified too long, rejected.
async fn expire(ctx: &Context, actor: &str) -> Result<(usize, usize, Vec<i64>)> {
    let expired = ctx
        .store
        .dsr_exports_to_delete(ctx.store.now().await?, None)
        .await?;
    let (deleted, stuck) = delete_exports(ctx, actor, expired, "link expired").await?;
    let unverified = super::identity::expire_unverified(ctx, actor).await?;
    ctx.store.corrections_of_rejected_drop().await?;
    Ok((deleted, stuck, unverified))
}

/// What one request's attempt came to, as recorded in the store.
enum Recorded {
    Completed,
    Rejected(Value),
    Failed(Value),
}

/// Moves a request to completed, rejected or failed after its attempt (an
/// erasure's subject is then forgotten in Lethe's own rows).
async fn record_outcome(
    jc: &JobContext,
    r: &DsrRequest,
    erasure: bool,
    outcome: Result<std::result::Result<Value, (String, String)>>,
) -> Result<Recorded> {
    let ctx = jc.ctx.as_ref();
    match outcome {
        Ok(Ok(result)) => {
            ctx.store
                .dsr_transition(
                    r.id,
                    &[DsrState::InProgress],
                    DsrState::Completed,
                    None,
                    Some(&result),
                    None,
                )
                .await?;
            // A subject erased in one org only is still a user: their requests keep the email.
            if erasure && result["whole_subject"] != json!(false) && r.subject.contains('@') {
                forget(ctx, &r.subject).await?;
            }
            Ok(Recorded::Completed)
        }
        Ok(Err((reason, detail))) => {
            let v = json!({"detail": detail});
            let event = crate::store::evidence(
                &jc.actor,
                "dsr.rejected",
                &format!("dsr:{}", r.id),
                json!({"reason": reason}),
            );
            ctx.store
                .dsr_transition(
                    r.id,
                    &[DsrState::InProgress],
                    DsrState::Rejected,
                    Some(&reason),
                    Some(&v),
                    Some(&event),
                )
                .await?;
            // A rejected rectification sets nothing: its values go now.
            ctx.store.corrections_of_rejected_drop().await?;
            Ok(Recorded::Rejected(json!({"id": r.id, "reason": reason})))
        }
        Err(e) => {
            // The application's transaction rolled back, or it committed and the
            // retry completes the record (`after_erasure` is idempotent).
            let v = json!({"error": e.to_string()});
            ctx.store
                .dsr_transition(
                    r.id,
                    &[DsrState::InProgress],
                    DsrState::Failed,
                    None,
                    Some(&v),
                    None,
                )
                .await?;
            Ok(Recorded::Failed(
                json!({"id": r.id, "error": e.to_string()}),
            ))
        }
    }
}

/// Rebuilds a SQLite application database after erasures and rectifications
/// (the old values linger in free pages until then); the changes are done
/// either way, a busy database only delays this.
async fn compact(db: &AppDb) -> bool {
    match db.compact_after_erasure().await {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(error = %e, "could not rebuild the SQLite application database after erasures; the next run tries again");
            false
        }
    }
}

/// Deletes export archives from the object store, each with evidence.
/// Returns (deleted, not deleted): an archive that cannot be deleted now stays
/// tracked and is tried again by the next run, without holding up the others.
async fn delete_exports(
    ctx: &Context,
    actor: &str,
    exports: Vec<(i64, String, Option<String>)>,
    why: &str,
) -> Result<(usize, usize)> {
    if exports.is_empty() {
        return Ok((0, 0));
    }
    let store = ctx.object_store().await?;
    let (mut deleted, mut failed) = (0, 0);
    for (id, object, subject_copy) in &exports {
        let mut gone = Ok(());
        for key in std::iter::once(object).chain(subject_copy) {
            gone = gone.and(store.delete(key).await);
        }
        if let Err(e) = gone {
            tracing::warn!(request = id, error = %e, "export archive not deleted; the next run tries again");
            failed += 1;
            continue;
        }
        let event = crate::store::evidence(
            actor,
            "dsr.export_deleted",
            &format!("dsr:{id}"),
            json!({"request": id, "object": object, "subject_copy": subject_copy, "reason": why}),
        );
        ctx.store.dsr_export_deleted(*id, &event).await?;
        deleted += 1;
    }
    Ok((deleted, failed))
}

/// Replaces an erased subject's email with its pseudonym in Lethe's own rows.
async fn forget(ctx: &Context, email: &str) -> Result<()> {
    // The ledger's key: a wrong one would write pseudonyms nobody can match.
    let key = super::ledger::checked_key(ctx).await?;
    ctx.store
        .dsr_forget_subject(email, &subject_pseudonym(&key, email))
        .await?;
    Ok(())
}

/// Finishes `forget` for erasures completed by a run that crashed before it.
async fn forget_erased(ctx: &Context) -> Result<()> {
    for email in ctx.store.dsr_unforgotten_erasures().await? {
        forget(ctx, &email).await?;
    }
    Ok(())
}

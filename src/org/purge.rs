//! `org.purge`: executes org deletions whose cooling-off has ended. A
//! request moves to `running` first (no cancel from then on); its rows go
//! in bounded batches (`deletion.rs`); then the tables are counted again and
//! must hold no row of the org but held people's, or the run fails and the
//! request stays running for the next run. Only then is the request closed,
//! with a signed certificate of deletion (evidence in the audit chain,
//! mailed to the DPO) that names the backups still holding the org's data
//! and when each expires. One org that fails does not hold up the others.

use std::collections::BTreeMap;

use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use super::deletion::{delete_rows, scope};
use super::{backups_holding, holds_on, org_tables, HeldIn};
use crate::appdb::{AppDb, Scope};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::notify::{self, Block, Message, Role, Row, Table, Tone};
use crate::objstore::Tail;
use crate::runner::{JobContext, JobParams};
use crate::store::org_requests::{DELETION, DONE, RUNNING, SCHEDULED};
use crate::store::OrgRequest;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeParams {
    /// Rows per delete statement.
    #[serde(default = "default_batch")]
    pub batch_size: u32,
}

fn default_batch() -> u32 {
    5_000
}

impl Default for PurgeParams {
    fn default() -> Self {
        PurgeParams {
            batch_size: default_batch(),
        }
    }
}

impl JobParams for PurgeParams {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return Err("batch_size must be between 1 and 100000".into());
        }
        Ok(())
    }
}

pub async fn purge_job(jc: &JobContext, p: PurgeParams) -> Result<Value> {
    let ctx = &jc.ctx;
    let mut due = ctx.store.org_requests_due(Utc::now()).await?;
    // Exports are run by whoever asked for them; this job only ever deletes.
    due.retain(|r| r.kind == DELETION);
    if jc.dry_run {
        let ids: Vec<Value> = due
            .iter()
            .map(|r| json!({"request": r.id, "org": r.org, "state": r.state}))
            .collect();
        return Ok(json!({"dry_run": true, "would_delete": ids}));
    }
    // Export archives whose link expired go, as the subjects' exports do.
    let (exports_deleted, _retried_next_run) = super::delete_exports(ctx, &jc.actor, None).await?;
    let db = AppDb::connect(&ctx.config.database.url).await?;
    let (mut done, mut held, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for r in &due {
        let holds = holds_on(ctx, &r.org).await?;
        if !holds.is_empty() {
            // A hold placed during the cooling-off (or mid-way) stops the deletion; it waits.
            tracing::warn!(request = r.id, org = %r.org, holds = %holds.join(", "), "org under legal hold: not deleted");
            held.push(json!({"request": r.id, "org": r.org, "holds": holds}));
            continue;
        }
        if r.state == SCHEDULED && !start(jc, r).await? {
            continue; // cancelled meanwhile
        }
        match delete_org(jc, &db, r, p.batch_size).await {
            Ok(certificate) => done.push(certificate),
            Err(e @ Error::LeaseLost(_)) => return Err(e),
            Err(Error::Refused(why)) => {
                held.push(json!({"request": r.id, "org": r.org, "holds": [why]}))
            }
            // One org that fails does not hold up the others; the run still fails below.
            Err(e) => failed.push(format!("org {} (request {}): {e}", r.org, r.id)),
        }
    }
    db.close().await;
    if !failed.is_empty() {
        return Err(Error::Failed(format!(
            "{} of {} org deletion(s) failed and stay running for the next run: {}",
            failed.len(),
            due.len(),
            failed.join("; ")
        )));
    }
    Ok(json!({"deleted": done, "held": held, "exports_deleted": exports_deleted}))
}

/// Moves a scheduled deletion to running (no cancel from here on); false
/// when it was cancelled first.
async fn start(jc: &JobContext, r: &OrgRequest) -> Result<bool> {
    let event = crate::store::evidence(
        &jc.actor,
        "org.deletion_started",
        &format!("org:{}", r.org),
        json!({"request": r.id}),
    );
    jc.ctx
        .store
        .org_request_move(r.id, SCHEDULED, RUNNING, &json!({}), &event)
        .await
}

/// Deletes one org's rows, checks none is left, closes the request and mails the certificate.
async fn delete_org(jc: &JobContext, db: &AppDb, r: &OrgRequest, batch: u32) -> Result<Value> {
    let ctx = &jc.ctx;
    let classes: Vec<String> = serde_json::from_value(r.classes.clone()).unwrap_or_default();
    let tables = org_tables(ctx, &classes)?;
    let progress = delete_rows(jc, db, r, &tables, batch).await?;
    let (counts, moved) = (progress.counts(&tables), progress.moved);
    let mut left = Vec::new();
    let mut kept = BTreeMap::new();
    for e in &tables {
        let n = db.count(&scope(e, &r.org, &progress.held_subjects)).await?;
        if n > 0 {
            left.push(format!("{} still has {n} rows", e.table));
        }
        let held = db.count(&Scope::of_org(e, &r.org)).await?;
        if held > 0 {
            kept.insert(e.table.clone(), held);
        }
    }
    if !left.is_empty() {
        return Err(Error::Failed(format!(
            "org {} deletion incomplete (request {} stays running): {}",
            r.org,
            r.id,
            left.join("; ")
        )));
    }
    let files = delete_files(jc, db, r).await?;
    // Its export archives hold copies of the rows that just went.
    let (exports, not_deleted) = super::delete_exports(ctx, &jc.actor, Some(&r.org)).await?;
    if not_deleted > 0 {
        return Err(Error::Failed(format!(
            "{not_deleted} export archive(s) of org {} could not be deleted (request {} stays running; the next run tries again)",
            r.org, r.id
        )));
    }
    // With every class gone nothing needs the org's keys: shred them, so the
    // encrypted values in backups are unreadable from now on. Rows kept for
    // a hold still need them.
    let keys = if classes.is_empty() && kept.is_empty() {
        crate::keys::shred_org_now(ctx, &r.org, &jc.actor).await?
    } else {
        None
    };
    let deleted_at = Utc::now();
    let backups = backups_holding(ctx, deleted_at).await?;
    let certificate = json!({
        "request": r.id, "org": r.org, "reason": r.reason, "classes": r.classes,
        "requested_by": r.requested_by, "requested_at": r.requested_at,
        "deleted_at": deleted_at, "rows": counts, "files": files, "accounts_moved": moved,
        "rows_kept_for_holds": kept, "keys_shredded": keys, "exports_deleted": exports,
        "backups_holding_data": backups,
    });
    let certificate = signed(ctx, certificate)?;
    let event = crate::store::evidence(
        &jc.actor,
        "org.deleted",
        &format!("org:{}", r.org),
        certificate.clone(),
    );
    if !ctx
        .store
        .org_request_move(r.id, RUNNING, DONE, &certificate, &event)
        .await?
    {
        return Err(Error::Failed(format!(
            "org request {} was no longer running when its deletion ended",
            r.id
        )));
    }
    let mail = certificate_mail(ctx, r, &counts, moved, keys.as_ref(), &backups);
    // The certificate goes to the DPO and to whoever asked for the org.
    let contact: Vec<String> = r.contact.iter().cloned().collect();
    notify::enqueue_to(ctx, mail, &contact).await?;
    Ok(certificate)
}

/// The certificate with an HMAC-SHA256 under the audit signing key (when
/// one is configured) over its JSON with sorted keys, without the signature:
/// whoever holds the key can show the certificate was not altered.
fn signed(ctx: &Context, mut certificate: Value) -> Result<Value> {
    let Some(key) = ctx.config.audit.signing_key.load().map_err(Error::Usage)? else {
        return Ok(certificate);
    };
    let text =
        serde_json::to_string(&certificate).map_err(|e| Error::json("the certificate", e))?;
    let mut mac = crate::audit::signer(key.expose().as_bytes());
    hmac::Mac::update(&mut mac, text.as_bytes());
    certificate["signature"] = json!({
        "alg": "HMAC-SHA256", "key": "the audit signing key",
        "of": "this certificate as JSON with sorted keys and no `signature`",
        "hmac": crate::audit::finish_hex(mac),
    });
    Ok(certificate)
}

/// Deletes the request's pending files that no row references any more
/// (those of a crashed attempt too); counts them.
async fn delete_files(jc: &JobContext, db: &AppDb, r: &OrgRequest) -> Result<Value> {
    let origin = format!("org:{}", r.id);
    let tallies =
        crate::retention::objects::finish(&jc.ctx, db, &origin, &jc.fence, Tail::Send).await?;
    Ok(crate::retention::objects::totals(&tallies))
}

fn plain_row(cells: Vec<String>) -> Row {
    Row {
        cells,
        tone: Tone::Plain,
        commands: vec![],
    }
}

fn certificate_mail(
    ctx: &Context,
    r: &OrgRequest,
    counts: &BTreeMap<String, i64>,
    moved: u64,
    keys: Option<&Value>,
    backups: &[HeldIn],
) -> Message {
    let zone = notify::zone(ctx);
    let total: i64 = counts.values().sum();
    let mut blocks = vec![
        Block::Heading(format!("Certificate of deletion: org {}", r.org)),
        Block::Notice(
            Tone::Good,
            format!(
                "Every row of org {} in the mapped tables was deleted ({total} rows) under request {}.",
                r.org, r.id
            ),
        ),
        Block::Facts(vec![
            ("Request".into(), format!("{} ({})", r.id, r.reason)),
            ("Requested by".into(), r.requested_by.clone()),
            ("Requested".into(), zone.show(r.requested_at)),
            ("Deleted".into(), zone.show(Utc::now())),
            (
                "Accounts kept".into(),
                format!("{moved} (members of other orgs, moved to one of them)"),
            ),
            (
                "Keys".into(),
                match keys {
                    Some(k) => format!(
                        "crypto-shredded: data keys destroyed, KMS key {} deleted after {} days",
                        k["kek_id"].as_str().unwrap_or("?"),
                        k["deletion_window_days"]
                    ),
                    None => "none shredded (the org had no key, or only some classes were deleted)".into(),
                },
            ),
        ]),
        Block::Table(Table {
            head: vec!["Table".into(), "Rows deleted".into()],
            rows: counts
                .iter()
                .map(|(t, n)| plain_row(vec![t.clone(), n.to_string()]))
                .collect(),
            empty: "No org-scoped table matched.".into(),
        }),
    ];
    blocks.push(Block::Heading("Backups that still hold this data".into()));
    blocks.push(Block::Table(Table {
        head: vec!["Backup".into(), "Taken".into(), "Removed by pruning".into()],
        rows: backups
            .iter()
            .map(|b| {
                let until = match (b.expires_at, &b.note) {
                    (Some(t), _) => zone.show(t),
                    (None, Some(n)) => n.clone(),
                    (None, None) => "unknown".into(),
                };
                plain_row(vec![b.backup.clone(), zone.show(b.created_at), until])
            })
            .collect(),
        empty: "None: no backup in the catalog predates the deletion.".into(),
    }));
    Message {
        role: Role::Dpo,
        subject: format!(
            "[lethe] certificate of deletion: org {} (request {})",
            r.org, r.id
        ),
        blocks,
        attachments: vec![],
        dedupe_key: Some(format!("org-deleted:{}", r.id)),
    }
}

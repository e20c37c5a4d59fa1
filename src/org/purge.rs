//! `org.purge`: executes org deletions whose cooling-off has ended. Every
//! org-scoped row of the chosen classes goes in bounded batches (each its
//! own short transaction), counted per table into a checkpoint so a crash
//! resumes with the counts intact; then the tables are counted again and
//! must hold no row of the org, or the run fails and the request stays
//! open. Only then is the request closed, with a certificate of deletion
//! (evidence in the audit chain, mailed to the DPO) that names the backups
//! still holding the org's data and when each expires.

use std::collections::BTreeMap;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{backups_holding, holds_on, org_tables, HeldIn};
use crate::appdb::{AppDb, Deleted, Scope};
use crate::config::DataMapEntry;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::notify::{self, Block, Message, Role, Row, Table, Tone};
use crate::objstore::Tail;
use crate::runner::{JobContext, JobParams};
use crate::store::org_requests::{DELETION, DONE};
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
            .map(|r| json!({"request": r.id, "org": r.org}))
            .collect();
        return Ok(json!({"dry_run": true, "would_delete": ids}));
    }
    let db = AppDb::connect(&ctx.config.database.url).await?;
    let mut done = Vec::new();
    let mut held = Vec::new();
    for r in &due {
        let holds = holds_on(ctx, &r.org).await?;
        if !holds.is_empty() {
            // A hold placed during the cooling-off stops the deletion; it waits.
            tracing::warn!(request = r.id, org = %r.org, holds = %holds.join(", "), "org under legal hold: not deleted");
            held.push(json!({"request": r.id, "org": r.org, "holds": holds}));
            continue;
        }
        let certificate = delete_org(jc, &db, r, p.batch_size).await?;
        done.push(certificate);
    }
    db.close().await;
    Ok(json!({"deleted": done, "held": held}))
}

/// Deletes one org's rows, checks none is left, closes the request and mails the certificate.
async fn delete_org(jc: &JobContext, db: &AppDb, r: &OrgRequest, batch: u32) -> Result<Value> {
    let ctx = &jc.ctx;
    let classes: Vec<String> = serde_json::from_value(r.classes.clone()).unwrap_or_default();
    let tables = org_tables(ctx, &classes)?;
    let moved = rehome_members(ctx, db, r, &tables).await?;
    let counts = delete_rows(jc, db, r, &tables, batch).await?;
    let mut left = Vec::new();
    for e in &tables {
        let n = db.count(&Scope::of_org(e, &r.org)).await?;
        if n > 0 {
            left.push(format!("{} still has {n} rows", e.table));
        }
    }
    if !left.is_empty() {
        return Err(Error::Failed(format!(
            "org {} deletion incomplete (request {} stays scheduled): {}",
            r.org,
            r.id,
            left.join("; ")
        )));
    }
    let files = delete_files(jc, db, r).await?;
    // With every class gone nothing needs the org's keys: shred them, so
    // the encrypted values in backups are unreadable from now on.
    let keys = if classes.is_empty() {
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
        "keys_shredded": keys,
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
        .org_request_close(r.id, DONE, &certificate, &event)
        .await?
    {
        return Err(Error::Failed(format!(
            "org request {} was cancelled while its rows were deleted",
            r.id
        )));
    }
    let mail = certificate_mail(ctx, r, &counts, moved, keys.as_ref(), &backups);
    notify::enqueue(ctx, mail).await?;
    Ok(certificate)
}

/// People who belong to another org keep their accounts: their row in the
/// subjects table moves to one of their remaining orgs before the org's rows go.
async fn rehome_members(
    ctx: &Context,
    db: &AppDb,
    r: &OrgRequest,
    tables: &[&DataMapEntry],
) -> Result<u64> {
    let Some(app) = &ctx.config.app else {
        return Ok(0);
    };
    let mut moved = 0;
    for e in tables.iter().filter(|e| e.table == app.subjects.table) {
        if let Some(col) = &e.org {
            moved += db.rehome_members(app, col, &r.org).await?;
        }
    }
    Ok(moved)
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

/// What a deletion has done so far, kept in the run's checkpoint so the
/// attempt that rescues a crashed one carries on with the counts intact.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    /// The request: its files are pending deletes of origin `org:<request>`.
    request: i64,
    /// The org's rows in each table before the first batch.
    planned: BTreeMap<String, i64>,
    deleted: BTreeMap<String, i64>,
}

/// Deletes the org's rows table by table, checkpointing after every batch.
/// Returns the rows deleted per table: a crash between a batch's commit and
/// its checkpoint loses that batch's count, but every planned row is gone
/// (checked after), so a table counts at least its plan.
async fn delete_rows(
    jc: &JobContext,
    db: &AppDb,
    r: &OrgRequest,
    tables: &[&DataMapEntry],
    batch: u32,
) -> Result<BTreeMap<String, i64>> {
    let key = format!("org.purge:{}", r.id);
    let mut p: Progress = match jc.ctx.store.checkpoint_get(jc.run.id, &key).await? {
        Some(v) => {
            serde_json::from_value(v).map_err(|e| Error::json("the org purge's checkpoint", e))?
        }
        None => Progress::default(),
    };
    p.request = r.id;
    if p.planned.is_empty() {
        for e in tables {
            let n = db.count(&Scope::of_org(e, &r.org)).await?;
            p.planned.insert(e.table.clone(), n);
        }
        jc.ctx
            .store
            .checkpoint_put(jc.run.id, &key, &json!(p))
            .await?;
    }
    // Tables referencing others must lose their rows first; whatever order the
    // data map lists them in, a table refused by a foreign key is retried after the rest.
    let mut pending: Vec<&DataMapEntry> = tables.to_vec();
    let mut last_error = None;
    for _pass in 0..=tables.len() {
        let mut refused = Vec::new();
        for e in pending {
            if let Err(err) = delete_table(jc, db, e, &r.org, batch, &key, &mut p).await {
                if matches!(err, Error::LeaseLost(_)) {
                    return Err(err);
                }
                last_error = Some(format!("{}: {err}", e.table));
                refused.push(e);
            }
        }
        pending = refused;
        if pending.is_empty() {
            break;
        }
    }
    if !pending.is_empty() {
        return Err(Error::Failed(format!(
            "org {} not wholly deleted (request {} stays scheduled): {}",
            r.org,
            r.id,
            last_error.unwrap_or_default()
        )));
    }
    Ok(tables
        .iter()
        .map(|e| {
            let (plan, done) = (p.planned.get(&e.table), p.deleted.get(&e.table));
            let n = plan.copied().unwrap_or(0).max(done.copied().unwrap_or(0));
            (e.table.clone(), n)
        })
        .collect())
}

fn files_origin(p: &Progress) -> String {
    format!("org:{}", p.request)
}

/// Deletes every row of `org` in one table, batch by batch, each counted into the checkpoint.
async fn delete_table(
    jc: &JobContext,
    db: &AppDb,
    e: &DataMapEntry,
    org: &str,
    batch: u32,
    key: &str,
    p: &mut Progress,
) -> Result<()> {
    let scope = Scope::of_org(e, org);
    let columns: Vec<String> = e.objects.iter().map(|o| o.column.clone()).collect();
    loop {
        jc.fence.check()?;
        let deleted = if columns.is_empty() {
            db.delete_batch(&scope, batch, u64::from(batch)).await?
        } else {
            // The batch's files are recorded before its rows go, and deleted after.
            let rows = db.object_rows(&scope, &columns, batch).await?;
            let files = crate::retention::objects::of_rows(&e.table, &e.class, &e.objects, &rows);
            jc.ctx.store.objects_pend(&files_origin(p), &files).await?;
            let at: Vec<_> = rows.into_iter().map(|r| r.pos).collect();
            let n = db.delete_rows_at(&scope, &at, u64::from(batch)).await?;
            crate::retention::objects::finish(
                &jc.ctx,
                db,
                &files_origin(p),
                &jc.fence,
                Tail::Defer,
            )
            .await?;
            n
        };
        match deleted {
            Deleted::Rows(0) => return Ok(()),
            Deleted::Rows(n) => {
                *p.deleted.entry(e.table.clone()).or_insert(0) += n as i64;
                jc.ctx
                    .store
                    .checkpoint_put(jc.run.id, key, &json!(p))
                    .await?;
                crate::test_hooks::pause_point("org_batch").await;
            }
            other => {
                return Err(Error::Failed(format!(
                    "a batch of {} did not finish ({other:?})",
                    e.table
                )))
            }
        }
    }
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

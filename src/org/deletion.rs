//! The deleting half of `org.purge`: the org's rows go table by table in
//! batches, a table a foreign key refuses retried after the others, while
//! the request is `running`. Progress (rows per table before the first batch
//! and deleted since, accounts moved) lives in the request itself, so any
//! later run, or the attempt that rescues a crashed one, carries on with the
//! counts intact. People under a legal hold keep their rows, and a hold
//! placed mid-way stops the deletion between two batches.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::holds_on;
use crate::appdb::{AppDb, Deleted, Scope};
use crate::config::DataMapEntry;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::objstore::Tail;
use crate::runner::JobContext;
use crate::store::{HoldScope, OrgRequest};

/// What a deletion has done so far (stored as the running request's `result`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Progress {
    /// The org's rows in each table before the first batch.
    pub(super) planned: BTreeMap<String, i64>,
    pub(super) deleted: BTreeMap<String, i64>,
    /// Accounts that belong to another org too, moved there.
    pub(super) moved: u64,
    /// Subjects under a legal hold when this run started: their rows stay.
    pub(super) held_subjects: Vec<String>,
}

impl Progress {
    /// The running request's progress, or a fresh start.
    pub(super) fn of(r: &OrgRequest) -> Progress {
        r.result
            .clone()
            .filter(|_| r.state == crate::store::org_requests::RUNNING)
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    /// Rows deleted per table. A crash between a batch's commit and the
    /// progress write loses that batch's count, but every planned row is gone
    /// (the recount checks), so a table counts at least its plan.
    pub(super) fn counts(&self, tables: &[&DataMapEntry]) -> BTreeMap<String, i64> {
        tables
            .iter()
            .map(|e| {
                let plan = self.planned.get(&e.table).copied().unwrap_or(0);
                let done = self.deleted.get(&e.table).copied().unwrap_or(0);
                (e.table.clone(), plan.max(done))
            })
            .collect()
    }
}

/// The org's rows of `e` this deletion takes: every one, but held people's.
pub(super) fn scope(e: &DataMapEntry, org: &str, held_subjects: &[String]) -> Scope {
    let mut s = Scope::of_org(e, org);
    s.exclude_subjects = held_subjects.to_vec();
    s
}

/// Ids of the subjects under an active legal hold.
pub(super) async fn held_subjects(ctx: &Context, db: &AppDb) -> Result<Vec<String>> {
    let Some(app) = &ctx.config.app else {
        return Ok(vec![]);
    };
    let mut ids = Vec::new();
    for h in ctx.store.holds(false).await? {
        if h.scope == HoldScope::Subject {
            if let Some(id) = db.subject_id(app, &h.value).await? {
                ids.push(id);
            }
        }
    }
    ids.sort();
    Ok(ids)
}

/// Refused when a hold on the org, or on someone not held when the deletion
/// started, was placed since: the deletion stops and waits.
async fn hold_check(ctx: &Context, db: &AppDb, org: &str, p: &Progress) -> Result<()> {
    let on_org = holds_on(ctx, org).await?;
    let new_people = held_subjects(ctx, db)
        .await?
        .into_iter()
        .filter(|id| !p.held_subjects.contains(id))
        .count();
    if on_org.is_empty() && new_people == 0 {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "a legal hold was placed during the deletion of org {org} ({}): it stopped between two batches \
         and resumes once the hold is released",
        if on_org.is_empty() {
            format!("{new_people} person(s)")
        } else {
            on_org.join(", ")
        }
    )))
}

/// Plans (once), moves accounts that belong elsewhere, then deletes every
/// table; returns the progress.
pub(super) async fn delete_rows(
    jc: &JobContext,
    db: &AppDb,
    r: &OrgRequest,
    tables: &[&DataMapEntry],
    batch: u32,
) -> Result<Progress> {
    let ctx = &jc.ctx;
    let mut p = Progress::of(r);
    // Accounts that stay move first, so the plan counts only rows that go.
    p.moved += rehome_members(ctx, db, r, tables).await?;
    // Holds in force now, whatever they were when the deletion began: a
    // released hold lets that person's rows go too.
    p.held_subjects = held_subjects(ctx, db).await?;
    if p.planned.is_empty() {
        for e in tables {
            let n = db.count(&scope(e, &r.org, &p.held_subjects)).await?;
            p.planned.insert(e.table.clone(), n);
        }
    }
    ctx.store.org_request_progress(r.id, &json!(p)).await?;
    let mut pending: Vec<&DataMapEntry> = tables.to_vec();
    let mut last_error = None;
    for _pass in 0..=tables.len() {
        let mut refused = Vec::new();
        for e in pending {
            match delete_table(jc, db, e, r, batch, &mut p).await {
                Ok(()) => {}
                Err(err @ (Error::LeaseLost(_) | Error::Refused(_))) => return Err(err),
                Err(err) => {
                    last_error = Some(format!("{}: {err}", e.table));
                    refused.push(e);
                }
            }
        }
        pending = refused;
        if pending.is_empty() {
            return Ok(p);
        }
    }
    Err(Error::Failed(format!(
        "org {} not wholly deleted (request {} stays running; the next run resumes it): {}",
        r.org,
        r.id,
        last_error.unwrap_or_default()
    )))
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
            if !e.encrypted.is_empty() {
                // Values sealed under the departing org would not open under the new one.
                moved += super::reseal::move_sealed(ctx, db, app, e, col, &r.org).await?;
            } else {
                moved += db.rehome_members(app, col, &r.org).await?;
            }
        }
    }
    Ok(moved)
}

/// Every row of the org in one table, batch by batch, each counted into the progress.
async fn delete_table(
    jc: &JobContext,
    db: &AppDb,
    e: &DataMapEntry,
    r: &OrgRequest,
    batch: u32,
    p: &mut Progress,
) -> Result<()> {
    let ctx = &jc.ctx;
    let scope = scope(e, &r.org, &p.held_subjects);
    let columns: Vec<String> = e.objects.iter().map(|o| o.column.clone()).collect();
    let origin = format!("org:{}", r.id);
    loop {
        jc.fence.check()?;
        hold_check(ctx, db, &r.org, p).await?;
        let deleted = if columns.is_empty() {
            db.delete_batch(&scope, batch, u64::from(batch)).await?
        } else {
            // The batch's files are recorded before its rows go, and deleted after.
            let rows = db.object_rows(&scope, &columns, batch).await?;
            let files = crate::retention::objects::of_rows(&e.table, &e.class, &e.objects, &rows);
            ctx.store.objects_pend(&origin, &files).await?;
            let at: Vec<_> = rows.into_iter().map(|r| r.pos).collect();
            let n = db.delete_rows_at(&scope, &at, u64::from(batch)).await?;
            crate::retention::objects::finish(ctx, db, &origin, &jc.fence, Tail::Defer).await?;
            n
        };
        match deleted {
            Deleted::Rows(0) => return Ok(()),
            Deleted::Rows(n) => {
                *p.deleted.entry(e.table.clone()).or_insert(0) += n as i64;
                ctx.store.org_request_progress(r.id, &json!(p)).await?;
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

//! After a restore, organisations deleted since the backup are deleted
//! again: every row of theirs in the classes their deletion covered, with
//! the members who belong elsewhere moved to their remaining org first, as
//! the live deletion did. An org under a legal hold now is left as restored,
//! and a deletion completed before the backup was taken is not applied.

use super::ReapplyReport;
use crate::appdb::{AppDb, Deleted, Scope};
use crate::config::DataMapEntry;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::store::org_requests::{DELETION, DONE};

/// Rows per delete statement.
const BATCH: u32 = 5_000;

pub(super) async fn apply(
    ctx: &Context,
    db: &AppDb,
    held_orgs: &[String],
    taken_at: Option<chrono::DateTime<chrono::Utc>>,
    report: &mut ReapplyReport,
) -> Result<()> {
    let deleted: Vec<_> = ctx
        .store
        .org_requests(None)
        .await?
        .into_iter()
        .filter(|r| r.kind == DELETION && r.state == DONE)
        // A deletion before the backup was taken is in it already; rows of
        // that org id in it are a later org's.
        .filter(|r| match (taken_at, r.completed_at) {
            (Some(t), Some(done)) => done > t,
            _ => true,
        })
        .collect();
    for r in deleted {
        let classes: Vec<String> = serde_json::from_value(r.classes.clone()).unwrap_or_default();
        let mut tables = Vec::new();
        for e in ctx.config.data_map.iter().filter(|e| e.org.is_some()) {
            if !classes.is_empty() && !classes.contains(&e.class) {
                continue;
            }
            // A table the restored (older) schema lacks holds none of the org's rows.
            if db.columns(&e.table).await?.is_some() {
                tables.push(e);
            }
        }
        let mut present = 0;
        for e in &tables {
            present += db.count(&Scope::of_org(e, &r.org)).await?;
        }
        if present == 0 {
            continue;
        }
        if held_orgs.contains(&r.org) {
            report.orgs_held.push(r.org.clone());
            continue;
        }
        if let Some(app) = &ctx.config.app {
            for e in tables.iter().filter(|e| e.table == app.subjects.table) {
                if let Some(col) = &e.org {
                    db.rehome_members(app, col, &r.org).await?;
                }
            }
        }
        delete_all(db, &tables, &r.org, report).await?;
        report.orgs_deleted_again.push(r.org.clone());
    }
    Ok(())
}

/// Every row of `org` in `tables`; a table a foreign key refuses is retried after the rest.
async fn delete_all(
    db: &AppDb,
    tables: &[&DataMapEntry],
    org: &str,
    report: &mut ReapplyReport,
) -> Result<()> {
    let mut pending: Vec<&DataMapEntry> = tables.to_vec();
    let mut last_error = String::new();
    for _pass in 0..=tables.len() {
        let mut refused = Vec::new();
        for e in pending {
            let scope = Scope::of_org(e, org);
            loop {
                match db.delete_batch(&scope, BATCH, u64::from(BATCH)).await {
                    Ok(Deleted::Rows(0)) => break,
                    Ok(Deleted::Rows(n)) => {
                        *report.org_rows_deleted.entry(e.table.clone()).or_default() += n
                    }
                    Ok(other) => {
                        last_error = format!("{}: {other:?}", e.table);
                        refused.push(e);
                        break;
                    }
                    Err(err) => {
                        last_error = format!("{}: {err}", e.table);
                        refused.push(e);
                        break;
                    }
                }
            }
        }
        pending = refused;
        if pending.is_empty() {
            return Ok(());
        }
    }
    Err(Error::Failed(format!(
        "org {org} was deleted, but deleting it again from the restored database failed ({last_error}): \
         the restore is not made visible"
    )))
}

//! Files referenced by purged rows go with them. Per batch: the rows in scope
//! are read with their object keys, the keys are checkpointed, the rows are
//! deleted (only those still in scope), then the files, every version of
//! them. A key some row still references is never deleted, so a crash at any
//! point leaves neither a row pointing at a deleted file nor, once the
//! rescued run finishes the checkpointed deletes, a file nobody points at.
//! Totals per class and org travel in the same checkpoint, so the evidence
//! counts every attempt; keys never reach the evidence (they may name people).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;
use crate::appdb::ObjectRow;
use crate::config::ObjectColumn;

const OBJECTS_KEY: &str = "retention.objects";

/// A file whose row is being deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingFile {
    store: String,
    column: String,
    key: String,
    org: String,
}

/// Files deleted for one class and org.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct ObjectTally {
    pub(super) objects: u64,
    pub(super) versions: u64,
    pub(super) bytes: u64,
    /// Versions the bucket's Object Lock keeps, with their retain-until dates.
    pub(super) kept_by_object_lock: Vec<Option<String>>,
    /// Keys the store refused as unsafe (e.g. `../` in a folder store).
    pub(super) refused_keys: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct ObjectsProgress {
    /// Table of the pending files (one item at a time).
    table: String,
    class: String,
    pending: Vec<PendingFile>,
    /// class → org → totals.
    pub(super) tallies: BTreeMap<String, BTreeMap<String, ObjectTally>>,
}

pub(super) async fn load(jc: &JobContext) -> Result<ObjectsProgress> {
    Ok(
        match jc.ctx.store.checkpoint_get(jc.run.id, OBJECTS_KEY).await? {
            Some(v) => serde_json::from_value(v)
                .map_err(|e| Error::json("stored object-purge progress", e))?,
            None => ObjectsProgress::default(),
        },
    )
}

async fn save(jc: &JobContext, p: &ObjectsProgress) -> Result<()> {
    let v = serde_json::to_value(p).map_err(|e| Error::json("object-purge progress", e))?;
    jc.ctx
        .store
        .checkpoint_put(jc.run.id, OBJECTS_KEY, &v)
        .await
}

/// Checkpoints the files of `rows` before the rows go.
pub(super) async fn pend(
    jc: &JobContext,
    p: &mut ObjectsProgress,
    item: &PlanItem,
    columns: &[ObjectColumn],
    rows: &[ObjectRow],
) -> Result<()> {
    p.table = item.table.clone();
    p.class = item.class.clone();
    p.pending = rows
        .iter()
        .flat_map(|r| {
            columns.iter().zip(&r.keys).filter_map(|(c, k)| {
                k.as_ref().filter(|k| !k.is_empty()).map(|k| PendingFile {
                    store: c.store.clone(),
                    column: c.column.clone(),
                    key: k.clone(),
                    org: r.org.clone().unwrap_or_default(),
                })
            })
        })
        .collect();
    save(jc, p).await
}

/// Deletes the checkpointed files no row references any more, then clears them.
pub(super) async fn finish(jc: &JobContext, db: &AppDb, p: &mut ObjectsProgress) -> Result<()> {
    if p.pending.is_empty() {
        return Ok(());
    }
    // Per store, column and org: one purge call each, for per-org evidence.
    let mut groups: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for f in &p.pending {
        groups
            .entry((f.store.clone(), f.column.clone(), f.org.clone()))
            .or_default()
            .push(f.key.clone());
    }
    for ((store, column, org), mut keys) in groups {
        keys.sort();
        keys.dedup();
        let kept = db.still_referenced(&p.table, &column, &keys).await?;
        keys.retain(|k| !kept.contains(k));
        jc.fence.check()?;
        let purged = jc.ctx.app_store(&store).await?.purge(&keys).await?;
        let t = p
            .tallies
            .entry(p.class.clone())
            .or_default()
            .entry(org)
            .or_default();
        t.objects += purged.objects;
        t.versions += purged.versions;
        t.bytes += purged.bytes;
        t.kept_by_object_lock
            .extend(purged.locked.into_iter().map(|l| l.until));
        t.refused_keys += purged.refused;
    }
    p.pending.clear();
    save(jc, p).await
}

/// Test builds only: `LETHE_TEST_CRASH_AT=files_pending` aborts the process
/// after a batch's rows were deleted, before their files (the crash test).
#[cfg(feature = "testing")]
pub(super) fn crash_point(at: &str) {
    if std::env::var("LETHE_TEST_CRASH_AT").as_deref() == Ok(at) {
        std::process::abort();
    }
}

#[cfg(not(feature = "testing"))]
pub(super) fn crash_point(_at: &str) {}

/// Evidence per class and org: counts only, never keys.
pub(super) async fn record(jc: &JobContext, p: &ObjectsProgress) -> Result<()> {
    for (class, orgs) in &p.tallies {
        for (org, t) in orgs {
            crate::audit::record(
                jc.ctx.store.as_ref(),
                &jc.actor,
                "retention.objects_deleted",
                &format!("class:{class}"),
                json!({"run_id": jc.run.id, "org": org, "objects": t.objects, "versions": t.versions,
                       "bytes": t.bytes, "kept_by_object_lock": t.kept_by_object_lock,
                       "refused_keys": t.refused_keys}),
            )
            .await?;
        }
    }
    Ok(())
}

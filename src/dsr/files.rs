//! A subject's files (the data map's object-key columns) go with their
//! erasure. The keys are checkpointed before the rows change, and any
//! attempt of the request first finishes what an earlier one checkpointed,
//! so a crash between the erasure's commit and the file deletes leaves no
//! file behind; a key some remaining row still references is never deleted.
//! The evidence counts files, versions and bytes, never keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::appdb::{AppDb, EraseAction, EraseStep, NewValue};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::fence::Fence;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingFile {
    store: String,
    table: String,
    column: String,
    key: String,
}

fn checkpoint(request: i64) -> String {
    format!("dsr.files:{request}")
}

/// Checkpoints the files of the subject's rows that `steps` delete, or whose
/// object column they empty; rows of held orgs are kept, and so are their files.
pub(super) async fn pend(
    ctx: &Context,
    db: &AppDb,
    run_id: i64,
    request: i64,
    subject_id: &str,
    steps: &[EraseStep],
    held_orgs: &[String],
) -> Result<()> {
    let mut pending = Vec::new();
    for step in steps {
        let Some(entry) = ctx.config.data_map.iter().find(|e| e.table == step.table) else {
            continue;
        };
        for o in &entry.objects {
            let goes = match &step.action {
                EraseAction::Delete => true,
                EraseAction::Update(sets) => sets
                    .iter()
                    .any(|(c, v)| c == &o.column && *v == NewValue::Null),
            };
            if !goes {
                continue;
            }
            let keys = db
                .subject_object_keys(
                    &step.table,
                    &step.subject,
                    step.org.as_deref(),
                    &o.column,
                    subject_id,
                    held_orgs,
                )
                .await?;
            pending.extend(keys.into_iter().map(|(_, key)| PendingFile {
                store: o.store.clone(),
                table: step.table.clone(),
                column: o.column.clone(),
                key,
            }));
        }
    }
    let v = serde_json::to_value(&pending).map_err(|e| Error::json("pending files", e))?;
    ctx.store
        .checkpoint_put(run_id, &checkpoint(request), &v)
        .await
}

/// Deletes the checkpointed files no row references any more; counts.
pub(super) async fn finish(
    ctx: &Context,
    db: &AppDb,
    run_id: i64,
    request: i64,
    fence: &Fence,
) -> Result<Value> {
    let pending: Vec<PendingFile> = match ctx
        .store
        .checkpoint_get(run_id, &checkpoint(request))
        .await?
    {
        Some(v) => serde_json::from_value(v).map_err(|e| Error::json("stored pending files", e))?,
        None => Vec::new(),
    };
    let mut groups: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for f in pending {
        groups
            .entry((f.store, f.table, f.column))
            .or_default()
            .push(f.key);
    }
    let (mut objects, mut versions, mut bytes, mut locked) = (0, 0, 0, Vec::new());
    for ((store, table, column), mut keys) in groups {
        keys.sort();
        keys.dedup();
        let kept = db.still_referenced(&table, &column, &keys).await?;
        keys.retain(|k| !kept.contains(k));
        fence.check()?;
        let purged = ctx.app_store(&store).await?.purge(&keys).await?;
        objects += purged.objects;
        versions += purged.versions;
        bytes += purged.bytes;
        locked.extend(purged.locked.into_iter().map(|l| l.until));
    }
    ctx.store
        .checkpoint_put(run_id, &checkpoint(request), &json!([]))
        .await?;
    Ok(
        json!({"objects": objects, "versions": versions, "bytes": bytes, "kept_by_object_lock": locked}),
    )
}

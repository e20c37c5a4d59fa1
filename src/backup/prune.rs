//! `backup.prune`: the GFS policy decides which backups stay (never the
//! newest verified one); the others' objects and manifests go, each with
//! evidence; then the archived WAL that no kept base backup needs.

use serde_json::{json, Value};

use super::{gfs, physical, PruneParams};
use crate::error::Result;
use crate::runner::JobContext;
use crate::store::BackupRecord;

pub async fn prune_job(jc: &JobContext, _: PruneParams) -> Result<Value> {
    let keep = jc.ctx.config.backup.keep;
    let all = jc.ctx.store.backups(false).await?;
    let candidates: Vec<gfs::Candidate> = all
        .iter()
        .map(|b| gfs::Candidate {
            id: b.id.clone(),
            created_at: b.created_at,
            verified: b.verify_ok == Some(true),
        })
        .collect();
    let decision = gfs::decide(&candidates, &keep);
    let mut kept = Vec::new();
    let mut removed = Vec::new();
    for b in &all {
        let reasons = decision.get(&b.id).cloned().unwrap_or_default();
        if reasons.is_empty() {
            removed.push(b);
        } else {
            kept.push(json!({"id": b.id, "reasons": reasons}));
        }
    }
    if !jc.dry_run && !removed.is_empty() {
        let store = jc.ctx.object_store().await?;
        for b in &removed {
            store.delete(&b.object_key).await?;
            store.delete(&b.manifest_key).await?;
            let event = crate::store::evidence(
                &jc.actor,
                "backup.pruned",
                &format!("backup:{}", b.id),
                json!({"created_at": b.created_at.to_rfc3339(), "policy": keep}),
            );
            jc.ctx.store.backup_deleted(&b.id, &event).await?;
        }
    }
    let removed_ids: Vec<&str> = removed.iter().map(|b| b.id.as_str()).collect();
    let kept_records: Vec<&BackupRecord> = all
        .iter()
        .filter(|b| !removed_ids.contains(&b.id.as_str()))
        .collect();
    let (wal_removed, wal_from) = physical::prune_wal(&jc.ctx, &kept_records, jc.dry_run).await?;
    if !jc.dry_run && !wal_removed.is_empty() {
        crate::audit::record(
            jc.ctx.store.as_ref(),
            &jc.actor,
            "backup.wal_pruned",
            "wal",
            json!({"files": wal_removed.len(), "kept_from": wal_from}),
        )
        .await?;
    }
    Ok(json!({"dry_run": jc.dry_run, "policy": keep, "kept": kept,
              if jc.dry_run { "would_remove" } else { "removed" }: removed_ids,
              "wal_files_removed": wal_removed.len(), "wal_kept_from": wal_from}))
}

//! `runner.prune`: deletes finished runs older than `keep`, in batches so the
//! queue table is never locked for long.

use serde::Deserialize;
use serde_json::{json, Value};

use super::dispatch::JobContext;
use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneParams {
    /// Finished runs older than this are deleted (default 30d).
    #[serde(default = "default_keep")]
    pub keep: String,
    #[serde(default = "default_batch")]
    pub batch_size: u32,
}

fn default_keep() -> String {
    "30d".into()
}

fn default_batch() -> u32 {
    1000
}

pub async fn run(jc: &JobContext) -> Result<Value> {
    let p: PruneParams = jc.params()?;
    let keep = crate::config::parse_duration(&p.keep)
        .map_err(|m| Error::Usage(format!("runner.prune keep: {m}")))?;
    let now = jc.ctx.store.now().await?;
    let before =
        now - chrono::Duration::from_std(keep).map_err(|e| Error::Usage(format!("keep: {e}")))?;
    let store = jc.ctx.store.as_ref();
    if jc.dry_run {
        let would = store.count_prunable(before).await?;
        return Ok(
            json!({"dry_run": true, "cutoff": before.to_rfc3339(), "would_delete": would, "deleted": 0}),
        );
    }
    let mut deleted = 0u64;
    loop {
        let n = store.prune_runs(before, p.batch_size.max(1)).await?;
        deleted += n;
        if n < u64::from(p.batch_size.max(1)) {
            break;
        }
    }
    if deleted > 0 {
        crate::audit::record(
            store,
            &jc.actor,
            "runner.pruned",
            "job_runs",
            json!({"deleted": deleted, "cutoff": before.to_rfc3339()}),
        )
        .await?;
    }
    Ok(json!({"deleted": deleted, "cutoff": before.to_rfc3339(), "keep": p.keep}))
}

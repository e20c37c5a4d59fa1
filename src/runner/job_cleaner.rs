//! Deletes finished runs older than `keep`, in batches so the queue table is
//! never locked for long. Runner maintenance, run as the `runner.prune` kind.

use serde::{Deserialize, Serialize};

use super::{in_range, JobContext, JobParams};
use crate::error::{Error, Result};
use crate::policy::DurationParam;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneParams {
    /// Finished runs older than this are deleted (default 30d).
    #[serde(default = "default_keep")]
    pub keep: DurationParam,
    #[serde(default = "default_batch")]
    pub batch_size: u32,
}

impl JobParams for PruneParams {
    fn validate(&self) -> Result<(), String> {
        in_range("batch_size", self.batch_size.into(), 1, 10_000_000)
    }
}

fn default_keep() -> DurationParam {
    DurationParam::parse("30d").expect("a valid default")
}

fn default_batch() -> u32 {
    1000
}

/// A dry run says what it would delete; a real one what it deleted and why.
#[derive(Debug, Serialize)]
pub struct PruneOutput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    pub cutoff: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_delete: Option<i64>,
    pub deleted: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep: Option<DurationParam>,
}

pub async fn prune(jc: &JobContext, p: PruneParams) -> Result<PruneOutput> {
    let now = jc.ctx.store.now().await?;
    let before = now
        - chrono::Duration::from_std(p.keep.get())
            .map_err(|e| Error::Usage(format!("keep: {e}")))?;
    let cutoff = before.to_rfc3339();
    let store = jc.ctx.store.as_ref();
    if jc.dry_run {
        let would = store.count_prunable(before).await?;
        return Ok(PruneOutput {
            dry_run: Some(true),
            cutoff,
            would_delete: Some(would),
            deleted: 0,
            keep: None,
        });
    }
    let batch = p.batch_size.max(1);
    let mut deleted = 0u64;
    loop {
        let n = store.prune_runs(before, batch).await?;
        deleted += n;
        if n < u64::from(batch) {
            break;
        }
    }
    if deleted > 0 {
        crate::audit::record(
            store,
            &jc.actor,
            "runner.pruned",
            "job_runs",
            serde_json::json!({"deleted": deleted, "cutoff": cutoff}),
        )
        .await?;
    }
    Ok(PruneOutput {
        dry_run: None,
        cutoff,
        would_delete: None,
        deleted,
        keep: Some(p.keep),
    })
}

//! `audit.anchor`: writes the audit chain's head, signed, to `audit.anchor_url`
//! (see `crate::audit::anchor`), and records `audit.anchored`.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::anchor::{self, Anchored};
use crate::config::Config;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::runner::{result_lists, Job, JobContext, JobParams};
use crate::store::{Run, RunState};

/// Which ended runs are anchored at once (issue 15: "at the end of every DSR
/// completion, purge and backup"), only with an anchor store configured:
/// every purge attempt (one that failed midway still deleted rows), a
/// backup that succeeded, and a DSR run that completed a request or failed
/// (it may have completed some before).
pub fn anchor_after(config: &Config, run: &Run) -> bool {
    if config.audit.anchor_url.is_none() {
        return false;
    }
    match run.kind.as_str() {
        "backup.create" => run.state == RunState::Succeeded,
        "dsr.process" => run.state != RunState::Succeeded || result_lists(run, "completed"),
        _ => true,
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AnchorParams {}

impl JobParams for AnchorParams {}

#[derive(Debug, Serialize)]
pub struct AnchorOutput {
    /// False for a dry run or an empty chain.
    pub anchored: bool,
    pub dry_run: bool,
    #[serde(flatten)]
    pub anchor: Option<Anchored>,
}

pub struct AuditAnchor;

impl Job for AuditAnchor {
    const KIND: &'static str = "audit.anchor";
    type Params = AnchorParams;
    type Output = AnchorOutput;

    async fn preflight(ctx: &Context) -> Result<()> {
        anchor::signing_key(&ctx.config)?;
        anchor::open_store(&ctx.config).await.map(|_| ())
    }

    async fn run(jc: &JobContext, _: AnchorParams) -> Result<AnchorOutput> {
        let ctx = &jc.ctx;
        let key = anchor::signing_key(&ctx.config)?;
        let anchors = anchor::open_store(&ctx.config).await?;
        if jc.dry_run {
            return Ok(AnchorOutput {
                anchored: false,
                dry_run: true,
                anchor: None,
            });
        }
        jc.fence.check()?;
        let now = ctx.store.now().await?;
        let written = anchor::write_head(
            ctx.store.as_ref(),
            anchors.as_ref(),
            &key,
            ctx.config.audit.anchor_retention,
            now,
        )
        .await?;
        let Some(a) = written else {
            return Ok(AnchorOutput {
                anchored: false,
                dry_run: false,
                anchor: None,
            });
        };
        let details = json!({"seq": a.seq, "hash": a.hash, "time": a.time, "object": a.object,
                             "store": a.store, "existed": a.existed});
        crate::audit::record(
            ctx.store.as_ref(),
            &jc.actor,
            "audit.anchored",
            &format!("anchor:{}", a.object),
            details,
        )
        .await
        .map_err(|e| {
            Error::Audit(format!(
                "anchor {} written, but its evidence was not: {e}",
                a.object
            ))
        })?;
        Ok(AnchorOutput {
            anchored: true,
            dry_run: false,
            anchor: Some(a),
        })
    }
}

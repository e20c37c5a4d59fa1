//! `audit.anchor`: writes the audit chain's head, signed, to `audit.anchor_store`
//! (see `crate::audit::anchor`), and records `audit.anchored`.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::anchor::{self, Anchored};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::runner::{Job, JobContext, JobParams};

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

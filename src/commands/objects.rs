//! `lethe objects orphans --store NAME`: files no row references.

use std::sync::Arc;

use anyhow::Result;

use super::out::outln;
use crate::context::Context;

pub async fn dispatch(ctx: Arc<Context>, command: crate::cli::ObjectsCommand) -> Result<i32> {
    use crate::cli::ObjectsCommand;
    match command {
        ObjectsCommand::Orphans { store, json } => orphans(ctx, &store, json).await,
    }
}

async fn orphans(ctx: Arc<Context>, store: &str, json: bool) -> Result<i32> {
    let db = ctx.app_db().await?;
    crate::appdb::preflight(&ctx.config, &db).await?;
    let report = crate::retention::orphans(&ctx, &db, store).await?;
    if json {
        super::print_json(&report)?;
    } else {
        for o in &report.orphans {
            outln!("{}\t{}", o.bytes, o.key);
        }
        outln!(
            "{} of {} object(s) in store `{}` ({} bytes) are referenced by no row of {}",
            report.orphans.len(),
            report.objects_listed,
            report.store,
            report.orphan_bytes,
            report.referenced_by.join(", ")
        );
    }
    Ok(0)
}

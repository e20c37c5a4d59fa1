use super::out::outln;
use anyhow::Result;

use crate::config::{redact_url, Config};
use crate::context::Context;

pub async fn run(config: Config) -> Result<i32> {
    let url = redact_url(&config.store.url);
    let ctx = Context::open_unchecked(config).await?;
    ctx.store.migrate().await?;
    crate::audit::record(
        ctx.store.as_ref(),
        &crate::audit::actor_cli(),
        "store.migrated",
        "store",
        serde_json::json!({"backend": ctx.store.backend()}),
    )
    .await?;
    outln!("worker schema is up to date ({url})");
    Ok(0)
}

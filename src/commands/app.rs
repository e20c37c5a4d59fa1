//! `lethe app guard install`: the append-only guard of an application table
//! (`crate::appdb::guard`), printed for review or applied.

use std::sync::Arc;

use anyhow::Result;
use serde_json::json;

use super::out::outln;
use crate::appdb::guard;
use crate::cli::{AppCommand, GuardCommand};
use crate::context::Context;
use crate::error::Error;

pub async fn dispatch(ctx: Arc<Context>, command: AppCommand) -> Result<i32> {
    match command {
        AppCommand::Guard {
            command: GuardCommand::Install { table, apply, json },
        } => install(ctx, &table, apply, json).await,
    }
}

async fn install(ctx: Arc<Context>, table: &str, apply: bool, json: bool) -> Result<i32> {
    let config = &ctx.config;
    let Some(entry) = config.data_map.iter().find(|e| e.table == table) else {
        let mapped: Vec<&str> = config.data_map.iter().map(|e| e.table.as_str()).collect();
        return Err(Error::Usage(format!(
            "no data_map entry for table `{table}` in {} (mapped: {}): add one with `append_only = true`",
            config.path.display(),
            if mapped.is_empty() { "none".into() } else { mapped.join(", ") }
        ))
        .into());
    };
    if !entry.append_only {
        return Err(guard::not_marked(table).into());
    }
    let db = ctx.app_db().await?;
    let role = guard::retention_role(&db, config.database.retention_role.as_deref()).await?;
    let sql = guard::install_sql(&db, table, &role);
    if apply {
        guard::install(&db, table, &role).await?;
        let missing = guard::check(&db, table, &role).await?;
        if !missing.is_empty() {
            return Err(Error::Failed(format!(
                "the guard of `{table}` was applied but is still missing: {}",
                missing.join("; ")
            ))
            .into());
        }
        let details = json!({"role": role, "location": entry.location});
        let target = format!("table:{table}");
        let actor = crate::audit::actor_cli();
        crate::audit::record(
            ctx.store.as_ref(),
            &actor,
            "app.guard_installed",
            &target,
            details,
        )
        .await?;
    }
    let who = match role.as_str() {
        "" => "Lethe's retention (its delete transactions mark themselves)".to_string(),
        r => format!("role {r}"),
    };
    if json {
        super::print_json(&json!({"table": table, "role": role, "applied": apply, "sql": sql}))?;
    } else if apply {
        outln!("GUARDED: {table} refuses UPDATE and TRUNCATE, and DELETE except by {who}; `lethe check` verifies it");
    } else {
        outln!("-- The append-only guard of {table}: UPDATE and TRUNCATE refused, DELETE only by {who}.");
        outln!("-- Review, then run it yourself or with `lethe app guard install --table {table} --apply`.");
        outln!("BEGIN;\n{sql}COMMIT;");
    }
    Ok(0)
}

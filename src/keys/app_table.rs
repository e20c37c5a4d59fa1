//! Keeps the application's key table (`[app.keys]`) in step with the data
//! keys rotation made, so the application can use them: every live version
//! present with its current wrapping, a shredded org's versions destroyed.
//! Idempotent, and run for every org on every rotation, so a crash between
//! the store's commit and this step is repaired by the next run. A version
//! the table marks `destroyed` is never written again.

use std::collections::BTreeMap;

use serde_json::json;

use super::OrgOutcome;
use crate::appdb::AppKey;
use crate::context::Context;
use crate::error::Result;

/// Adds the versions the table lacks and re-wraps those whose wrapping changed.
pub(super) async fn sync_org(
    ctx: &Context,
    org: &str,
    actor: &str,
    out: &mut OrgOutcome,
) -> Result<()> {
    let Some(t) = ctx.config.app.as_ref().and_then(|a| a.keys.as_ref()) else {
        return Ok(());
    };
    let db = ctx.app_db().await?;
    let have: BTreeMap<i64, AppKey> = db
        .app_keys(t, Some(org))
        .await?
        .into_iter()
        .map(|k| (k.version, k))
        .collect();
    for d in ctx.store.deks(Some(org)).await? {
        let want = AppKey {
            org: org.to_string(),
            version: i64::from(d.version),
            wrapped_key: d.wrapped.clone(),
            kms_key_id: d.kek_id.clone(),
            state: "active".into(),
        };
        match have.get(&want.version) {
            None => {
                db.app_key_add(t, &want, d.created_at).await?;
                out.app_keys_added += 1;
            }
            Some(k) if k.state == "destroyed" => {}
            Some(k) if k.wrapped_key != want.wrapped_key || k.kms_key_id != want.kms_key_id => {
                db.app_key_rewrap(t, &want).await?;
                out.app_keys_rewrapped += 1;
            }
            Some(_) => {}
        }
    }
    if out.app_keys_added + out.app_keys_rewrapped > 0 {
        crate::audit::record(
            ctx.store.as_ref(),
            actor,
            "keys.app_table_synced",
            &format!("org:{org}"),
            json!({"table": t.table, "added": out.app_keys_added, "rewrapped": out.app_keys_rewrapped}),
        )
        .await?;
    }
    Ok(())
}

/// Destroys every wrapped key of a shredded org in the table (again after a
/// crash: versions already destroyed are left as they are).
pub(super) async fn shred_org(
    ctx: &Context,
    org: &str,
    actor: &str,
    out: &mut OrgOutcome,
) -> Result<()> {
    let Some(t) = ctx.config.app.as_ref().and_then(|a| a.keys.as_ref()) else {
        return Ok(());
    };
    let n = ctx.app_db().await?.app_keys_destroy(t, org).await?;
    out.app_keys_destroyed += n;
    if n > 0 {
        crate::audit::record(
            ctx.store.as_ref(),
            actor,
            "keys.app_table_shredded",
            &format!("org:{org}"),
            json!({"table": t.table, "destroyed": n}),
        )
        .await?;
    }
    Ok(())
}

//! Keeps the application's key table (`[app.keys]`) in step with the data
//! keys rotation made, so the application can use them: every live version
//! present with its current wrapping, a shredded org's versions destroyed.
//! Idempotent, and run for every org on every rotation, so a crash between
//! the store's commit and this step is repaired by the next run. A version
//! the table marks `destroyed` is never written again.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::OrgOutcome;
use crate::appdb::{newest_active, AppKey, Census};
use crate::config::KeysTable;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kms::Kms;
use crate::store::OrgKek;

/// `[app.keys]`, when the application keeps its data keys in a table.
pub(super) fn key_table(ctx: &Context) -> Option<&KeysTable> {
    ctx.config.app.as_ref().and_then(|a| a.keys.as_ref())
}

/// A version's wrapped key as the table holds it; None when the row is
/// missing or destroyed.
pub(super) async fn wrapped(ctx: &Context, org: &str, version: i32) -> Result<Option<String>> {
    let Some(t) = key_table(ctx) else {
        return Ok(None);
    };
    let keys = ctx.app_db().await?.app_keys(t, Some(org)).await?;
    Ok(keys
        .into_iter()
        .find(|k| k.version == i64::from(version) && k.state != "destroyed")
        .map(|k| k.wrapped_key)
        .filter(|w| !w.is_empty()))
}

/// Replaces a version's wrapping in the table (never a destroyed one).
pub(super) async fn rewrap(
    ctx: &Context,
    org: &str,
    version: i32,
    kms_key_id: &str,
    wrapped: &str,
) -> Result<()> {
    let Some(t) = key_table(ctx) else {
        return Ok(());
    };
    let key = AppKey {
        org: org.to_string(),
        version: i64::from(version),
        wrapped_key: wrapped.to_string(),
        kms_key_id: kms_key_id.to_string(),
        state: "active".into(),
    };
    ctx.app_db().await?.app_key_rewrap(t, &key).await
}

/// Adds the versions the table lacks: a new version with the wrapping just
/// made (`fresh`). A version the store has and the table lacks otherwise
/// means a crash between the store's commit and this write, so nothing can
/// be encrypted under it: it gets a new key, unless values are (its row was
/// removed by hand), which stops the run. Stores from before the table kept
/// the keys carry the wrapping themselves, and the table follows them.
pub(super) async fn sync_org(
    ctx: &Context,
    kms: &dyn Kms,
    kek: &OrgKek,
    fresh: Option<(i32, String)>,
    actor: &str,
    out: &mut OrgOutcome,
) -> Result<()> {
    let Some(t) = key_table(ctx) else {
        return Ok(());
    };
    let org = kek.org.as_str();
    let db = ctx.app_db().await?;
    let have: BTreeMap<i64, AppKey> = db
        .app_keys(t, Some(org))
        .await?
        .into_iter()
        .map(|k| (k.version, k))
        .collect();
    for d in ctx.store.deks(Some(org)).await? {
        let mut want = AppKey {
            org: org.to_string(),
            version: i64::from(d.version),
            wrapped_key: d.wrapped.clone(),
            kms_key_id: d.kek_id.clone(),
            state: "active".into(),
        };
        match have.get(&want.version) {
            None => {
                want.wrapped_key = match &fresh {
                    _ if !d.wrapped.is_empty() => d.wrapped.clone(),
                    Some((v, w)) if *v == d.version => w.clone(),
                    _ => replacement(ctx, kms, kek, d.version).await?,
                };
                want.kms_key_id = kek.kek_id.clone();
                db.app_key_add(t, &want, d.created_at).await?;
                out.app_keys_added += 1;
            }
            Some(k) if k.state == "destroyed" || d.wrapped.is_empty() => {}
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

/// A new key for a version the table never received; refused while values
/// are encrypted under that version (their key would be lost for good).
async fn replacement(ctx: &Context, kms: &dyn Kms, kek: &OrgKek, version: i32) -> Result<String> {
    let under = census(ctx).await?.count(&kek.org, i64::from(version));
    if under > 0 {
        return Err(Error::Failed(format!(
            "org {}: version {version} is missing from the key table while {under} stored value(s) \
             name it; restore its row from a backup of the application database",
            kek.org
        )));
    }
    let wrapped = super::with_retry("generate data key", || kms.generate_dek(&kek.kek_id)).await?;
    Ok(super::b64(&wrapped))
}

/// Destroys every wrapped key of a shredded org in the table (again after a
/// crash: versions already destroyed are left as they are).
pub(super) async fn shred_org(
    ctx: &Context,
    org: &str,
    actor: &str,
    out: &mut OrgOutcome,
) -> Result<()> {
    let Some(t) = key_table(ctx) else {
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

/// Every encrypted column's values counted by org and DEK version.
pub(super) async fn census(ctx: &Context) -> Result<Census> {
    let mut census = Census::default();
    if key_table(ctx).is_none() {
        return Ok(census);
    }
    let db = ctx.app_db().await?;
    for e in ctx
        .config
        .data_map
        .iter()
        .filter(|e| !e.encrypted.is_empty())
    {
        // Load-time validation guarantees an org column for encrypted entries.
        let Some(org) = &e.org else { continue };
        for column in &e.encrypted {
            db.ciphertext_census(&e.table, org, column, &mut census)
                .await?;
        }
    }
    Ok(census)
}

/// Active versions other than the newest that no stored value uses any more
/// become `retired`, with evidence; returns how many per org.
pub(super) async fn retire_unused(
    ctx: &Context,
    census: &Census,
    actor: &str,
) -> Result<BTreeMap<String, u64>> {
    let mut retired = BTreeMap::new();
    let Some(t) = key_table(ctx) else {
        return Ok(retired);
    };
    let db = ctx.app_db().await?;
    let keys = db.app_keys(t, None).await?;
    for k in keys.iter().filter(|k| k.state == "active") {
        if Some(k.version) == newest_active(&keys, &k.org) || census.count(&k.org, k.version) > 0 {
            continue;
        }
        if db.app_key_retire(t, &k.org, k.version).await? {
            *retired.entry(k.org.clone()).or_default() += 1;
            crate::audit::record(
                ctx.store.as_ref(),
                actor,
                "keys.version_retired",
                &format!("org:{}", k.org),
                json!({"table": t.table, "version": k.version}),
            )
            .await?;
        }
    }
    Ok(retired)
}

/// Per org: its versions in the table with their state and stored values, and
/// how many values are under a version other than the newest active one.
/// `None` without `[app.keys]`; an org with values but no key rows has every
/// value stale.
pub(super) async fn status(ctx: &Context) -> Result<Option<BTreeMap<String, Value>>> {
    let mut out = BTreeMap::new();
    let Some(t) = key_table(ctx) else {
        return Ok(None);
    };
    let census = census(ctx).await?;
    let keys = ctx.app_db().await?.app_keys(t, None).await?;
    let mut by_org: BTreeMap<String, Vec<AppKey>> = BTreeMap::new();
    for (org, _) in census.by_version.keys() {
        by_org.entry(org.clone()).or_default();
    }
    for k in keys {
        by_org.entry(k.org.clone()).or_default().push(k);
    }
    for (org, versions) in by_org {
        let newest = newest_active(&versions, &org);
        let stale: u64 = census
            .by_version
            .iter()
            .filter(|((o, v), _)| *o == org && Some(i64::from(*v)) != newest)
            .map(|(_, n)| n)
            .sum();
        let listed: Vec<Value> = versions
            .iter()
            .map(|k| {
                let n = census.count(&org, k.version);
                json!({"version": k.version, "state": k.state, "ciphertexts": n})
            })
            .collect();
        out.insert(org, json!({"stale_ciphertexts": stale, "versions": listed}));
    }
    Ok(Some(out))
}

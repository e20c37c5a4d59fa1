//! Per-org envelope encryption: each org's data keys (DEKs) are wrapped by a
//! KMS key (KEK) and stored, wrapped, with the KEK id and the KEK version they
//! were wrapped under. `keys.rotate` creates new DEK versions when the active
//! one is old, has the KMS re-wrap older DEKs after a KEK rotation (plaintext
//! never leaves the KMS), rotates KEKs per policy and crypto-shreds closed
//! orgs past their retention. Providers: AWS KMS and a local keyring file.

pub use crate::kms::{AwsKms, Kms, LocalKms};
pub use deks::{DataKeys, Opened};
pub use reencrypt::{reencrypt_job, ReencryptOutput, ReencryptParams};

mod app_table;
mod deks;
mod reencrypt;
mod shred_policy;

use shred_policy::Gate;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::runner::{JobContext, JobParams};
use crate::store::{OrgDek, OrgKek};

/// Retries throttled KMS calls with backoff; other errors return at once.
async fn with_retry<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    for attempt in 1.. {
        match f().await {
            Err(Error::Throttled(_)) if attempt < 6 => {
                tracing::warn!(what, attempt, "KMS throttled; backing off");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}

fn b64(v: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(v)
}

fn unb64(s: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| Error::Failed(format!("stored wrapped key is not base64: {e}")))
}

fn version_of(kek: &OrgKek) -> String {
    kek.rotated_at.format(crate::audit::AT_FORMAT).to_string()
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateParams {
    /// Only this org (default: all).
    pub org: Option<String>,
    /// A new DEK version now, whatever the age of the active one: after a
    /// suspected exposure (then `keys.reencrypt` moves the values to it).
    #[serde(default)]
    pub new_dek: bool,
}

/// When this rotation pass runs and whether it forces new DEK versions.
#[derive(Clone, Copy)]
struct Pass {
    now: DateTime<Utc>,
    new_dek: bool,
}

impl JobParams for RotateParams {}

#[derive(Debug, Default, Serialize)]
struct OrgOutcome {
    org: String,
    created_kek: bool,
    rotated_kek: bool,
    new_dek_version: Option<i32>,
    rewrapped: usize,
    shredded: bool,
    /// Why the org's shred, due by `keys.shred_after`, waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    shred_postponed: Option<String>,
    /// The application's key table (`[app.keys]`), when configured.
    app_keys_added: u64,
    app_keys_rewrapped: u64,
    app_keys_destroyed: u64,
    app_keys_retired: u64,
}

/// Orgs and their closure time from `[app.orgs]`.
async fn orgs(ctx: &Context) -> Result<Vec<(String, Option<DateTime<Utc>>)>> {
    let orgs = ctx
        .config
        .app
        .as_ref()
        .and_then(|a| a.orgs.as_ref())
        .ok_or_else(|| {
            Error::Usage("keys need [app.orgs] (which orgs exist, and when they closed)".into())
        })?;
    let db = ctx.app_db().await?;
    crate::appdb::preflight(&ctx.config, &db).await?;
    db.orgs_with_closure(orgs).await
}

async fn rotate_org(
    ctx: Arc<Context>,
    kms: Arc<dyn Kms>,
    org: String,
    closed_at: Option<DateTime<Utc>>,
    existing: Option<OrgKek>,
    pass: Pass,
    actor: String,
) -> Result<OrgOutcome> {
    let now = pass.now;
    let cfg = &ctx.config.keys;
    let store = ctx.store.as_ref();
    let mut out = OrgOutcome {
        org: org.clone(),
        ..Default::default()
    };
    if existing.as_ref().is_some_and(|k| k.shredded_at.is_some()) {
        out.shredded = true;
        app_table::shred_org(&ctx, &org, &actor, &mut out).await?;
        return Ok(out);
    }
    let (mut kek, created) = org_kek(&ctx, kms.as_ref(), &org, existing, now).await?;
    out.created_kek = created;
    if let Some(closed) = closed_at {
        let holds = store.holds(false).await?;
        match shred_policy::gate(&ctx.config, &holds, &org, closed, now) {
            Gate::Shred => {
                shred(&ctx, kms.as_ref(), &org, &mut kek, closed_at, now, &actor).await?;
                out.shredded = true;
                app_table::shred_org(&ctx, &org, &actor, &mut out).await?;
                return Ok(out);
            }
            Gate::Postponed(why) => {
                shred_policy::record(store, &mut kek, &why, &actor).await?;
                out.shred_postponed = Some(why.reason);
            }
            Gate::NotDue => {}
        }
    }
    // A KEK created just now is fresh: no rotation in the same run.
    if !out.created_kek && (now - kek.rotated_at).to_std().unwrap_or_default() >= cfg.kek_rotation {
        with_retry("rotate key", || kms.rotate_kek(&kek.kek_id)).await?;
        kek.rotated_at = now;
        let event = crate::store::evidence(
            &actor,
            "keys.kek_rotated",
            &format!("org:{org}"),
            json!({"kek_id": kek.kek_id}),
        );
        store.kek_put(&kek, Some(&event)).await?;
        out.rotated_kek = true;
    }
    let fresh = rotate_deks(&ctx, kms.as_ref(), &org, &kek, pass, &actor, &mut out).await?;
    app_table::sync_org(&ctx, kms.as_ref(), &kek, fresh, &actor, &mut out).await?;
    Ok(out)
}

/// The org's key-encryption key: the stored one, or one created in the KMS
/// (and stored) on first use; `true` when it was created.
async fn org_kek(
    ctx: &Context,
    kms: &dyn Kms,
    org: &str,
    existing: Option<OrgKek>,
    now: DateTime<Utc>,
) -> Result<(OrgKek, bool)> {
    if let Some(k) = existing {
        return Ok((k, false));
    }
    let id = with_retry("create key", || kms.create_kek(org)).await?;
    let k = OrgKek {
        org: org.to_string(),
        kek_id: id,
        rotated_at: now,
        shredded_at: None,
        shred_postponed: None,
    };
    ctx.store.kek_put(&k, None).await?;
    Ok((k, true))
}

/// Crypto-shreds one org now (its deletion removed every row): the KMS
/// deletes its KEK after the window, its DEKs are destroyed, and so are the
/// wrapped keys in the application's table. `None` when the org never had a
/// key; a key shredded before is left as it is.
pub async fn shred_org_now(ctx: &Context, org: &str, actor: &str) -> Result<Option<Value>> {
    let Some(mut kek) = ctx.store.keks().await?.into_iter().find(|k| k.org == org) else {
        return Ok(None);
    };
    let mut out = OrgOutcome {
        org: org.to_string(),
        ..Default::default()
    };
    if kek.shredded_at.is_none() {
        let kms = ctx.kms().await?;
        shred(ctx, kms.as_ref(), org, &mut kek, None, Utc::now(), actor).await?;
    }
    app_table::shred_org(ctx, org, actor, &mut out).await?;
    Ok(Some(
        json!({"kek_id": kek.kek_id, "shredded_at": kek.shredded_at,
                   "app_keys_destroyed": out.app_keys_destroyed,
                   "deletion_window_days": ctx.config.keys.deletion_window_days}),
    ))
}

/// Crypto-shredding of a closed org: the KMS deletes the KEK after its
/// window, and the wrapped DEKs are destroyed together with the evidence.
async fn shred(
    ctx: &Context,
    kms: &dyn Kms,
    org: &str,
    kek: &mut OrgKek,
    closed_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    actor: &str,
) -> Result<()> {
    let cfg = &ctx.config.keys;
    with_retry("schedule key deletion", || {
        kms.schedule_deletion(&kek.kek_id, cfg.deletion_window_days)
    })
    .await?;
    kek.shredded_at = Some(now);
    kek.shred_postponed = None;
    let kek = &*kek;
    // Backups taken before now may hold the org's rows: their ciphertexts
    // (and wrapped keys) are unreadable from now on; the evidence names them.
    let backups: Vec<String> = ctx
        .store
        .backups(false)
        .await?
        .into_iter()
        .filter(|b| b.created_at <= now)
        .map(|b| b.id)
        .collect();
    let event = |destroyed: &u64| {
        crate::store::evidence(
            actor,
            "keys.shredded",
            &format!("org:{org}"),
            json!({"kek_id": kek.kek_id, "deks_destroyed": destroyed, "deletion_window_days": cfg.deletion_window_days,
                   "closed_at": closed_at.map(|c| c.to_rfc3339()),
                   "backups_now_unreadable_for_org": backups}),
        )
    };
    ctx.store.deks_destroy(org, kek, &event).await?;
    Ok(())
}

/// A new DEK when the newest is older than `dek_rotation` (or there is
/// none, or the pass forces one), then every DEK wrapped under an older KEK
/// version re-wrapped. With `[app.keys]` the wrapped keys live only in the
/// application's table: the store keeps each version's KEK version and dates
/// (progress and evidence), not the wrapped key. Returns a new version's
/// wrapping for the table.
async fn rotate_deks(
    ctx: &Context,
    kms: &dyn Kms,
    org: &str,
    kek: &OrgKek,
    pass: Pass,
    actor: &str,
    out: &mut OrgOutcome,
) -> Result<Option<(i32, String)>> {
    let (cfg, now) = (&ctx.config.keys, pass.now);
    let in_app_table = app_table::key_table(ctx).is_some();
    let store = ctx.store.as_ref();
    let deks = store.deks(Some(org)).await?;
    let active = deks.iter().max_by_key(|d| d.version);
    let due = active
        .is_none_or(|d| (now - d.created_at).to_std().unwrap_or_default() >= cfg.dek_rotation);
    let mut fresh = None;
    if due || pass.new_dek {
        let version = active.map_or(1, |d| d.version + 1);
        let wrapped =
            b64(&with_retry("generate data key", || kms.generate_dek(&kek.kek_id)).await?);
        let event = crate::store::evidence(
            actor,
            "keys.dek_rotated",
            &format!("org:{org}"),
            json!({"version": version, "kek_id": kek.kek_id}),
        );
        let stored = if in_app_table {
            String::new()
        } else {
            wrapped.clone()
        };
        let dek = OrgDek {
            org: org.to_string(),
            version,
            kek_id: kek.kek_id.clone(),
            kek_version: version_of(kek),
            wrapped: stored,
            created_at: now,
            rewrapped_at: None,
        };
        store.dek_insert(&dek, &event).await?;
        out.new_dek_version = Some(version);
        fresh = in_app_table.then_some((version, wrapped));
    }
    rewrap_deks(ctx, kms, org, kek, &deks, actor, out).await?;
    Ok(fresh)
}

/// Every DEK wrapped under an older KEK version, re-wrapped by the KMS
/// (`ReEncrypt`: the plaintext never leaves it) and stored with evidence; in
/// the application's table first, when it keeps them, so a crash in between
/// only repeats a harmless re-wrap.
async fn rewrap_deks(
    ctx: &Context,
    kms: &dyn Kms,
    org: &str,
    kek: &OrgKek,
    deks: &[OrgDek],
    actor: &str,
    out: &mut OrgOutcome,
) -> Result<()> {
    let current = version_of(kek);
    let mut rewraps = Vec::new();
    for d in deks.iter().filter(|d| d.kek_version != current) {
        let wrapped = match app_table::key_table(ctx) {
            None => d.wrapped.clone(),
            // Missing from the table: sync_org adds it, wrapped under the current KEK.
            Some(_) => match app_table::wrapped(ctx, org, d.version).await? {
                Some(w) => w,
                None => continue,
            },
        };
        let blob = unb64(&wrapped)?;
        let re = b64(&with_retry("re-encrypt", || kms.rewrap(&kek.kek_id, &blob)).await?);
        if app_table::key_table(ctx).is_some() {
            app_table::rewrap(ctx, org, d.version, &kek.kek_id, &re).await?;
            out.app_keys_rewrapped += 1;
            rewraps.push((d.version, String::new()));
        } else {
            rewraps.push((d.version, re));
        }
    }
    if !rewraps.is_empty() {
        out.rewrapped = rewraps.len();
        let event = crate::store::evidence(
            actor,
            "keys.rewrapped",
            &format!("org:{org}"),
            json!({"deks": out.rewrapped, "kek_id": kek.kek_id}),
        );
        ctx.store
            .dek_rewrapped(org, &current, &rewraps, &event)
            .await?;
    }
    Ok(())
}

/// `keys.rotate` / `lethe keys rotate`: every org (or one), with bounded concurrency toward the KMS.
pub async fn rotate(ctx: &Arc<Context>, p: &RotateParams, actor: &str) -> Result<Value> {
    let kms = ctx.kms().await?;
    // Micro precision: the KEK version string must survive a round trip through either store.
    let now = crate::audit::truncate_micros(ctx.store.now().await?);
    let pass = Pass {
        now,
        new_dek: p.new_dek,
    };
    let mut list = orgs(ctx).await?;
    if let Some(o) = p.org.as_deref() {
        list.retain(|(id, _)| id == o);
        if list.is_empty() {
            return Err(Error::Usage(format!("org `{o}` is not in [app.orgs]")));
        }
    }
    let mut keks: std::collections::HashMap<String, OrgKek> = ctx
        .store
        .keks()
        .await?
        .into_iter()
        .map(|k| (k.org.clone(), k))
        .collect();
    let slots = Arc::new(Semaphore::new(ctx.config.keys.concurrency));
    let mut tasks = JoinSet::new();
    let bar = crate::progress::bar(
        "keys: orgs rotated",
        Some(list.len() as u64),
        crate::progress::Unit::Items,
    );
    for (org, closed) in list {
        let (ctx, kms, actor) = (ctx.clone(), kms.clone(), actor.to_string());
        let kek = keks.remove(&org);
        // Acquire before spawning: at most `concurrency` orgs (and their KMS calls) in flight.
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Failed(e.to_string()))?;
        tasks.spawn(async move {
            let _slot = slot;
            rotate_org(ctx, kms, org, closed, kek, pass, actor).await
        });
    }
    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        bar.inc(1);
        match r
            .map_err(|e| Error::task("key rotation task", e))
            .and_then(|x| x)
        {
            Ok(o) => outcomes.push(o),
            Err(e) => errors.push(e.to_string()),
        }
    }
    outcomes.sort_by(|a, b| a.org.cmp(&b.org));
    if errors.is_empty() {
        // Versions nothing is encrypted under any more: after every org is done.
        let census = app_table::census(ctx).await?;
        let retired = app_table::retire_unused(ctx, &census, actor).await?;
        for o in outcomes.iter_mut() {
            o.app_keys_retired = retired.get(&o.org).copied().unwrap_or(0);
        }
    }
    if !errors.is_empty() {
        return Err(Error::Failed(format!(
            "{} org(s) failed: {}",
            errors.len(),
            errors.join("; ")
        )));
    }
    Ok(summary(kms.as_ref(), &outcomes))
}

/// What `keys rotate --json` prints: totals, then each org's outcome.
fn summary(kms: &dyn Kms, outcomes: &[OrgOutcome]) -> Value {
    json!({
        "provider": kms.describe(),
        "orgs": outcomes.len(),
        "keks_created": outcomes.iter().filter(|o| o.created_kek).count(),
        "keks_rotated": outcomes.iter().filter(|o| o.rotated_kek).count(),
        "deks_created": outcomes.iter().filter(|o| o.new_dek_version.is_some()).count(),
        "rewrapped": outcomes.iter().map(|o| o.rewrapped).sum::<usize>(),
        "shredded": outcomes.iter().filter(|o| o.shredded).map(|o| o.org.clone()).collect::<Vec<_>>(),
        "shred_postponed": outcomes.iter().filter_map(|o| o.shred_postponed.as_ref().map(|r| json!({"org": o.org, "reason": r}))).collect::<Vec<_>>(),
        "details": outcomes,
    })
}

pub async fn rotate_job(jc: &JobContext, p: RotateParams) -> Result<Value> {
    if jc.dry_run {
        return Ok(json!({"dry_run": true, "orgs": orgs(&jc.ctx).await?.len()}));
    }
    rotate(&jc.ctx, &p, &jc.actor).await
}

/// `keys status`: per org, active version, age, next rotation due, shredded.
pub async fn status(ctx: &Context) -> Result<Value> {
    let now = ctx.store.now().await?;
    let keks = ctx.store.keks().await?;
    let deks = ctx.store.deks(None).await?;
    let cfg = &ctx.config.keys;
    let mut rows = Vec::new();
    let mut app = app_table::status(ctx).await?;
    for (org, closed) in orgs(ctx).await? {
        let kek = keks.iter().find(|k| k.org == org);
        let active = deks
            .iter()
            .filter(|d| d.org == org)
            .max_by_key(|d| d.version);
        let next = active
            .map(|d| d.created_at + chrono::Duration::seconds(cfg.dek_rotation.as_secs() as i64));
        rows.push(json!({
            "org": org,
            "kek_id": kek.map(|k| k.kek_id.clone()),
            "active_version": active.map(|d| d.version),
            "age_days": active.map(|d| (now - d.created_at).num_days()),
            "next_rotation_due": next.map(|t| t.to_rfc3339()),
            "rotation_overdue": next.is_some_and(|t| t <= now),
            "stale_wraps": kek.map_or(0, |k| deks.iter().filter(|d| d.org == org && d.kek_version != version_of(k)).count()),
            "closed_at": closed.map(|c| c.to_rfc3339()),
            "shredded": kek.is_some_and(|k| k.shredded_at.is_some()),
            "shredded_at": kek.and_then(|k| k.shredded_at.map(|t| t.to_rfc3339())),
            "shred_postponed": kek.and_then(|k| k.shred_postponed.clone()),
        }));
        // With [app.keys]: the org's versions in the table and its stale values.
        if let Some(app) = app.as_mut() {
            let extra = app
                .remove(&org)
                .unwrap_or_else(|| json!({"stale_ciphertexts": 0, "versions": []}));
            if let (Value::Object(extra), Some(Value::Object(row))) = (extra, rows.last_mut()) {
                row.extend(extra);
            }
        }
    }
    Ok(json!({"provider": format!("{:?}", cfg.provider).to_lowercase(), "orgs": rows}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Retries follow the error's kind (`Throttled`), not its text.
    #[test]
    fn only_throttled_calls_are_retried() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let calls = AtomicU32::new(0);
            let r = with_retry("t", || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(Error::Throttled("slow down".into())),
                    _ => Ok(7),
                }
            })
            .await;
            assert_eq!((r.ok(), calls.load(Ordering::SeqCst)), (Some(7), 3));

            let calls = AtomicU32::new(0);
            let r: Result<i32> = with_retry("t", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::Failed(
                    "Throttling in the message is not a throttle".into(),
                ))
            })
            .await;
            assert!(r.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        });
    }
}

//! `retention.purge`: deletes what the data map says has expired, per class
//! and org, in short bounded batches; respects per-org overrides and legal
//! holds; leaves counts and cutoffs (never values) in the audit chain.
//!
//! A run first writes a *plan* as a checkpoint: each scope's cutoffs (whole
//! seconds), the storage form of each compared timestamp, and how many rows it
//! selects per org. Cutoffs come from the run's `scheduled_for`, so a retried
//! run after a crash deletes exactly the same set. The plan's count is also a
//! budget: a statement that would take the item past it is rolled back and the
//! run fails, rather than delete rows nobody planned. Holds are read again
//! before every statement. Batches are
//! plain `DELETE`s (counting per org while deleting would double their cost);
//! the per-org evidence is the plan's counts when the deleted total matches
//! the plan, and otherwise (a crash, a hold added mid-run, the application
//! deleting rows too) planned − still there, per org.
//!
//! On PostgreSQL a single age rule is deleted in windows of its timestamp
//! sized from the rows the last window held, each under a statement timeout:
//! a window that would run too long is rolled back and redone in row batches.
//! Elsewhere rows go in `LIMIT`ed batches by `(tableoid, ctid)` or rowid.

mod batches;
pub mod objects;
mod orphans;
mod partitions;
mod planning;
mod prefixes;

pub use crate::policy::{Period, RetentionRule};
use batches::*;
pub use orphans::{orphans, Orphan, OrphanReport};
pub use partitions::PartitionDrop;
use partitions::PartitionStep;
use partitions::{drop_after_grace, drop_planned, plan_drops, Detacher};
pub use planning::*;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::appdb::{AppDb, Deleted, DetectedForm, Scope, Selector, Slicing, TimeForm, TimeWindow};
use crate::config::{Config, DataMapEntry};
use crate::error::{Error, Result};
use crate::objstore::Tail;
use crate::progress;
use crate::runner::{in_range, JobContext, JobParams};
use crate::store::{HoldScope, Store};

const PLAN_KEY: &str = "retention.plan";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeParams {
    /// Rows per DELETE statement: each is its own short transaction.
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    /// With a target, the batch size adapts (from `batch_size`, up to
    /// `max_batch_size`) so each DELETE takes about this long.
    #[serde(default)]
    pub target_batch_ms: Option<u64>,
    #[serde(default = "default_max_batch")]
    pub max_batch_size: u32,
    /// No delete transaction runs longer: a time window that would is rolled
    /// back and redone in row batches (PostgreSQL).
    #[serde(default = "default_max_txn_ms")]
    pub max_transaction_ms: u64,
    /// Pause between batches, to leave room for the application's own writes.
    #[serde(default)]
    pub pause_ms: u64,
    /// Only these data classes (default: all).
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// Partitions removed whole stay detached this long (out of the
    /// application's sight, still restorable by attaching them back) and a
    /// later run drops them; unset: dropped at once.
    #[serde(default)]
    pub detach_grace: Option<crate::policy::DurationParam>,
}

impl JobParams for PurgeParams {
    /// A zero batch would loop forever, a huge pause or timeout stall a run for years.
    fn validate(&self) -> Result<(), String> {
        in_range("batch_size", self.batch_size.into(), 1, 10_000_000)?;
        in_range("max_batch_size", self.max_batch_size.into(), 1, 100_000_000)?;
        if let Some(t) = self.target_batch_ms {
            in_range("target_batch_ms", t, 1, 3_600_000)?;
        }
        in_range("max_transaction_ms", self.max_transaction_ms, 1, 3_600_000)?;
        in_range("pause_ms", self.pause_ms, 0, 3_600_000)
    }
}

fn default_batch() -> u32 {
    5000
}

fn default_max_batch() -> u32 {
    1_000_000
}

fn default_max_txn_ms() -> u64 {
    1000
}

/// Next batch size: double while well under the target, halve when over it.
fn adapt(batch: u32, took: Duration, target_ms: Option<u64>, max: u32) -> u32 {
    let Some(target) = target_ms.map(Duration::from_millis) else {
        return batch;
    };
    if took < target / 2 {
        batch.saturating_mul(2).min(max.max(1))
    } else if took > target {
        (batch / 2).max(100)
    } else {
        batch
    }
}

/// Rows deleted per org: the plan's counts when the total matches them;
/// otherwise planned − still there, and what that cannot place under [`UNPLACED`].
async fn deleted_by_org(
    db: &AppDb,
    item: &PlanItem,
    planned_scope: &Scope,
    deleted: Option<i64>,
) -> Result<BTreeMap<String, i64>> {
    if deleted == Some(item.planned) {
        return Ok(item.planned_by_org.clone());
    }
    let left = count_by_org(db, planned_scope).await?;
    let mut by_org: BTreeMap<String, i64> = item
        .planned_by_org
        .iter()
        .map(|(o, n)| (o.clone(), n - left.get(o).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 0)
        .collect();
    if let Some(deleted) = deleted {
        let placed: i64 = by_org.values().sum();
        if deleted != placed {
            by_org.insert(UNPLACED.into(), deleted - placed);
        }
    }
    Ok(by_org)
}

/// Rows an item deleted before it failed are evidence too (the retry or the
/// next run records the rest). Counts only: an error text could carry values.
async fn record_stopped(jc: &JobContext, item: &PlanItem, done: Option<&ItemProgress>) {
    let deleted = done.map_or(0, |d| d.deleted);
    let details = json!({"run_id": jc.run.id, "class": item.class, "rules": item.rules,
                         "orgs": item.only_orgs, "deleted": deleted, "planned": item.planned});
    let target = format!("table:{}", item.table);
    let store = jc.ctx.store.as_ref();
    if let Err(e) = crate::audit::record(
        store,
        &jc.actor,
        "retention.purge_stopped",
        &target,
        details,
    )
    .await
    {
        tracing::warn!(error = %e, table = %item.table, "could not record the stopped purge");
    }
}

/// The run's plan: the checkpointed one when resuming (forms detected again
/// if it predates them), else a new one, checkpointed before any delete.
async fn run_plan(jc: &JobContext, db: &AppDb, p: &PurgeParams) -> Result<(Plan, bool)> {
    let config = jc.ctx.config.as_ref();
    let store = jc.ctx.store.as_ref();
    if let Some(v) = store.checkpoint_get(jc.run.id, PLAN_KEY).await? {
        let mut plan: Plan = serde_json::from_value(v)
            .map_err(|e| Error::json("stored retention plan is unreadable", e))?;
        if plan
            .items
            .iter()
            .any(|i| i.rules.iter().any(|r| r.form.is_none()))
        {
            assign_forms(db, config, &mut plan.items).await?;
        }
        return Ok((plan, true));
    }
    // Whole seconds: a text cutoff then orders exactly against stored text (see appdb).
    let basis = jc.run.scheduled_for.trunc_subsecs(0);
    // A real run's plan detaches the partitions it removes whole, and counts them there.
    let detacher = (!jc.dry_run).then_some(Detacher { jc, p });
    let plan = plan(
        config,
        store,
        db,
        basis,
        p.classes.as_deref(),
        detacher.as_ref(),
    )
    .await?;
    if !jc.dry_run {
        let v = serde_json::to_value(&plan).map_err(|e| Error::json("retention plan", e))?;
        store.checkpoint_put(jc.run.id, PLAN_KEY, &v).await?;
    }
    Ok((plan, false))
}

/// Deletes one plan item (unless done before a crash) and records it: the
/// item's JSON for the run's result.
#[allow(clippy::too_many_arguments)]
async fn purge_item(
    jc: &JobContext,
    db: &AppDb,
    p: &PurgeParams,
    index: usize,
    item: &PlanItem,
    done: &mut Progress,
    stats: &mut Stats,
    holds: &[crate::store::LegalHold],
) -> Result<(i64, Value)> {
    let config = jc.ctx.config.as_ref();
    let entry = entry_for(config, &item.table)?;
    let planned_scope = scope(entry, item, config)?;
    let by_org = if jc.dry_run {
        item.planned_by_org.clone()
    } else {
        let before = done.items.get(&index).cloned();
        if !before.as_ref().is_some_and(|d| d.finished) {
            let outcome = match drop_planned(jc, db, p, index, item, done).await {
                Ok(()) => delete_item(jc, db, p, index, item, &planned_scope, done, stats).await,
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                record_stopped(jc, item, done.items.get(&index)).await;
                return Err(e);
            }
        }
        // Resumed: a batch may have committed just before the crash, unrecorded;
        // then only what is left tells what went.
        let counted = match before {
            Some(_) => None,
            None => done.items.get(&index).map(|d| d.deleted),
        };
        deleted_by_org(db, item, &planned_scope, counted).await?
    };
    let deleted: i64 = by_org.values().sum();
    let hold_reason = |id: &i64| {
        holds
            .iter()
            .find(|h| h.id == *id)
            .map(|h| format!("{} {}: {}", h.scope.as_str(), h.value, h.reason))
    };
    let held: Vec<Value> = item
        .held
        .iter()
        .map(|(id, n)| json!({"hold_id": id, "rows": n, "reason": hold_reason(id)}))
        .collect();
    let out = json!({
        "class": item.class, "table": item.table, "rules": item.rules, "orgs": item.only_orgs,
        if jc.dry_run { "would_delete" } else { "deleted" }: deleted,
        "by_org": by_org, "skipped_for_holds": held,
        "partitions": partitions::outcomes(item, done.items.get(&index), p, jc.dry_run),
        "partition_notes": item.partition_notes,
    });
    if !jc.dry_run {
        crate::audit::record(
            jc.ctx.store.as_ref(),
            &jc.actor,
            "retention.purged",
            &format!("table:{}", item.table),
            json!({"run_id": jc.run.id, "class": item.class, "rules": item.rules, "orgs": item.only_orgs,
                   "deleted": deleted, "by_org": out["by_org"], "skipped_for_holds": held}),
        )
        .await?;
    }
    Ok((deleted, out))
}

pub async fn purge_job(jc: &JobContext, p: PurgeParams) -> Result<Value> {
    let store = jc.ctx.store.as_ref();
    let db = jc.ctx.app_db().await?;
    let warnings = preflight(jc.ctx.config.as_ref(), &db).await?;

    let mut stats = Stats::default();
    let planning = Instant::now();
    let (plan, resumed) = run_plan(jc, &db, &p).await?;
    let holds = store.holds(false).await?;
    let mut done: Progress = match store.checkpoint_get(jc.run.id, PROGRESS_KEY).await? {
        Some(v) => serde_json::from_value(v)
            .map_err(|e| Error::json("stored purge progress is unreadable", e))?,
        None => Progress::default(),
    };
    stats.plan_ms = planning.elapsed().as_millis();
    let deleting = Instant::now();
    let mut items_out = Vec::new();
    let mut total = 0i64;
    for (index, item) in plan.items.iter().enumerate() {
        let (deleted, out) =
            purge_item(jc, &db, &p, index, item, &mut done, &mut stats, &holds).await?;
        total += deleted;
        items_out.push(out);
    }
    let after_grace = drop_after_grace(jc, &db, &p).await?;
    let by_prefix = prefixes::purge_prefixes(jc, &db, plan.basis).await?;
    // Every purge finishes what earlier runs left: files of a dead run, or
    // files Object Lock kept until a date now past.
    let files = if jc.dry_run {
        objects::load(jc).await?
    } else {
        let files = objects::finish_for_run(jc, &db, Tail::Send).await?;
        objects::record(jc, &files).await?;
        files
    };
    Ok(json!({
        "dry_run": jc.dry_run,
        "basis": plan.basis.to_rfc3339(),
        "resumed": resumed,
        if jc.dry_run { "would_delete" } else { "deleted" }: total,
        "items": items_out,
        "partitions_dropped_after_grace": after_grace,
        "objects": files,
        "object_retention": by_prefix,
        "batches": stats.batches,
        "longest_batch_ms": stats.longest_batch_ms,
        "windows_redone": stats.windows_redone,
        "plan_ms": stats.plan_ms,
        "delete_ms": deleting.elapsed().as_millis(),
        "warnings": warnings.iter().map(|w| format!("{}: {}", w.location, w.message)).collect::<Vec<_>>(),
    }))
}

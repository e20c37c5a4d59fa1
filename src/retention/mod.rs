//! `retention.purge`: deletes what the data map says has expired, per class
//! and org, in short bounded batches; respects per-org overrides and legal
//! holds; leaves counts and cutoffs (never values) in the audit chain.
//!
//! A run first writes a *plan* (each scope's cutoffs and how many rows it
//! selects) as a checkpoint, and after every batch its progress (rows deleted
//! per org). Cutoffs come from the run's `scheduled_for`, so a retried run
//! after a crash deletes exactly the same set; its total is planned −
//! remaining, so every row is counted once whichever batch the crash hit (a
//! batch that committed just before the crash, before its progress was saved,
//! is reported as `(unattributed after crash)` instead of under its org).

mod rules;

pub use rules::{Period, RetentionRule};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::appdb::{check_data_map, AppDb, KeyRange, Scope, Selector};
use crate::config::{Config, DataMapEntry};
use crate::error::{Error, Result};
use crate::runner::JobContext;
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
    /// Pause between batches, to leave room for the application's own writes.
    #[serde(default)]
    pub pause_ms: u64,
    /// Only these data classes (default: all).
    #[serde(default)]
    pub classes: Option<Vec<String>>,
}

fn default_batch() -> u32 {
    5000
}

fn default_max_batch() -> u32 {
    1_000_000
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleCutoff {
    pub rule: String,
    pub cutoff: DateTime<Utc>,
}

/// One table's rows for a set of orgs: the union of its rules (so no row is
/// counted twice), and how many rows that selected at plan time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanItem {
    pub table: String,
    pub class: String,
    pub rules: Vec<RuleCutoff>,
    /// `Some`: an override scope for these orgs; `None`: the default scope.
    pub only_orgs: Option<Vec<String>>,
    pub exclude_orgs: Vec<String>,
    pub exclude_subjects: Vec<String>,
    /// Rows selected at plan time.
    pub planned: i64,
    /// Expired rows kept by a legal hold, by hold id.
    pub held: BTreeMap<i64, i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub basis: DateTime<Utc>,
    pub items: Vec<PlanItem>,
}

/// Fails with a config error (exit 2) naming the entry when the data map does not fit the schema.
pub async fn preflight(config: &Config, db: &AppDb) -> Result<Vec<crate::appdb::SchemaProblem>> {
    let problems = check_data_map(db, config).await?;
    if let Some(p) = problems.iter().find(|p| p.fatal) {
        return Err(Error::Config {
            path: p.location.clone().into(),
            line: None,
            column: None,
            message: format!("data_map entry `{}`: {}", p.table, p.message),
        });
    }
    Ok(problems.into_iter().filter(|p| !p.fatal).collect())
}

fn org_key(org: Option<String>) -> String {
    org.unwrap_or_default()
}

struct Holds {
    orgs: Vec<(i64, String)>,
    /// (hold id, subject id) after resolving emails.
    subjects: Vec<(i64, String)>,
}

async fn active_holds(store: &dyn Store, db: &AppDb, config: &Config) -> Result<Holds> {
    let all = store.holds(false).await?;
    let orgs = all
        .iter()
        .filter(|h| h.scope == HoldScope::Org)
        .map(|h| (h.id, h.value.clone()))
        .collect();
    let mut subjects = Vec::new();
    if let Some(app) = &config.app {
        for h in all.iter().filter(|h| h.scope == HoldScope::Subject) {
            for id in db
                .subject_ids(&app.subjects, std::slice::from_ref(&h.value))
                .await?
            {
                subjects.push((h.id, id));
            }
        }
    }
    Ok(Holds { orgs, subjects })
}

fn selector(
    entry: &DataMapEntry,
    rule: RetentionRule,
    cutoff: DateTime<Utc>,
    config: &Config,
) -> Result<Selector> {
    Ok(match rule {
        RetentionRule::Age(_) => Selector::Before {
            column: entry.timestamp.clone().unwrap_or_default(),
            cutoff,
        },
        RetentionRule::OrgClosed(_) => {
            let orgs = config
                .app
                .as_ref()
                .and_then(|a| a.orgs.as_ref())
                .ok_or_else(|| Error::Usage("org_closed rules need [app.orgs]".into()))?;
            Selector::OrgClosed {
                orgs_table: orgs.table.clone(),
                orgs_id: orgs.id.clone(),
                closed_at: orgs.closed_at.clone().unwrap_or_default(),
                cutoff,
            }
        }
    })
}

fn scope(entry: &DataMapEntry, item: &PlanItem, config: &Config) -> Result<Scope> {
    let mut selectors = Vec::new();
    for rc in &item.rules {
        let rule = RetentionRule::parse(&rc.rule)
            .map_err(Error::Usage)?
            .ok_or_else(|| Error::Usage(format!("plan rule `{}` keeps everything", rc.rule)))?;
        selectors.push(selector(entry, rule, rc.cutoff, config)?);
    }
    Ok(Scope {
        table: entry.table.clone(),
        org: entry.org.clone(),
        subject: entry.subject.clone(),
        selectors,
        only_orgs: item.only_orgs.clone(),
        exclude_orgs: item.exclude_orgs.clone(),
        exclude_subjects: item.exclude_subjects.clone(),
        range: None,
    })
}

fn rule_cutoff(rule: RetentionRule, basis: DateTime<Utc>) -> Result<RuleCutoff> {
    let cutoff = rule
        .period()
        .before(basis)
        .ok_or_else(|| Error::Usage(format!("retention {rule} reaches before the calendar")))?;
    Ok(RuleCutoff {
        rule: rule.to_string(),
        cutoff,
    })
}

/// Builds the plan: cutoffs from `basis`; each org with an override gets its
/// own item (its fixed periods replaced; `org_closed` rules still apply); held
/// orgs and subjects are excluded.
pub async fn plan(
    config: &Config,
    store: &dyn Store,
    db: &AppDb,
    basis: DateTime<Utc>,
    classes: Option<&[String]>,
) -> Result<Plan> {
    let overrides = store.overrides().await?;
    let holds = active_holds(store, db, config).await?;
    let held_orgs: Vec<String> = holds.orgs.iter().map(|(_, o)| o.clone()).collect();
    let held_subjects: Vec<String> = holds.subjects.iter().map(|(_, s)| s.clone()).collect();
    let mut items = Vec::new();
    for entry in &config.data_map {
        if entry.retention.is_empty() || classes.is_some_and(|c| !c.contains(&entry.class)) {
            continue;
        }
        let default_rules = entry
            .retention
            .iter()
            .map(|r| rule_cutoff(*r, basis))
            .collect::<Result<Vec<_>>>()?;
        let has_age = entry
            .retention
            .iter()
            .any(|r| matches!(r, RetentionRule::Age(_)));
        let class_overrides: Vec<_> = if has_age && entry.org.is_some() {
            overrides
                .iter()
                .filter(|o| o.class == entry.class)
                .collect()
        } else {
            vec![]
        };
        let mut default_excludes = held_orgs.clone();
        default_excludes.extend(class_overrides.iter().map(|o| o.org.clone()));
        let mut scopes = vec![(default_rules, None, default_excludes)];
        for o in &class_overrides {
            let p = Period::parse(&o.period).map_err(Error::Usage)?;
            let mut rules = vec![rule_cutoff(RetentionRule::Age(p), basis)?];
            for r in entry
                .retention
                .iter()
                .filter(|r| matches!(r, RetentionRule::OrgClosed(_)))
            {
                rules.push(rule_cutoff(*r, basis)?);
            }
            scopes.push((rules, Some(vec![o.org.clone()]), held_orgs.clone()));
        }
        for (rules, only_orgs, exclude_orgs) in scopes {
            let mut item = PlanItem {
                table: entry.table.clone(),
                class: entry.class.clone(),
                rules,
                only_orgs,
                exclude_orgs,
                exclude_subjects: held_subjects.clone(),
                planned: 0,
                held: BTreeMap::new(),
            };
            let s = scope(entry, &item, config)?;
            item.planned = db.count(&s).await?;
            item.held = held_counts(db, &s, &holds).await?;
            items.push(item);
        }
    }
    Ok(Plan { basis, items })
}

/// Expired rows that a hold keeps, by hold id.
async fn held_counts(db: &AppDb, s: &Scope, holds: &Holds) -> Result<BTreeMap<i64, i64>> {
    let mut out = BTreeMap::new();
    if s.org.is_some() {
        for (id, org) in &holds.orgs {
            let mut h = s.clone();
            h.only_orgs = Some(vec![org.clone()]);
            h.exclude_orgs.clear();
            h.exclude_subjects.clear();
            let n = db.count(&h).await?;
            if n > 0 {
                *out.entry(*id).or_default() += n;
            }
        }
    }
    if s.subject.is_some() {
        let mut base = s.clone();
        base.exclude_subjects.clear();
        for (id, subject) in &holds.subjects {
            let n = count_subject(db, &base, subject).await?;
            if n > 0 {
                *out.entry(*id).or_default() += n;
            }
        }
    }
    Ok(out)
}

/// Rows in `s` whose subject is `subject`: total minus the rows left when that subject is excluded.
async fn count_subject(db: &AppDb, s: &Scope, subject: &str) -> Result<i64> {
    let mut without = s.clone();
    without.exclude_subjects = vec![subject.to_string()];
    Ok(db.count(s).await? - db.count(&without).await?)
}

const PROGRESS_KEY: &str = "retention.progress";
const UNATTRIBUTED: &str = "(unattributed after crash)";

#[derive(Debug, Default)]
struct Stats {
    batches: u64,
    longest_batch_ms: u128,
    plan_ms: u128,
}

/// Rows deleted so far per plan item, saved after every batch.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Progress {
    items: BTreeMap<usize, ItemProgress>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct ItemProgress {
    by_org: BTreeMap<String, i64>,
    finished: bool,
}

/// Deletes one plan item in batches, saving progress after each.
#[allow(clippy::too_many_arguments)]
async fn delete_item(
    jc: &JobContext,
    db: &AppDb,
    config: &Config,
    p: &PurgeParams,
    index: usize,
    item: &PlanItem,
    planned_scope: &Scope,
    done: &mut Progress,
    stats: &mut Stats,
) -> Result<()> {
    let store = jc.ctx.store.as_ref();
    // Holds added since the plan was made are honoured too.
    let current = active_holds(store, db, config).await?;
    let mut delete_scope = planned_scope.clone();
    delete_scope
        .exclude_orgs
        .extend(current.orgs.into_iter().map(|(_, o)| o));
    delete_scope
        .exclude_subjects
        .extend(current.subjects.into_iter().map(|(_, s)| s));
    // One age rule: delete in slices of its timestamp (keyset), each slice ending where
    // the index says `batch` rows later; otherwise bounded ctid/rowid batches.
    let keyset = match delete_scope.selectors.as_slice() {
        [Selector::Before { column, cutoff }] => Some((column.clone(), db.key_text(*cutoff))),
        _ => None,
    };
    let mut batch = p.batch_size.max(1);
    let mut lower: Option<(String, bool)> = None;
    loop {
        let started = Instant::now();
        let (counts, last) = match &keyset {
            None => {
                let counts = db.delete_batch(&delete_scope, batch).await?;
                let n: i64 = counts.iter().map(|(_, n)| n).sum();
                (counts, n < i64::from(batch))
            }
            Some((column, cutoff)) => {
                let window = KeyRange {
                    column: column.clone(),
                    lower: lower.clone(),
                    upper: Some((cutoff.clone(), false)),
                };
                let (range, next, last) =
                    match db.key_at_offset(&item.table, &window, batch).await? {
                        None => (window, None, true),
                        // Many rows share one timestamp: take exactly that value, then move past it.
                        Some(u) if lower.as_ref().is_some_and(|(l, inc)| *inc && *l == u) => (
                            KeyRange {
                                column: column.clone(),
                                lower: Some((u.clone(), true)),
                                upper: Some((u.clone(), true)),
                            },
                            Some((u, false)),
                            false,
                        ),
                        Some(u) => (
                            KeyRange {
                                column: column.clone(),
                                lower: lower.clone(),
                                upper: Some((u.clone(), false)),
                            },
                            Some((u, true)),
                            false,
                        ),
                    };
                let mut slice = delete_scope.clone();
                slice.range = Some(range);
                let counts = db.delete_all(&slice).await?;
                lower = next;
                (counts, last)
            }
        };
        let took = started.elapsed();
        stats.batches += 1;
        stats.longest_batch_ms = stats.longest_batch_ms.max(took.as_millis());
        let entry = done.items.entry(index).or_default();
        for (org, n) in counts {
            *entry.by_org.entry(org_key(org)).or_default() += n;
        }
        entry.finished = last;
        let v = serde_json::to_value(&*done).map_err(|e| Error::Failed(e.to_string()))?;
        store.checkpoint_put(jc.run.id, PROGRESS_KEY, &v).await?;
        if last {
            return Ok(());
        }
        batch = adapt(batch, took, p.target_batch_ms, p.max_batch_size);
        if p.pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(p.pause_ms)).await;
        }
    }
}

pub async fn purge_job(jc: &JobContext) -> Result<Value> {
    let p: PurgeParams = jc.params()?;
    let config = jc.ctx.config.as_ref();
    let store = jc.ctx.store.as_ref();
    let db = AppDb::connect(&config.database.url).await?;
    let warnings = preflight(config, &db).await?;

    let mut stats = Stats::default();
    let planning = Instant::now();
    let stored = store.checkpoint_get(jc.run.id, PLAN_KEY).await?;
    let resumed = stored.is_some();
    let plan: Plan = match stored {
        Some(v) => serde_json::from_value(v)
            .map_err(|e| Error::Failed(format!("stored retention plan is unreadable: {e}")))?,
        None => {
            let plan = plan(
                config,
                store,
                &db,
                jc.run.scheduled_for,
                p.classes.as_deref(),
            )
            .await?;
            if !jc.dry_run {
                let v = serde_json::to_value(&plan).map_err(|e| Error::Failed(e.to_string()))?;
                store.checkpoint_put(jc.run.id, PLAN_KEY, &v).await?;
            }
            plan
        }
    };
    let holds = store.holds(false).await?;
    let hold_reason = |id: &i64| {
        holds
            .iter()
            .find(|h| h.id == *id)
            .map(|h| format!("{} {}: {}", h.scope.as_str(), h.value, h.reason))
    };
    let mut done: Progress = match store.checkpoint_get(jc.run.id, PROGRESS_KEY).await? {
        Some(v) => serde_json::from_value(v)
            .map_err(|e| Error::Failed(format!("stored purge progress is unreadable: {e}")))?,
        None => Progress::default(),
    };
    stats.plan_ms = planning.elapsed().as_millis();
    let deleting = Instant::now();
    let mut items_out = Vec::new();
    let mut total = 0i64;
    for (index, item) in plan.items.iter().enumerate() {
        let entry = config
            .data_map
            .iter()
            .find(|e| e.table == item.table)
            .ok_or_else(|| {
                Error::Failed(format!(
                    "table {} left the data map during the run",
                    item.table
                ))
            })?;
        let planned_scope = scope(entry, item, config)?;
        let by_org: BTreeMap<String, i64> = if jc.dry_run {
            db.count_by_org(&planned_scope)
                .await?
                .into_iter()
                .map(|(o, n)| (org_key(o), n))
                .collect()
        } else {
            let before = done.items.get(&index).cloned();
            if !before.as_ref().is_some_and(|d| d.finished) {
                delete_item(
                    jc,
                    &db,
                    config,
                    &p,
                    index,
                    item,
                    &planned_scope,
                    &mut done,
                    &mut stats,
                )
                .await?;
            }
            let mut by_org = done
                .items
                .get(&index)
                .map(|d| d.by_org.clone())
                .unwrap_or_default();
            if before.is_some() {
                // Resumed: the exact total is planned − remaining; a batch that committed
                // before its progress was saved shows up as the difference.
                let exact = item.planned - db.count(&planned_scope).await?;
                let attributed: i64 = by_org.values().sum();
                if exact > attributed {
                    by_org.insert(UNATTRIBUTED.into(), exact - attributed);
                }
            }
            by_org
        };
        let deleted: i64 = by_org.values().sum();
        total += deleted;
        let held: Vec<Value> = item
            .held
            .iter()
            .map(|(id, n)| json!({"hold_id": id, "rows": n, "reason": hold_reason(id)}))
            .collect();
        let out = json!({
            "class": item.class, "table": item.table, "rules": item.rules, "orgs": item.only_orgs,
            if jc.dry_run { "would_delete" } else { "deleted" }: deleted,
            "by_org": by_org, "skipped_for_holds": held,
        });
        if !jc.dry_run {
            crate::audit::record(
                store,
                &jc.actor,
                "retention.purged",
                &format!("table:{}", item.table),
                json!({"run_id": jc.run.id, "class": item.class, "rules": item.rules, "orgs": item.only_orgs,
                       "deleted": deleted, "by_org": out["by_org"], "skipped_for_holds": held}),
            )
            .await?;
        }
        items_out.push(out);
    }
    Ok(json!({
        "dry_run": jc.dry_run,
        "basis": plan.basis.to_rfc3339(),
        "resumed": resumed,
        if jc.dry_run { "would_delete" } else { "deleted" }: total,
        "items": items_out,
        "batches": stats.batches,
        "longest_batch_ms": stats.longest_batch_ms,
        "plan_ms": stats.plan_ms,
        "delete_ms": deleting.elapsed().as_millis(),
        "warnings": warnings.iter().map(|w| format!("{}: {}", w.location, w.message)).collect::<Vec<_>>(),
    }))
}

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

pub use crate::policy::{Period, RetentionRule};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::appdb::{AppDb, Deleted, DetectedForm, Scope, Selector, Slicing, TimeForm, TimeWindow};
use crate::config::{Config, DataMapEntry};
use crate::error::{Error, Result};
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleCutoff {
    pub rule: String,
    pub cutoff: DateTime<Utc>,
    /// How the column this rule compares stores time, detected for the plan
    /// (absent in plans written before detection existed: detected on resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<TimeForm>,
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
    /// Rows selected at plan time, in all and per org (`""`: rows without one).
    pub planned: i64,
    pub planned_by_org: BTreeMap<String, i64>,
    /// Expired rows kept by a legal hold, by hold id.
    pub held: BTreeMap<i64, i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub basis: DateTime<Utc>,
    pub items: Vec<PlanItem>,
}

/// Fails with a config error (exit 2) naming the entry when the data map does
/// not fit the schema (`appdb::preflight`), or a timestamp column's storage
/// cannot be read.
pub async fn preflight(config: &Config, db: &AppDb) -> Result<Vec<crate::appdb::SchemaProblem>> {
    let warnings = crate::appdb::preflight(config, db).await?;
    for c in time_forms(config, db, Utc::now()).await? {
        c.form()?;
    }
    Ok(warnings)
}

/// A column that a retention rule compares with a cutoff, and how it stores time.
#[derive(Debug, Clone)]
pub struct TimeColumn {
    /// `lethe.toml:LINE` of the first data map entry that compares it.
    pub location: String,
    pub table: String,
    pub column: String,
    /// `Err`: what was found and how to fix it.
    pub found: std::result::Result<DetectedForm, String>,
}

impl TimeColumn {
    /// The form, or the config error (exit 2) that names the entry and column.
    pub fn form(&self) -> Result<TimeForm> {
        self.found
            .as_ref()
            .map(|d| d.form)
            .map_err(|m| Error::Config {
                path: self.location.clone().into(),
                line: None,
                column: None,
                message: format!("data_map entry `{}`: {m}", self.table),
            })
    }
}

/// How each column the data map's default rules compare stores time, for
/// cutoffs taken from `basis` (what `check` reports and `run` refuses on).
pub async fn time_forms(
    config: &Config,
    db: &AppDb,
    basis: DateTime<Utc>,
) -> Result<Vec<TimeColumn>> {
    let mut items = Vec::new();
    for entry in config.data_map.iter().filter(|e| !e.retention.is_empty()) {
        let rules = entry
            .retention
            .iter()
            .map(|r| rule_cutoff(*r, basis))
            .collect::<Result<Vec<_>>>()?;
        items.push(plan_item(entry, rules, None, vec![], vec![]));
    }
    detect_columns(db, config, &items).await
}

/// The (table, column) a rule compares with its cutoff.
fn compared_column(entry: &DataMapEntry, rule: &str, config: &Config) -> Result<(String, String)> {
    let parsed = RetentionRule::parse(rule).map_err(Error::Usage)?;
    Ok(match parsed {
        Some(RetentionRule::OrgClosed(_)) => {
            let orgs = config.app.as_ref().and_then(|a| a.orgs.as_ref());
            let orgs =
                orgs.ok_or_else(|| Error::Usage("org_closed rules need [app.orgs]".into()))?;
            (
                orgs.table.clone(),
                orgs.closed_at.clone().unwrap_or_default(),
            )
        }
        _ => (
            entry.table.clone(),
            entry.timestamp.clone().unwrap_or_default(),
        ),
    })
}

fn entry_for<'a>(config: &'a Config, table: &str) -> Result<&'a DataMapEntry> {
    config
        .data_map
        .iter()
        .find(|e| e.table == table)
        .ok_or_else(|| Error::Failed(format!("table {table} left the data map during the run")))
}

/// Detects each compared column once, at the latest cutoff it is compared with
/// (every value that cutoff could select is checked).
async fn detect_columns(
    db: &AppDb,
    config: &Config,
    items: &[PlanItem],
) -> Result<Vec<TimeColumn>> {
    let mut latest: BTreeMap<(String, String), (String, DateTime<Utc>)> = BTreeMap::new();
    for item in items {
        let entry = entry_for(config, &item.table)?;
        for rc in &item.rules {
            let key = compared_column(entry, &rc.rule, config)?;
            let slot = latest
                .entry(key)
                .or_insert((entry.location.clone(), rc.cutoff));
            slot.1 = slot.1.max(rc.cutoff);
        }
    }
    let mut out = Vec::new();
    for ((table, column), (location, cutoff)) in latest {
        let found = match db.time_form(&table, &column, cutoff).await {
            Ok(d) => Ok(d),
            Err(Error::Usage(m)) => Err(m),
            Err(e) => return Err(e),
        };
        out.push(TimeColumn {
            location,
            table,
            column,
            found,
        });
    }
    Ok(out)
}

/// Records in every rule the form of the column it compares; a column that
/// cannot be read refuses the whole plan (config error) before anything is deleted.
async fn assign_forms(db: &AppDb, config: &Config, items: &mut [PlanItem]) -> Result<()> {
    let columns = detect_columns(db, config, items).await?;
    for item in items.iter_mut() {
        let entry = entry_for(config, &item.table)?;
        for rc in item.rules.iter_mut() {
            let key = compared_column(entry, &rc.rule, config)?;
            let col = columns
                .iter()
                .find(|c| (c.table.as_str(), c.column.as_str()) == (key.0.as_str(), key.1.as_str()))
                .ok_or_else(|| {
                    Error::Failed(format!("no form detected for {}.{}", key.0, key.1))
                })?;
            rc.form = Some(col.form()?);
        }
    }
    Ok(())
}

async fn count_by_org(db: &AppDb, s: &Scope) -> Result<BTreeMap<String, i64>> {
    Ok(db
        .count_by_org(s)
        .await?
        .into_iter()
        .map(|(o, n)| (o.unwrap_or_default(), n))
        .collect())
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
    rc: &RuleCutoff,
    config: &Config,
) -> Result<Selector> {
    let (cutoff, form) = (rc.cutoff, rc.form.unwrap_or(TimeForm::Native));
    Ok(match rule {
        RetentionRule::Age(_) => Selector::Before {
            column: entry.timestamp.clone().unwrap_or_default(),
            cutoff,
            form,
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
                form,
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
        selectors.push(selector(entry, rule, rc, config)?);
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
        form: None,
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
            items.push(plan_item(
                entry,
                rules,
                only_orgs,
                exclude_orgs,
                held_subjects.clone(),
            ));
        }
    }
    // Every compared column is read in its own storage form; refused before anything is counted.
    assign_forms(db, config, &mut items).await?;
    for item in &mut items {
        let s = scope(entry_for(config, &item.table)?, item, config)?;
        item.planned_by_org = count_by_org(db, &s).await?;
        item.planned = item.planned_by_org.values().sum();
        item.held = held_counts(db, &s, &holds).await?;
    }
    Ok(Plan { basis, items })
}

/// An item before counting.
fn plan_item(
    entry: &DataMapEntry,
    rules: Vec<RuleCutoff>,
    only_orgs: Option<Vec<String>>,
    exclude_orgs: Vec<String>,
    exclude_subjects: Vec<String>,
) -> PlanItem {
    PlanItem {
        table: entry.table.clone(),
        class: entry.class.clone(),
        rules,
        only_orgs,
        exclude_orgs,
        exclude_subjects,
        planned: 0,
        planned_by_org: BTreeMap::new(),
        held: BTreeMap::new(),
    }
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
/// Deleted rows the per-org counts cannot place: the application inserted or
/// deleted rows in scope while the purge ran.
const UNPLACED: &str = "(rows changed during the run)";

#[derive(Debug, Default)]
struct Stats {
    batches: u64,
    longest_batch_ms: u128,
    windows_redone: u64,
    plan_ms: u128,
}

/// How far each plan item got, saved after every batch.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Progress {
    items: BTreeMap<usize, ItemProgress>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct ItemProgress {
    /// Rows deleted by this attempt's batches (a resumed run recounts).
    deleted: i64,
    /// Time windows: every row in scope before this is gone.
    done_before: Option<DateTime<Utc>>,
    finished: bool,
}

/// Deletes one plan item, saving progress after each batch.
#[allow(clippy::too_many_arguments)]
async fn delete_item(
    jc: &JobContext,
    db: &AppDb,
    p: &PurgeParams,
    index: usize,
    item: &PlanItem,
    scope: &Scope,
    done: &mut Progress,
    stats: &mut Stats,
) -> Result<()> {
    // Holds added since the plan was made are honoured too: the batcher reads them before every statement.
    let mut batcher = Batcher {
        jc,
        db,
        p,
        index,
        item,
        done,
        stats,
        rows: p.batch_size.max(1),
        bar: progress::bar(
            &format!("purge {}", item.table),
            u64::try_from(item.planned).ok(),
            progress::Unit::Rows,
        ),
    };
    match scope.selectors.as_slice() {
        [Selector::Before { column, cutoff, .. }] if db.slicing() == Slicing::TimeWindows => {
            let (column, cutoff) = (column.clone(), *cutoff);
            batcher.windows(scope, &column, cutoff, item.planned).await
        }
        _ => batcher.row_batches(scope).await,
    }
}

struct Batcher<'a> {
    jc: &'a JobContext,
    db: &'a AppDb,
    p: &'a PurgeParams,
    index: usize,
    item: &'a PlanItem,
    done: &'a mut Progress,
    stats: &'a mut Stats,
    /// Rows the next batch aims at.
    rows: u32,
    bar: progress::Bar,
}

impl Batcher<'_> {
    /// Rows this item may still delete: what the plan counted, less what its
    /// batches deleted (a crash can only make this larger, never smaller).
    fn budget(&self) -> u64 {
        let deleted = self.done.items.get(&self.index).map_or(0, |d| d.deleted);
        u64::try_from(self.item.planned - deleted).unwrap_or(0)
    }

    /// `s` without the rows of the holds active now: a hold added mid-run
    /// keeps its rows from the next statement on.
    async fn held_out(&self, s: &Scope) -> Result<Scope> {
        let current =
            active_holds(self.jc.ctx.store.as_ref(), self.db, &self.jc.ctx.config).await?;
        let mut s = s.clone();
        s.exclude_orgs
            .extend(current.orgs.into_iter().map(|(_, o)| o));
        s.exclude_subjects
            .extend(current.subjects.into_iter().map(|(_, x)| x));
        Ok(s)
    }

    /// A statement deleted more than the plan allows: it was rolled back, and the run stops.
    fn over_plan(&self, would: u64, budget: u64) -> Error {
        let deleted = self.done.items.get(&self.index).map_or(0, |d| d.deleted);
        Error::Failed(format!(
            "purge of table `{}` stopped: one statement would have deleted {would} rows where at most \
             {budget} were allowed (plan {}, deleted so far {deleted}, batch size {}); it was rolled back. \
             Rows entered the scope after the plan was made (inserted, or updated to an older timestamp), \
             or the table's rows are not told apart; check the table, then run the purge again for a new plan",
            self.item.table, self.item.planned, self.rows
        ))
    }

    /// Counts one committed batch and saves progress.
    async fn committed(&mut self, n: u64, took: Duration, progress: ItemProgress) -> Result<()> {
        self.bar.inc(n);
        self.stats.batches += 1;
        self.stats.longest_batch_ms = self.stats.longest_batch_ms.max(took.as_millis());
        let finished = progress.finished;
        self.save(n, progress).await?;
        if !finished {
            self.rows = adapt(
                self.rows,
                took,
                self.p.target_batch_ms,
                self.p.max_batch_size,
            );
            if self.p.pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(self.p.pause_ms)).await;
            }
        }
        Ok(())
    }

    /// `LIMIT`ed batches until the scope is empty.
    async fn row_batches(&mut self, scope: &Scope) -> Result<()> {
        self.drain(scope, true).await
    }

    /// Row batches over `scope`; marks the item finished at the end when `last`.
    async fn drain(&mut self, scope: &Scope, last: bool) -> Result<()> {
        let done_before = self.done.items.get(&self.index).and_then(|d| d.done_before);
        loop {
            let started = Instant::now();
            let budget = self.budget().min(u64::from(self.rows));
            let s = self.held_out(scope).await?;
            self.jc.fence.check()?; // each statement commits: only while the lease holds
            let n = match self.db.delete_batch(&s, self.rows, budget).await? {
                Deleted::Rows(n) => n,
                Deleted::OverBudget(n) => return Err(self.over_plan(n, budget)),
                Deleted::TooSlow => {
                    return Err(Error::Failed("a row batch has no time limit".into()))
                }
            };
            let end = n < u64::from(self.rows);
            let progress = ItemProgress {
                done_before,
                finished: end && last,
                ..Default::default()
            };
            self.committed(n, started.elapsed(), progress).await?;
            if end {
                return Ok(());
            }
        }
    }

    /// Windows `[lower, upper)` of the timestamp, oldest first, each sized to
    /// hold about `self.rows` rows at the density the last window had.
    async fn windows(
        &mut self,
        scope: &Scope,
        column: &str,
        cutoff: DateTime<Utc>,
        planned: i64,
    ) -> Result<()> {
        let limit = Duration::from_millis(self.p.max_transaction_ms.max(1));
        let mut lower = self.done.items.get(&self.index).and_then(|d| d.done_before);
        let within = |lower: Option<DateTime<Utc>>| {
            let mut s = scope.clone();
            s.range = Some(TimeWindow {
                column: column.to_string(),
                lower,
                upper: None,
            });
            s
        };
        let Some(first) = self.db.first_time(&within(lower), column).await? else {
            return self.finish_empty(lower).await;
        };
        // First width: the plan's rows spread evenly between the oldest row and the cutoff.
        let span = (cutoff - first)
            .num_microseconds()
            .unwrap_or(i64::MAX)
            .max(1);
        let mut width = if planned > 0 {
            scale(span, f64::from(self.rows) / planned as f64)
        } else {
            span
        };
        let mut upper = first.checked_add_signed(chrono::Duration::microseconds(width));
        loop {
            let last = upper.is_none_or(|u| u >= cutoff);
            let mut slice = within(lower);
            if let (Some(r), false) = (slice.range.as_mut(), last) {
                r.upper = upper;
            }
            let started = Instant::now();
            let budget = self.budget();
            let slice = self.held_out(&slice).await?;
            self.jc.fence.check()?; // each statement commits: only while the lease holds
            let n = match self.db.delete_within(&slice, limit, budget).await? {
                Deleted::Rows(n) => n,
                Deleted::OverBudget(n) => return Err(self.over_plan(n, budget)),
                Deleted::TooSlow => {
                    // Too slow (denser than the last window, or blocked by a lock):
                    // nothing was deleted; redo this window in bounded row batches.
                    self.stats.windows_redone += 1;
                    width = (width / 4).max(1);
                    self.drain(&slice, false).await?;
                    0
                }
            };
            let done_before = if last { None } else { upper };
            let progress = ItemProgress {
                done_before,
                finished: last,
                ..Default::default()
            };
            self.committed(n, started.elapsed(), progress).await?;
            if last {
                return Ok(());
            }
            lower = done_before;
            let start = if n > 0 {
                // Aim the next window at the adapted row count, at this window's density,
                // changing width at most fourfold per step.
                let ratio = f64::from(self.rows) / n as f64;
                width = scale(width, ratio.clamp(0.25, 4.0));
                lower
            } else {
                // A gap: jump to the next row still in scope.
                match self.db.first_time(&within(lower), column).await? {
                    Some(next) => Some(next),
                    None => return self.finish_empty(lower).await,
                }
            };
            upper = start.and_then(|s| s.checked_add_signed(chrono::Duration::microseconds(width)));
        }
    }

    /// Nothing (more) in scope: mark the item finished.
    async fn finish_empty(&mut self, done_before: Option<DateTime<Utc>>) -> Result<()> {
        let progress = ItemProgress {
            done_before,
            finished: true,
            ..Default::default()
        };
        self.save(0, progress).await
    }

    /// Adds `n` deleted rows and the new position to the progress checkpoint.
    async fn save(&mut self, n: u64, progress: ItemProgress) -> Result<()> {
        let entry = self.done.items.entry(self.index).or_default();
        entry.deleted += i64::try_from(n).unwrap_or(i64::MAX);
        entry.done_before = progress.done_before;
        entry.finished = progress.finished;
        let v = serde_json::to_value(&*self.done).map_err(|e| Error::Failed(e.to_string()))?;
        self.jc
            .ctx
            .store
            .checkpoint_put(self.jc.run.id, PROGRESS_KEY, &v)
            .await?;
        Ok(())
    }
}

/// `width × ratio`, at least one microsecond.
fn scale(width: i64, ratio: f64) -> i64 {
    ((width as f64) * ratio).clamp(1.0, i64::MAX as f64) as i64
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

pub async fn purge_job(jc: &JobContext, p: PurgeParams) -> Result<Value> {
    let config = jc.ctx.config.as_ref();
    let store = jc.ctx.store.as_ref();
    let db = jc.ctx.app_db().await?;
    let warnings = preflight(config, &db).await?;

    let mut stats = Stats::default();
    let planning = Instant::now();
    let stored = store.checkpoint_get(jc.run.id, PLAN_KEY).await?;
    let resumed = stored.is_some();
    let plan: Plan = match stored {
        Some(v) => {
            let mut plan: Plan = serde_json::from_value(v)
                .map_err(|e| Error::Failed(format!("stored retention plan is unreadable: {e}")))?;
            if plan
                .items
                .iter()
                .any(|i| i.rules.iter().any(|r| r.form.is_none()))
            {
                assign_forms(&db, config, &mut plan.items).await?;
            }
            plan
        }
        None => {
            // Whole seconds: a text cutoff then orders exactly against stored text (see appdb).
            let basis = jc.run.scheduled_for.trunc_subsecs(0);
            let plan = plan(config, store, &db, basis, p.classes.as_deref()).await?;
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
        let entry = entry_for(config, &item.table)?;
        let planned_scope = scope(entry, item, config)?;
        let by_org = if jc.dry_run {
            item.planned_by_org.clone()
        } else {
            let before = done.items.get(&index).cloned();
            if !before.as_ref().is_some_and(|d| d.finished) {
                let outcome = delete_item(
                    jc,
                    &db,
                    &p,
                    index,
                    item,
                    &planned_scope,
                    &mut done,
                    &mut stats,
                )
                .await;
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
            deleted_by_org(&db, item, &planned_scope, counted).await?
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
        "windows_redone": stats.windows_redone,
        "plan_ms": stats.plan_ms,
        "delete_ms": deleting.elapsed().as_millis(),
        "warnings": warnings.iter().map(|w| format!("{}: {}", w.location, w.message)).collect::<Vec<_>>(),
    }))
}

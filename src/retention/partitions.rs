//! Partitions removed whole (PostgreSQL). A table range-partitioned on the
//! timestamp its age rule compares has partitions whose upper bound is at or
//! before the cutoff: PostgreSQL guarantees they hold only expired rows. Each
//! such partition whose every row is in scope (no row of a held subject or
//! org, or of an org with its own override) is detached while the plan is
//! made — concurrently where the table has no default partition — and
//! counted per org there: nothing can change a detached table, so the plan's
//! counts are exact and each expired row is read once. The run then drops it
//! (or keeps it detached for `detach_grace`, and a later run drops it). A
//! detached partition carries a mark (its table comment), so one that a dead
//! run leaves behind is dropped by the next. Anything else (a partition
//! straddling the cutoff, the default partition, one holding held rows,
//! sub-partitions, inheritance children) takes the row path.

use super::*;
use crate::appdb::{Detach, NotByRange, PartitionState, RangePartition};

/// A detached partition says so in its comment, with when it may be dropped.
const MARK: &str = "lethe: detached from ";

/// A partition the plan removes whole: detached, with the rows it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionDrop {
    pub name: String,
    /// Its bound, to attach it back if it must stay.
    pub bound: String,
    /// Detached concurrently (the table has no default partition).
    pub concurrently: bool,
    pub rows: i64,
    pub by_org: BTreeMap<String, i64>,
}

/// What became of one planned partition, saved as it happens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(super) enum PartitionStep {
    /// Attached back (a hold placed since the plan): the row path decides.
    Kept,
    /// Dropped (or kept detached for the grace period): the plan's rows went.
    Done,
}

/// What a real run's plan may do to the application: detach and mark.
pub(super) struct Detacher<'a> {
    pub(super) jc: &'a JobContext,
    pub(super) p: &'a PurgeParams,
}

/// An item whose one rule is an age rule on a native timestamp, for all orgs
/// but the excluded, with no files to delete with its rows.
fn eligible(entry: &DataMapEntry, item: &PlanItem) -> Option<(String, DateTime<Utc>)> {
    let [rc] = item.rules.as_slice() else {
        return None;
    };
    let age = matches!(
        RetentionRule::parse(&rc.rule),
        Ok(Some(RetentionRule::Age(_)))
    );
    let native = matches!(rc.form, Some(TimeForm::Native));
    (age && native && item.only_orgs.is_none() && entry.objects.is_empty())
        .then(|| entry.timestamp.clone().map(|c| (c, rc.cutoff)))
        .flatten()
}

/// What the plan does with a table's partitions.
#[derive(Default)]
pub(super) struct PartitionPlan {
    /// The partitions removed whole.
    pub(super) drops: Vec<PartitionDrop>,
    /// Why partitions that lie before the cutoff are not.
    pub(super) notes: Vec<String>,
    /// The whole scope's rows by org, when they were counted here.
    pub(super) by_org: Option<BTreeMap<String, i64>>,
}

/// The partitions of `item`'s table removed whole, and why others are not.
/// With a `Detacher` (a real run) each is detached and counted now; without
/// (a dry run) it is only counted.
pub(super) async fn plan_drops(
    db: &AppDb,
    entry: &DataMapEntry,
    item: &PlanItem,
    scope: &Scope,
    detacher: Option<&Detacher<'_>>,
) -> Result<PartitionPlan> {
    let Some((column, cutoff)) = eligible(entry, item) else {
        return Ok(PartitionPlan::default());
    };
    let layout = match db.range_partitions(&item.table, &column, cutoff).await? {
        Ok(l) => l,
        Err(NotByRange::NotPartitioned) => return Ok(PartitionPlan::default()),
        Err(NotByRange::OtherKey(why)) => {
            return Ok(PartitionPlan {
                notes: vec![format!(
                    "table `{}` is {why}: its expired rows are deleted row by row",
                    item.table
                )],
                ..Default::default()
            })
        }
    };
    let mut plan = PartitionPlan::default();
    if let Some(why) = &layout.unfit {
        plan.notes.push(format!(
            "no partition of `{}` is dropped whole: {why}; its expired rows are deleted row by row",
            item.table
        ));
    }
    let mut candidates = Vec::new();
    for part in layout
        .partitions
        .iter()
        .filter(|p| p.wholly_before && layout.unfit.is_none())
    {
        match unfit(db, entry, item, part).await? {
            Some(why) => plan.notes.push(format!(
                "partition `{}` of `{}` is not dropped whole: {why}; its rows are deleted row by row",
                part.name, item.table
            )),
            None => candidates.push(part),
        }
    }
    match detacher {
        None => dry_run_counts(db, scope, &candidates, layout.has_default, &mut plan).await?,
        Some(d) => {
            detach_now(
                db,
                d,
                item,
                scope,
                &candidates,
                layout.has_default,
                &mut plan,
            )
            .await?
        }
    }
    Ok(plan)
}

/// A dry run: the candidates counted where they are, the scope with them.
async fn dry_run_counts(
    db: &AppDb,
    scope: &Scope,
    candidates: &[&RangePartition],
    has_default: bool,
    plan: &mut PartitionPlan,
) -> Result<()> {
    let counts = db.count_by_partition_and_org(scope).await?;
    let mut whole: BTreeMap<String, i64> = BTreeMap::new();
    for (_, o, n) in &counts {
        *whole.entry(o.clone().unwrap_or_default()).or_default() += n;
    }
    for part in candidates {
        let by_org: BTreeMap<String, i64> = counts
            .iter()
            .filter(|(p, _, _)| *p == part.name)
            .map(|(_, o, n)| (o.clone().unwrap_or_default(), *n))
            .collect();
        plan.drops.push(drop_of(part, has_default, by_org));
    }
    plan.by_org = Some(whole);
    Ok(())
}

fn drop_of(
    part: &RangePartition,
    has_default: bool,
    by_org: BTreeMap<String, i64>,
) -> PartitionDrop {
    PartitionDrop {
        name: part.name.clone(),
        bound: part.bound.clone(),
        concurrently: !has_default,
        rows: by_org.values().sum(),
        by_org,
    }
}

/// A real run: each candidate detached, marked and counted (frozen, so
/// exactly); then the rest of the scope counted in the table.
async fn detach_now(
    db: &AppDb,
    d: &Detacher<'_>,
    item: &PlanItem,
    scope: &Scope,
    candidates: &[&RangePartition],
    has_default: bool,
    plan: &mut PartitionPlan,
) -> Result<()> {
    let entry = entry_for(&d.jc.ctx.config, &item.table)?;
    let wait = Duration::from_millis(d.p.max_transaction_ms);
    let mut detached = Vec::new();
    for part in candidates {
        d.jc.fence.check()?; // each step commits: only while the lease holds
        match db
            .detach_partition(&item.table, &part.name, !has_default, wait)
            .await?
        {
            Detach::Done => {}
            Detach::Locked => {
                // A plain detach locks the whole table: the others would wait the same.
                plan.notes.push(format!(
                    "the application held a lock on `{}` for longer than max_transaction_ms: its partitions are deleted row by row this run",
                    item.table
                ));
                break;
            }
            Detach::NotAttached => continue,
        }
        mark(d.jc, db, d.p, &item.table, &part.name).await?;
        detached.push(*part);
    }
    // Two counts at a time: each is one backend's scan, and PostgreSQL has the cores.
    let org = entry.org.as_deref();
    for pair in detached.chunks(2) {
        let (first, second) = match pair {
            [a, b] => {
                let (x, y) =
                    tokio::join!(db.rows_by_org(&a.name, org), db.rows_by_org(&b.name, org));
                ((a, x?), Some((b, y?)))
            }
            [a] => ((a, db.rows_by_org(&a.name, org).await?), None),
            _ => continue,
        };
        for (part, rows) in std::iter::once(first).chain(second) {
            plan.drops.push(drop_of(part, has_default, by_org(rows)));
        }
    }
    let mut whole = count_by_org(db, scope).await?;
    for drop in &plan.drops {
        for (o, n) in &drop.by_org {
            *whole.entry(o.clone()).or_default() += n;
        }
    }
    plan.by_org = Some(whole);
    Ok(())
}

/// Why a partition before the cutoff is not removed whole, if it is not.
async fn unfit(
    db: &AppDb,
    entry: &DataMapEntry,
    item: &PlanItem,
    part: &RangePartition,
) -> Result<Option<String>> {
    if let Some(why) = &part.unfit {
        return Ok(Some(why.clone()));
    }
    if part.sub_partitioned {
        return Ok(Some("it is partitioned itself".into()));
    }
    let org = entry
        .org
        .as_deref()
        .map(|c| (c, item.exclude_orgs.as_slice()));
    let subject = entry
        .subject
        .as_deref()
        .map(|c| (c, item.exclude_subjects.as_slice()));
    Ok((db.rows_of(&part.name, org, subject).await? > 0)
        .then(|| "it holds rows under a legal hold or an org's own retention".into()))
}

/// What became of each planned partition, for the run's result.
pub(super) fn outcomes(
    item: &PlanItem,
    done: Option<&ItemProgress>,
    p: &PurgeParams,
    dry_run: bool,
) -> Vec<Value> {
    let removed = if p.detach_grace.is_some() {
        "detached"
    } else {
        "dropped"
    };
    item.partitions
        .iter()
        .map(|d| {
            let outcome = match done.and_then(|i| i.partitions.get(&d.name)) {
                _ if dry_run => format!("would be {removed}"),
                Some(PartitionStep::Done) => removed.to_string(),
                Some(PartitionStep::Kept) => {
                    "kept: attached back, its rows were deleted row by row".into()
                }
                None => "not reached".into(),
            };
            json!({"partition": d.name, "rows": d.rows, "outcome": outcome})
        })
        .collect()
}

fn by_org(rows: Vec<(Option<String>, i64)>) -> BTreeMap<String, i64> {
    rows.into_iter()
        .map(|(o, n)| (o.unwrap_or_default(), n))
        .collect()
}

/// Drops the item's planned partitions (detached by the plan); their rows
/// count as the item's deleted ones.
pub(super) async fn drop_planned(
    jc: &JobContext,
    db: &AppDb,
    p: &PurgeParams,
    index: usize,
    item: &PlanItem,
    done: &mut Progress,
) -> Result<()> {
    if !item.partitions.is_empty() {
        crate::test_hooks::pause_point("before_drop").await;
    }
    let entry = entry_for(&jc.ctx.config, &item.table)?;
    for d in &item.partitions {
        if done
            .items
            .get(&index)
            .is_some_and(|i| i.partitions.contains_key(&d.name))
        {
            continue;
        }
        crate::test_hooks::crash_point("partition_planned");
        let step = match db.partition_state(&item.table, &d.name).await? {
            // A hold placed since the plan keeps it: back it goes, for the row path.
            PartitionState::Detached if held_rows(jc, db, entry, &d.name).await? > 0 => {
                attach_back(jc, db, item, d).await?;
                PartitionStep::Kept
            }
            PartitionState::Detached => {
                finish_one(jc, db, p, item, d).await?;
                PartitionStep::Done
            }
            // Dropped before a crash (its evidence is recorded now, if then it was not).
            PartitionState::Gone => {
                record(jc, item, d, "retention.partition_dropped", None).await?;
                PartitionStep::Done
            }
            // Attached back by someone: its rows are in the table again, for the row path.
            _ => PartitionStep::Kept,
        };
        let rows = if step == PartitionStep::Done {
            d.rows
        } else {
            0
        };
        save(jc, done, index, &d.name, step, rows).await?;
    }
    Ok(())
}

/// Rows of `table` that the holds active now keep.
async fn held_rows(jc: &JobContext, db: &AppDb, entry: &DataMapEntry, table: &str) -> Result<i64> {
    let holds = active_holds(jc.ctx.store.as_ref(), db, &jc.ctx.config).await?;
    let orgs: Vec<String> = holds.orgs.into_iter().map(|(_, o)| o).collect();
    let subjects: Vec<String> = holds.subjects.into_iter().map(|(_, s)| s).collect();
    let org = entry.org.as_deref().map(|c| (c, orgs.as_slice()));
    let subject = entry.subject.as_deref().map(|c| (c, subjects.as_slice()));
    db.rows_of(table, org, subject).await
}

/// Attaches a partition that must stay back, and takes its mark off.
async fn attach_back(
    jc: &JobContext,
    db: &AppDb,
    item: &PlanItem,
    d: &PartitionDrop,
) -> Result<()> {
    jc.fence.check()?;
    db.attach_partition(&item.table, &d.name, &d.bound, Duration::from_secs(5))
        .await?;
    db.mark_detached(&d.name, "").await
}

/// Marks a detached partition with when it may be dropped: now plus the
/// grace period (none: now, for the next run should this one not drop it).
async fn mark(
    jc: &JobContext,
    db: &AppDb,
    p: &PurgeParams,
    table: &str,
    partition: &str,
) -> Result<()> {
    let now = jc.ctx.store.now().await?;
    let grace = p
        .detach_grace
        .as_ref()
        .map_or(std::time::Duration::ZERO, |g| g.get());
    let after = now + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let note = format!(
        "{MARK}{table} by retention.purge run {} at {}; drop after {}",
        jc.run.id,
        now.to_rfc3339(),
        after.to_rfc3339()
    );
    jc.fence.check()?;
    db.mark_detached(partition, &note).await
}

/// Drops the detached partition, unless a grace period keeps it (or the
/// application holds a lock on it): then a later run drops it, as its mark
/// says. Records the evidence either way.
async fn finish_one(
    jc: &JobContext,
    db: &AppDb,
    p: &PurgeParams,
    item: &PlanItem,
    d: &PartitionDrop,
) -> Result<()> {
    let grace = p
        .detach_grace
        .as_ref()
        .map(|g| g.get())
        .filter(|g| !g.is_zero());
    let wait = Duration::from_millis(p.max_transaction_ms);
    jc.fence.check()?;
    if grace.is_none() && db.drop_detached(&item.table, &d.name, wait).await? {
        return record(jc, item, d, "retention.partition_dropped", None).await;
    }
    let why = match grace {
        Some(g) => format!(
            "for the grace period of {}",
            crate::policy::format_duration(g)
        ),
        None => "the application held a lock on it: the next run drops it".into(),
    };
    record(jc, item, d, "retention.partition_detached", Some(why)).await
}

async fn record(
    jc: &JobContext,
    item: &PlanItem,
    d: &PartitionDrop,
    action: &str,
    kept: Option<String>,
) -> Result<()> {
    let mut details = json!({"run_id": jc.run.id, "class": item.class, "table": item.table,
                             "partition": d.name, "bound": d.bound, "rows": d.rows, "by_org": d.by_org});
    if let Some(why) = kept {
        details["kept_detached"] = json!(why);
    }
    let target = format!("table:{}", item.table);
    crate::audit::record(jc.ctx.store.as_ref(), &jc.actor, action, &target, details).await?;
    Ok(())
}

async fn save(
    jc: &JobContext,
    done: &mut Progress,
    index: usize,
    name: &str,
    step: PartitionStep,
    rows: i64,
) -> Result<()> {
    let entry = done.items.entry(index).or_default();
    entry.partitions.insert(name.to_string(), step);
    entry.deleted += rows;
    let v = serde_json::to_value(&*done).map_err(|e| Error::json("purge progress", e))?;
    jc.ctx
        .store
        .checkpoint_put(jc.run.id, PROGRESS_KEY, &v)
        .await?;
    Ok(())
}

/// Whether the run that marked a partition (`"N at …"`) is still running:
/// then that run drops it, not this one.
async fn still_running(jc: &JobContext, rest: &str) -> Result<bool> {
    let Some(id) = rest.split(' ').next().and_then(|n| n.parse::<i64>().ok()) else {
        return Ok(false);
    };
    if id == jc.run.id {
        return Ok(false);
    }
    let run = jc.ctx.store.get_run(id).await?;
    Ok(run.is_some_and(|r| r.state == crate::store::RunState::Running))
}

/// Partitions left detached by earlier runs whose time is up (their grace
/// period is over, or a run died before it could drop them): dropped now,
/// each with its evidence, counted now. A dry run lists them.
pub(super) async fn drop_after_grace(
    jc: &JobContext,
    db: &AppDb,
    p: &PurgeParams,
) -> Result<Vec<Value>> {
    let now = jc.ctx.store.now().await?;
    let mut out = Vec::new();
    for (table, note) in db.marked_tables(MARK).await? {
        let Some(after) = note
            .rsplit_once("; drop after ")
            .and_then(|(_, t)| DateTime::parse_from_rfc3339(t).ok())
        else {
            continue;
        };
        let Some((parent, rest)) = note
            .strip_prefix(MARK)
            .and_then(|rest| rest.split_once(" by retention.purge run "))
        else {
            continue;
        };
        let parent = parent.to_string();
        if after.with_timezone(&Utc) > now || still_running(jc, rest).await? {
            continue;
        }
        // Attached back since, or not there: not ours to drop.
        if db.partition_state(&parent, &table).await? != PartitionState::Detached {
            continue;
        }
        let entry = entry_for(&jc.ctx.config, &parent).ok();
        if let Some(e) = entry {
            if held_rows(jc, db, e, &table).await? > 0 {
                out.push(json!({"table": parent, "partition": table,
                                "kept": "it holds rows under a legal hold: attach it back or keep it"}));
                continue;
            }
        }
        let counted = by_org(
            db.rows_by_org(&table, entry.and_then(|e| e.org.as_deref()))
                .await?,
        );
        let rows: i64 = counted.values().sum();
        if !jc.dry_run {
            // Still locked by the application: the next run tries again.
            let wait = Duration::from_millis(p.max_transaction_ms);
            jc.fence.check()?;
            if !db.drop_detached(&parent, &table, wait).await? {
                continue;
            }
            crate::audit::record(
                jc.ctx.store.as_ref(),
                &jc.actor,
                "retention.partition_dropped",
                &format!("table:{parent}"),
                json!({"run_id": jc.run.id, "table": parent, "partition": table, "rows": rows,
                       "by_org": counted, "detached": note}),
            )
            .await?;
        }
        out.push(json!({"table": parent, "partition": table, "rows": rows, "by_org": counted}));
    }
    Ok(out)
}

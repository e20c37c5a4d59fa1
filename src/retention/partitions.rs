//! Partitions removed whole (PostgreSQL). A table range-partitioned on the
//! timestamp its age rule compares has partitions whose upper bound is at or
//! before the cutoff: PostgreSQL guarantees they hold only expired rows. Each
//! such partition whose every row is in the plan (no row of a held subject or
//! org, or of an org with its own override) is detached — concurrently where
//! the table has no default partition — counted per org once detached
//! (nothing can change it any more: the evidence is exact), and dropped, or
//! kept detached for `detach_grace` and dropped by a later run. Anything else
//! (a partition straddling the cutoff, the default partition, one holding
//! held rows, sub-partitions, inheritance children) takes the row path.

use super::*;
use crate::appdb::{Detach, NotByRange, PartitionState};

/// A detached partition kept for its grace period says so in its comment.
const MARK: &str = "lethe: detached from ";

/// A partition the plan removes whole, with the rows it held at plan time.
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

/// How far one partition got, saved before and after each step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) enum PartitionStep {
    Detaching,
    /// Detached and counted: these rows per org left the table.
    Counted(BTreeMap<String, i64>),
    /// Kept: rows of a hold added since the plan; the row path decides.
    Kept,
    Done(BTreeMap<String, i64>),
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
    /// The whole scope's rows by org, when they were counted by partition.
    pub(super) by_org: Option<BTreeMap<String, i64>>,
}

/// The partitions of `item`'s table removed whole, and why others are not
/// (for the plan's warnings).
pub(super) async fn plan_drops(
    db: &AppDb,
    entry: &DataMapEntry,
    item: &PlanItem,
    scope: &Scope,
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
    let mut notes = Vec::new();
    let counts = db.count_by_partition_and_org(scope).await?;
    let mut whole: BTreeMap<String, i64> = BTreeMap::new();
    for (_, o, n) in &counts {
        *whole.entry(o.clone().unwrap_or_default()).or_default() += n;
    }
    let mut drops = Vec::new();
    if let Some(why) = &layout.unfit {
        notes.push(format!(
            "no partition of `{}` is dropped whole: {why}; its expired rows are deleted row by row",
            item.table
        ));
    }
    let candidates = layout
        .partitions
        .iter()
        .filter(|p| p.wholly_before && layout.unfit.is_none());
    for part in candidates {
        if let Some(why) = unfit(db, entry, item, part).await? {
            notes.push(format!(
                "partition `{}` of `{}` is not dropped whole: {why}; its rows are deleted row by row",
                part.name, item.table
            ));
            continue;
        }
        let by_org: BTreeMap<String, i64> = counts
            .iter()
            .filter(|(p, _, _)| *p == part.name)
            .map(|(_, o, n)| (o.clone().unwrap_or_default(), *n))
            .collect();
        drops.push(PartitionDrop {
            name: part.name.clone(),
            bound: part.bound.clone(),
            concurrently: !layout.has_default,
            rows: by_org.values().sum(),
            by_org,
        });
    }
    Ok(PartitionPlan {
        drops,
        notes,
        by_org: Some(whole),
    })
}

/// Why a partition before the cutoff is not removed whole, if it is not.
async fn unfit(
    db: &AppDb,
    entry: &DataMapEntry,
    item: &PlanItem,
    part: &crate::appdb::RangePartition,
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

/// What became of each planned partition, for the run's result: `rows` as
/// counted once detached (planned, in a dry run).
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
            let (outcome, rows) = match done.and_then(|i| i.partitions.get(&d.name)) {
                _ if dry_run => (format!("would be {removed}"), d.rows),
                Some(PartitionStep::Done(c)) => (removed.to_string(), c.values().sum()),
                Some(PartitionStep::Kept) => {
                    ("kept: its rows were deleted row by row".into(), d.rows)
                }
                _ => ("not reached".into(), d.rows),
            };
            json!({"partition": d.name, "rows": rows, "outcome": outcome})
        })
        .collect()
}

fn by_org(rows: Vec<(Option<String>, i64)>) -> BTreeMap<String, i64> {
    rows.into_iter()
        .map(|(o, n)| (o.unwrap_or_default(), n))
        .collect()
}

/// Removes the item's planned partitions; returns the rows they held.
pub(super) async fn drop_planned(
    jc: &JobContext,
    db: &AppDb,
    p: &PurgeParams,
    index: usize,
    item: &PlanItem,
    done: &mut Progress,
) -> Result<i64> {
    let mut removed = 0;
    // A plain detach locks the whole table: once the application's locks
    // keep it waiting, the other partitions are not tried this run either.
    let mut table_busy = false;
    if !item.partitions.is_empty() {
        super::objects::pause_point("before_detach").await;
    }
    for d in &item.partitions {
        let step = done
            .items
            .get(&index)
            .and_then(|i| i.partitions.get(&d.name))
            .cloned();
        let counted = match step {
            Some(PartitionStep::Done(c)) => {
                removed += c.values().sum::<i64>();
                continue;
            }
            Some(PartitionStep::Kept) => continue,
            Some(PartitionStep::Counted(c)) => c,
            Some(PartitionStep::Detaching) | None if table_busy && !d.concurrently => {
                save(jc, done, index, &d.name, PartitionStep::Kept, 0).await?;
                continue;
            }
            Some(PartitionStep::Detaching) | None => {
                match detach_and_count(jc, db, p, index, item, d, done).await? {
                    Detached::Counted(c) => c,
                    Detached::Locked => {
                        table_busy = true;
                        continue;
                    }
                    Detached::Held => continue,
                }
            }
        };
        let rows: i64 = counted.values().sum();
        finish_one(jc, db, p, item, d, &counted).await?;
        save(jc, done, index, &d.name, PartitionStep::Done(counted), rows).await?;
        removed += rows;
    }
    Ok(removed)
}

enum Detached {
    Counted(BTreeMap<String, i64>),
    /// The application's locks kept it attached: its rows take the row path.
    Locked,
    /// Attached back: it holds rows of a hold added since the plan.
    Held,
}

/// Detaches one partition, marks it (a run that never comes back leaves it
/// for a later one to drop), and counts it; each step checkpointed first.
async fn detach_and_count(
    jc: &JobContext,
    db: &AppDb,
    p: &PurgeParams,
    index: usize,
    item: &PlanItem,
    d: &PartitionDrop,
    done: &mut Progress,
) -> Result<Detached> {
    let resumed = done
        .items
        .get(&index)
        .is_some_and(|i| i.partitions.contains_key(&d.name));
    save(jc, done, index, &d.name, PartitionStep::Detaching, 0).await?;
    jc.fence.check()?; // each step commits: only while the lease holds
    let wait = Duration::from_millis(p.max_transaction_ms);
    match db
        .detach_partition(&item.table, &d.name, d.concurrently, wait, resumed)
        .await?
    {
        Detach::Done => {}
        Detach::Locked => {
            save(jc, done, index, &d.name, PartitionStep::Kept, 0).await?;
            return Ok(Detached::Locked);
        }
        // Someone else detached or moved it: nothing of it is ours to drop.
        Detach::NotAttached => {
            save(jc, done, index, &d.name, PartitionStep::Kept, 0).await?;
            return Ok(Detached::Held);
        }
    }
    mark(jc, db, p, item, d).await?;
    match counted_or_back(jc, db, item, d).await? {
        Some(c) => {
            save(
                jc,
                done,
                index,
                &d.name,
                PartitionStep::Counted(c.clone()),
                0,
            )
            .await?;
            super::objects::crash_point("partition_counted");
            Ok(Detached::Counted(c))
        }
        None => {
            save(jc, done, index, &d.name, PartitionStep::Kept, 0).await?;
            Ok(Detached::Held)
        }
    }
}

/// The drop-after time a detached partition carries in its comment: now plus
/// the grace period (none: now, for the next run should this one not drop it).
async fn mark(
    jc: &JobContext,
    db: &AppDb,
    p: &PurgeParams,
    item: &PlanItem,
    d: &PartitionDrop,
) -> Result<DateTime<Utc>> {
    let now = jc.ctx.store.now().await?;
    let grace = p
        .detach_grace
        .as_ref()
        .map_or(std::time::Duration::ZERO, |g| g.get());
    let after = now + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let note = format!(
        "{MARK}{} by retention.purge run {} at {}; drop after {}",
        item.table,
        jc.run.id,
        now.to_rfc3339(),
        after.to_rfc3339()
    );
    jc.fence.check()?;
    db.mark_detached(&d.name, &note).await?;
    Ok(after)
}

/// The detached partition's rows per org, or `None` when it holds rows of a
/// hold added since the plan (then it is attached back). More rows than
/// planned for an org: attached back, and the run fails.
async fn counted_or_back(
    jc: &JobContext,
    db: &AppDb,
    item: &PlanItem,
    d: &PartitionDrop,
) -> Result<Option<BTreeMap<String, i64>>> {
    let entry = entry_for(&jc.ctx.config, &item.table)?;
    if held_rows(jc, db, entry, &d.name).await? > 0 {
        attach_back(jc, db, item, d).await?;
        return Ok(None);
    }
    let counted = by_org(db.rows_by_org(&d.name, entry.org.as_deref()).await?);
    let over: Vec<String> = counted
        .iter()
        .filter(|(o, n)| **n > d.by_org.get(*o).copied().unwrap_or(0))
        .map(|(o, n)| {
            format!(
                "org `{o}`: {n} rows, {} planned",
                d.by_org.get(o).copied().unwrap_or(0)
            )
        })
        .collect();
    if !over.is_empty() {
        attach_back(jc, db, item, d).await?;
        return Err(Error::Failed(format!(
            "purge of table `{}` stopped: partition `{}` held more rows than the plan counted ({}); \
             it was attached back and nothing was dropped. Rows entered it after the plan was made; \
             run the purge again for a new plan",
            item.table,
            d.name,
            over.join("; ")
        )));
    }
    Ok(Some(counted))
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
    let wait = Duration::from_secs(5);
    db.attach_partition(&item.table, &d.name, &d.bound, wait)
        .await?;
    db.mark_detached(&d.name, "").await
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
    counted: &BTreeMap<String, i64>,
) -> Result<()> {
    let rows: i64 = counted.values().sum();
    let mut details = json!({"run_id": jc.run.id, "class": item.class, "table": item.table,
                             "partition": d.name, "bound": d.bound, "rows": rows, "by_org": counted});
    let grace = p
        .detach_grace
        .as_ref()
        .map(|g| g.get())
        .filter(|g| !g.is_zero());
    let wait = Duration::from_millis(p.max_transaction_ms);
    jc.fence.check()?;
    let dropped = grace.is_none() && db.drop_detached(&item.table, &d.name, wait).await?;
    let action = if dropped {
        "retention.partition_dropped"
    } else {
        details["kept_detached"] = json!(match grace {
            Some(g) => format!(
                "for the grace period of {}",
                crate::policy::format_duration(g)
            ),
            None => "the application held a lock on it: the next run drops it".into(),
        });
        "retention.partition_detached"
    };
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

/// Partitions kept detached by earlier runs whose grace period is over:
/// dropped now, each with its evidence. A dry run lists them.
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
        let Some((parent, _)) = note
            .strip_prefix(MARK)
            .and_then(|rest| rest.split_once(" by retention.purge run "))
        else {
            continue;
        };
        let parent = parent.to_string();
        if after.with_timezone(&Utc) > now {
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

//! Deleting one plan item: time windows sized from the last window's density
//! (PostgreSQL) or `LIMIT`ed row batches, each its own short transaction,
//! budgeted by the plan, progress checkpointed after every batch.

use super::*;
use crate::config::ObjectColumn;

pub(super) const PROGRESS_KEY: &str = "retention.progress";
/// Deleted rows the per-org counts cannot place: the application inserted or
/// deleted rows in scope while the purge ran.
pub(super) const UNPLACED: &str = "(rows changed during the run)";

#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) batches: u64,
    pub(super) longest_batch_ms: u128,
    pub(super) windows_redone: u64,
    pub(super) plan_ms: u128,
}

/// How far each plan item got, saved after every batch.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct Progress {
    pub(super) items: BTreeMap<usize, ItemProgress>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(super) struct ItemProgress {
    /// Rows deleted by this attempt's batches (a resumed run recounts).
    pub(super) deleted: i64,
    /// Time windows: every row in scope before this is gone.
    pub(super) done_before: Option<DateTime<Utc>>,
    pub(super) finished: bool,
    /// Partitions removed whole, by name (their rows are in `deleted`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) partitions: BTreeMap<String, PartitionStep>,
}

/// Deletes one plan item, saving progress after each batch.
#[allow(clippy::too_many_arguments)]
pub(super) async fn delete_item(
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
    let files = jc
        .ctx
        .config
        .data_map
        .iter()
        .find(|e| e.table == item.table)
        .map(|e| e.objects.clone())
        .unwrap_or_default();
    match scope.selectors.as_slice() {
        _ if !files.is_empty() => batcher.with_files(scope, &files).await,
        [Selector::Before { column, cutoff, .. }] if db.slicing() == Slicing::TimeWindows => {
            let (column, cutoff) = (column.clone(), *cutoff);
            // Rows of partitions removed whole are not in the windows' way.
            let whole: i64 = item.partitions.iter().map(|d| d.rows).sum();
            batcher
                .windows(scope, &column, cutoff, item.planned - whole)
                .await
        }
        _ => batcher.row_batches(scope).await,
    }
}

pub(super) struct Batcher<'a> {
    pub(super) jc: &'a JobContext,
    pub(super) db: &'a AppDb,
    pub(super) p: &'a PurgeParams,
    pub(super) index: usize,
    pub(super) item: &'a PlanItem,
    pub(super) done: &'a mut Progress,
    pub(super) stats: &'a mut Stats,
    /// Rows the next batch aims at.
    pub(super) rows: u32,
    pub(super) bar: progress::Bar,
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

    /// Batches of rows that reference files: keys checkpointed, rows
    /// deleted, files deleted (see `objects`); until nothing is left in scope.
    async fn with_files(&mut self, scope: &Scope, columns: &[ObjectColumn]) -> Result<()> {
        // Files of rows an interrupted attempt or run already deleted.
        super::objects::finish_for_run(self.jc, self.db, Tail::Defer).await?;
        let names: Vec<String> = columns.iter().map(|c| c.column.clone()).collect();
        loop {
            let started = Instant::now();
            let budget = self.budget().min(u64::from(self.rows));
            let s = self.held_out(scope).await?;
            let limit = u32::try_from(budget).unwrap_or(u32::MAX);
            let rows = if limit == 0 {
                Vec::new()
            } else {
                self.db.object_rows(&s, &names, limit).await?
            };
            if rows.is_empty() {
                return self.finish_empty(None).await;
            }
            let files = super::objects::of_rows(&self.item.table, &self.item.class, columns, &rows);
            let store = self.jc.ctx.store.as_ref();
            store
                .objects_pend(super::objects::RETENTION, &files)
                .await?;
            let at: Vec<_> = rows.into_iter().map(|r| r.pos).collect();
            self.jc.fence.check()?; // each statement commits: only while the lease holds
            let n = match self.db.delete_rows_at(&s, &at, budget).await? {
                Deleted::Rows(n) => n,
                Deleted::OverBudget(n) => return Err(self.over_plan(n, budget)),
                Deleted::TooSlow => {
                    return Err(Error::Failed("a row batch has no time limit".into()))
                }
            };
            self.committed(n, started.elapsed(), ItemProgress::default())
                .await?;
            crate::test_hooks::crash_point("files_pending");
            super::objects::finish_for_run(self.jc, self.db, Tail::Defer).await?;
        }
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
        let mut width = self.first_width(first, cutoff, planned);
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

    /// The plan's rows spread evenly between the oldest row and the cutoff.
    fn first_width(&self, first: DateTime<Utc>, cutoff: DateTime<Utc>, planned: i64) -> i64 {
        let span = (cutoff - first)
            .num_microseconds()
            .unwrap_or(i64::MAX)
            .max(1);
        if planned > 0 {
            scale(span, f64::from(self.rows) / planned as f64)
        } else {
            span
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
        let v = serde_json::to_value(&*self.done).map_err(|e| Error::json("purge progress", e))?;
        self.jc
            .ctx
            .store
            .checkpoint_put(self.jc.run.id, PROGRESS_KEY, &v)
            .await?;
        Ok(())
    }
}

/// `width × ratio`, at least one microsecond.
pub(super) fn scale(width: i64, ratio: f64) -> i64 {
    ((width as f64) * ratio).clamp(1.0, i64::MAX as f64) as i64
}

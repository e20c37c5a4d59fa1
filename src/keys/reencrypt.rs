//! `keys.reencrypt`: rewrites every encrypted value that is under a DEK
//! version other than its org's newest active one, in bounded batches, each
//! one short transaction that leaves alone a value the application changed
//! meanwhile. The walk position is checkpointed after every batch, and a
//! value already under the newest version is skipped, so a rescued run
//! resumes without re-encrypting twice. Legal holds do not block it (the
//! data stays; only its encryption changes). Evidence per table, column and
//! org: counts and versions, never values.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::DataKeys;
use crate::appdb::{AppDb, Rewrite, RowPos, Walk};
use crate::cipher::{self, Binding, Stored};
use crate::config::DataMapEntry;
use crate::error::{Error, Result};
use crate::runner::{in_range, JobContext, JobParams};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReencryptParams {
    /// Values read and rewritten per transaction.
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    /// Pause between batches, to leave room for the application's own writes.
    #[serde(default)]
    pub pause_ms: u64,
    /// Rewrite transactions in flight at once, each on its own connection
    /// and its own rows; 1 rewrites one batch at a time.
    #[serde(default = "default_writers")]
    pub writers: u32,
}

fn default_batch() -> u32 {
    5000
}

fn default_writers() -> u32 {
    2
}

impl JobParams for ReencryptParams {
    fn validate(&self) -> Result<(), String> {
        in_range("batch_size", self.batch_size.into(), 1, 100_000)?;
        in_range("pause_ms", self.pause_ms, 0, 3_600_000)?;
        in_range("writers", self.writers.into(), 1, 8)
    }
}

/// Per table, column and org: values rewritten and the versions they left.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    reencrypted: u64,
    from_versions: BTreeSet<u32>,
}

/// Per org (a lookup per value: a fast hash, not an ordered map; the keys
/// are the application's own org ids, not input an attacker picks).
type Tallies = rustc_hash::FxHashMap<String, Tally>;

/// A column's walk position and its counts so far, checkpointed per batch.
#[derive(Deserialize)]
struct Progress {
    pos: RowPos,
    tallies: Tallies,
    /// Each relation's size in pages when the walk entered it (PostgreSQL).
    #[serde(default)]
    ends: Walk,
}

#[derive(Serialize)]
struct ProgressRef<'a> {
    pos: &'a RowPos,
    tallies: &'a Tallies,
    ends: &'a Walk,
}

#[derive(Debug, Default, Serialize)]
pub struct ReencryptOutput {
    pub reencrypted: u64,
    /// Not in the `lethe1` format: reported by table and row, skipped.
    pub unreadable: u64,
    /// Under a version whose key is gone or that does not open: skipped.
    pub undecryptable: u64,
    /// Changed by the application between read and rewrite: left alone.
    pub changed_meanwhile: u64,
    /// The longest rewrite transaction of this attempt.
    pub longest_batch_ms: u64,
    pub tables: Vec<Value>,
    /// The first values skipped as unreadable or undecryptable (a shredded
    /// org's aside): table, column, the row's primary key, and why; never the value.
    pub skipped: Vec<Value>,
}

pub async fn reencrypt_job(jc: &JobContext, p: ReencryptParams) -> Result<ReencryptOutput> {
    let ctx = jc.ctx.as_ref();
    let mut out = ReencryptOutput::default();
    let Some(t) = ctx.config.app.as_ref().and_then(|a| a.keys.as_ref()) else {
        return Ok(out); // nothing is encrypted through Lethe's keys
    };
    let db = ctx.app_db().await?;
    crate::appdb::preflight(&ctx.config, &db).await?;
    let mut keys = DataKeys::new(ctx, db.app_keys(t, None).await?);
    for e in ctx
        .config
        .data_map
        .iter()
        .filter(|e| !e.encrypted.is_empty())
    {
        for column in &e.encrypted {
            let tallies = column_pass(jc, &db, e, column, &p, &mut keys, &mut out).await?;
            let mut tallies: Vec<(String, Tally)> = tallies.into_iter().collect();
            tallies.sort_by(|a, b| a.0.cmp(&b.0));
            for (org, tally) in tallies {
                out.reencrypted += tally.reencrypted;
                let details = json!({"table": e.table, "column": column, "org": org,
                                     "values": tally.reencrypted, "from_versions": tally.from_versions,
                                     "to_version": keys.newest(&org)});
                if !jc.dry_run {
                    crate::audit::record(
                        ctx.store.as_ref(),
                        &jc.actor,
                        "keys.reencrypted",
                        &format!("org:{org}"),
                        details.clone(),
                    )
                    .await?;
                }
                out.tables.push(details);
            }
        }
    }
    Ok(out)
}

/// One encrypted column, batch by batch from the saved position.
#[allow(clippy::too_many_arguments)]
async fn column_pass(
    jc: &JobContext,
    db: &AppDb,
    e: &DataMapEntry,
    column: &str,
    p: &ReencryptParams,
    keys: &mut DataKeys<'_>,
    out: &mut ReencryptOutput,
) -> Result<Tallies> {
    let org_column = e.org.as_deref().unwrap_or_default();
    let mut walk = ColumnWalk::load(jc, format!("keys.reencrypt:{}.{column}", e.table)).await?;
    // Batches' rewrites run on the database while the next is read and
    // sealed here: the crypto does not wait for the UPDATEs, nor they for
    // the crypto. They land in walk order, so a checkpoint never passes a
    // batch that has not committed.
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    loop {
        let at = walk.progress.pos.clone();
        let batch = db
            .cipher_rows(
                &e.table,
                org_column,
                column,
                &at,
                p.batch_size,
                &mut walk.progress.ends,
            )
            .await?;
        // A window of pages may hold more than a batch: at most `batch_size`
        // rewrites per transaction.
        let mut rows = batch.rows;
        while !rows.is_empty() {
            let rest = rows.split_off(rows.len().min(p.batch_size.max(1) as usize));
            let chunk_end = rows.last().map(|r| r.pos.clone()).unwrap_or(RowPos::Start);
            let (rewrites, from) = plan_batch(db, e, column, rows, keys, out).await?;
            if inflight.len() >= p.writers.max(1) as usize {
                if let Some(oldest) = inflight.pop_front() {
                    let landed = oldest.land(out, &mut walk.progress.tallies).await?;
                    walk.save(&landed, CHECKPOINT_EVERY).await?;
                }
            }
            if jc.dry_run {
                count(
                    from,
                    vec![true; rewrites.len()],
                    out,
                    &mut walk.progress.tallies,
                );
            } else if !rewrites.is_empty() {
                jc.fence.check()?; // each batch commits: only while the lease holds
                inflight.push_back(InFlight::start(
                    db, &e.table, column, rewrites, from, chunk_end,
                ));
            }
            if p.pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(p.pause_ms)).await;
            }
            rows = rest;
        }
        let Some(next) = batch.next else { break };
        walk.progress.pos = next;
        // Windows with nothing to rewrite need no checkpoint each (a resumed
        // walk reads them again, cheaply), but one now and then bounds that.
        if inflight.is_empty() {
            let pos = walk.progress.pos.clone();
            walk.save(&pos, Duration::from_secs(1)).await?;
        }
    }
    while let Some(oldest) = inflight.pop_front() {
        let landed = oldest.land(out, &mut walk.progress.tallies).await?;
        walk.save(&landed, Duration::ZERO).await?;
    }
    Ok(walk.progress.tallies)
}

/// How often at most the walk's position and counts are checkpointed: a
/// store write per batch would cost a fast walk a fifth of its time, and a
/// crash loses the counts of no more than this much of committed batches
/// (plus those in flight); their values are found current on resume.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// A column's walk and its counts so far, checkpointed under its name. The
/// counts travel with the position, so a rescued run's evidence still counts
/// what earlier attempts rewrote (all but the batches that committed in the
/// last `CHECKPOINT_EVERY` before a crash, and those in flight, whose values
/// the resumed walk finds current).
struct ColumnWalk<'j> {
    jc: &'j JobContext,
    name: String,
    progress: Progress,
    saved: std::time::Instant,
}

impl<'j> ColumnWalk<'j> {
    /// Where an earlier attempt of this run left the column's walk, or its start.
    async fn load(jc: &'j JobContext, name: String) -> Result<ColumnWalk<'j>> {
        let progress = match jc.ctx.store.checkpoint_get(jc.run.id, &name).await? {
            Some(v) => serde_json::from_value(v)
                .map_err(|e| Error::json("stored re-encryption progress", e))?,
            None => Progress {
                pos: RowPos::Start,
                tallies: Tallies::default(),
                ends: Walk::default(),
            },
        };
        Ok(ColumnWalk {
            jc,
            name,
            progress,
            saved: std::time::Instant::now(),
        })
    }

    /// Checkpoints `pos` (all before it committed) with the counts, once
    /// `every` has passed since the last checkpoint.
    async fn save(&mut self, pos: &RowPos, every: Duration) -> Result<()> {
        if self.saved.elapsed() < every {
            return Ok(());
        }
        let Progress { tallies, ends, .. } = &self.progress;
        let v = serde_json::to_value(ProgressRef { pos, tallies, ends })
            .map_err(|e| Error::json("re-encryption progress", e))?;
        if !self.jc.dry_run {
            self.jc
                .ctx
                .store
                .checkpoint_put(self.jc.run.id, &self.name, &v)
                .await?;
        }
        self.saved = std::time::Instant::now();
        Ok(())
    }
}

/// A batch's rewrite, one short transaction on its own task (a value the
/// application changed meanwhile is left alone), and what it will count.
struct InFlight {
    write: tokio::task::JoinHandle<Result<(Vec<bool>, u64)>>,
    from: Vec<(String, u32)>,
    /// The batch's last row: where a checkpoint may stand once it committed.
    end: RowPos,
}

impl InFlight {
    fn start(
        db: &AppDb,
        table: &str,
        column: &str,
        rewrites: Vec<Rewrite>,
        from: Vec<(String, u32)>,
        end: RowPos,
    ) -> InFlight {
        let (db, table, column) = (db.clone(), table.to_string(), column.to_string());
        let write = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let applied = db.cipher_rewrite(&table, &column, rewrites).await?;
            let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            Ok((applied, took))
        });
        InFlight { write, from, end }
    }

    /// Waits for the commit and counts it; returns where the walk may resume.
    async fn land(self, out: &mut ReencryptOutput, tallies: &mut Tallies) -> Result<RowPos> {
        let (applied, took) = self
            .write
            .await
            .map_err(|e| Error::task("a re-encryption batch", e))??;
        out.longest_batch_ms = out.longest_batch_ms.max(took);
        count(self.from, applied, out, tallies);
        Ok(self.end)
    }
}

/// Counts a batch: rewritten per org with the versions they left, or
/// changed by the application meanwhile.
fn count(
    from: Vec<(String, u32)>,
    applied: Vec<bool>,
    out: &mut ReencryptOutput,
    tallies: &mut Tallies,
) {
    for ((org, version), done) in from.into_iter().zip(applied) {
        if !done {
            out.changed_meanwhile += 1;
            continue;
        }
        let t = tallies.entry(org).or_default();
        t.reencrypted += 1;
        t.from_versions.insert(version);
    }
}

/// Most skipped values listed in the output; the counts cover them all.
const SKIPPED_LISTED: usize = 100;

/// Logs a skipped value by table, column and primary key (never the value),
/// and lists the first ones in the output.
async fn skip(
    db: &AppDb,
    e: &DataMapEntry,
    column: &str,
    pos: &RowPos,
    why: &str,
    out: &mut ReencryptOutput,
) -> Result<()> {
    if out.skipped.len() >= SKIPPED_LISTED {
        return Ok(());
    }
    let row = db.row_key(&e.table, pos).await?;
    tracing::warn!(table = %e.table, column, row = %row, reason = why, "encrypted value skipped");
    out.skipped
        .push(json!({"table": e.table, "column": column, "row": row, "reason": why}));
    Ok(())
}

/// The rewrites one batch needs: each value under an older version, opened
/// with its key and sealed under the newest; with (org, old version) for the tally.
async fn plan_batch(
    db: &AppDb,
    e: &DataMapEntry,
    column: &str,
    rows: Vec<crate::appdb::CipherRow>,
    keys: &mut DataKeys<'_>,
    out: &mut ReencryptOutput,
) -> Result<(Vec<Rewrite>, Vec<(String, u32)>)> {
    let mut rewrites = Vec::with_capacity(rows.len());
    let mut from = Vec::with_capacity(rows.len());
    for r in rows {
        // No active version: the org was shredded (or never got a key), and
        // nothing opens or seals its values; not worth a warning per row.
        let Some(newest) = keys.newest(&r.org) else {
            out.undecryptable += 1;
            continue;
        };
        let stored = match Stored::parse(&r.value) {
            Ok(s) => s,
            Err(why) => {
                out.unreadable += 1;
                skip(db, e, column, &r.pos, &why.to_string(), out).await?;
                continue;
            }
        };
        let version = stored.version();
        if i64::from(version) == newest {
            continue;
        }
        let Some(new) = keys.dek(&r.org, newest).await? else {
            out.undecryptable += 1;
            continue;
        };
        let at = Binding {
            table: &e.table,
            column,
            org: &r.org,
        };
        // The header was read once: open with that version's key directly.
        let old = keys.dek(&r.org, version.into()).await?;
        let Some(plain) = old.and_then(|dek| stored.open(&dek, at).ok()) else {
            out.undecryptable += 1;
            let why = format!(
                "does not decrypt under version {version} of org {}'s key",
                r.org
            );
            skip(db, e, column, &r.pos, &why, out).await?;
            continue;
        };
        let new_version = u32::try_from(newest)
            .map_err(|_| Error::Failed(format!("key version {newest} is out of range")))?;
        let sealed = cipher::seal_with(&new, new_version, at, &plain)
            .map_err(|e| Error::Failed(e.to_string()))?;
        from.push((r.org, version));
        rewrites.push(Rewrite {
            pos: r.pos,
            old: r.value,
            new: sealed,
        });
    }
    Ok((rewrites, from))
}

//! Files referenced by rows go with them. The files of rows about to change
//! are recorded in the store's pending deletes (durable, not tied to a run)
//! before the rows go; after the rows' transaction the files that no row
//! references any more are deleted, every version of them, and forgotten. So
//! a crash at any point leaves neither a row pointing at a deleted file nor,
//! once a later attempt or run of the same origin finishes, a file nobody
//! points at. A file Object Lock keeps is deferred to its retain-until date
//! and picked up by the first run after it. Used by purges and erasures;
//! evidence counts per class and org, never keys (they may name people).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::*;
use crate::appdb::ObjectRow;
use crate::config::ObjectColumn;
use crate::context::Context;
use crate::fence::Fence;
use crate::store::{NewPendingObject, PendingObject};

/// The pending deletes of purges (erasures use `dsr:<request id>`).
pub(super) const RETENTION: &str = "retention";
const TALLIES_KEY: &str = "retention.objects";
/// Pending deletes handled per round: a few pages of a store's listing, so
/// a round's first listing (a seek to its first key) and its part-full last
/// page are a small share of its requests; memory stays a round's keys.
const ROUND: i64 = 5000;

/// Files deleted for one class and org.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ObjectTally {
    pub objects: u64,
    pub versions: u64,
    pub bytes: u64,
    /// Versions Object Lock keeps, with their retain-until dates (retried after them).
    pub kept_by_object_lock: Vec<Option<String>>,
    /// Keys the store refused as unsafe (e.g. `../` in a folder store).
    pub refused_keys: u64,
}

/// class → org → totals.
pub type Tallies = BTreeMap<String, BTreeMap<String, ObjectTally>>;

fn absorb(into: &mut Tallies, from: Tallies) {
    for (class, orgs) in from {
        for (org, t) in orgs {
            let a = into
                .entry(class.clone())
                .or_default()
                .entry(org)
                .or_default();
            a.objects += t.objects;
            a.versions += t.versions;
            a.bytes += t.bytes;
            a.kept_by_object_lock.extend(t.kept_by_object_lock);
            a.refused_keys += t.refused_keys;
        }
    }
}

/// Files, versions and bytes deleted, and the keys Object Lock kept, over all classes and orgs.
pub fn totals(tallies: &Tallies) -> serde_json::Value {
    let (mut objects, mut versions, mut bytes, mut locked) = (0, 0, 0, Vec::new());
    for t in tallies.values().flat_map(|orgs| orgs.values()) {
        objects += t.objects;
        versions += t.versions;
        bytes += t.bytes;
        locked.extend(t.kept_by_object_lock.iter().cloned());
    }
    json!({"objects": objects, "versions": versions, "bytes": bytes, "kept_by_object_lock": locked})
}

/// The files of `rows` (of `table`, data class `class`), as pending deletes.
pub fn of_rows(
    table: &str,
    class: &str,
    columns: &[ObjectColumn],
    rows: &[ObjectRow],
) -> Vec<NewPendingObject> {
    rows.iter()
        .flat_map(|r| {
            columns.iter().zip(&r.keys).filter_map(|(c, k)| {
                k.as_ref()
                    .filter(|k| !k.is_empty())
                    .map(|k| NewPendingObject {
                        store_name: c.store.clone(),
                        table_name: table.to_string(),
                        column_name: c.column.clone(),
                        object_key: k.clone(),
                        class: class.to_string(),
                        org: r.org.clone().unwrap_or_default(),
                    })
            })
        })
        .collect()
}

/// Deletes `origin`'s due files that no row references any more, and
/// forgets them; returns what went, per class and org. One purge per store
/// and round of up to 5,000, whatever the orgs, so a store's deletes go in
/// as few requests as its API allows. With [`Tail::Defer`] (a purge that
/// will call again) a short last round waits for the next call, and so do
/// the keys a store leaves unfinished: only full delete requests go out; the
/// purge's last call (`Tail::Send`) deletes the rest.
pub async fn finish(
    ctx: &Context,
    db: &AppDb,
    origin: &str,
    fence: &Fence,
    tail: Tail,
) -> Result<Tallies> {
    let mut tallies = Tallies::new();
    loop {
        let due = ctx
            .store
            .objects_due(origin, ctx.store.now().await?, ROUND)
            .await?;
        let last_round = (due.len() as i64) < ROUND;
        if last_round && tail == Tail::Defer {
            return Ok(tallies);
        }
        let kept = still_referenced(db, &due).await?;
        let is_kept =
            |p: &PendingObject| kept.contains(&(p.table_name.clone(), p.object_key.clone()));
        let mut by_store: BTreeMap<&str, Vec<&PendingObject>> = BTreeMap::new();
        for p in due.iter().filter(|p| !is_kept(p)) {
            by_store.entry(&p.store_name).or_default().push(p);
        }
        let mut done: Vec<i64> = due.iter().filter(|p| is_kept(p)).map(|p| p.id).collect();
        for (store, items) in by_store {
            let mut keys: Vec<String> = items.iter().map(|p| p.object_key.clone()).collect();
            keys.sort();
            keys.dedup();
            fence.check()?;
            let store = ctx.app_store(store).await?;
            // Rounds before the last leave a part-full request to the next.
            let round_tail = if last_round { Tail::Send } else { Tail::Defer };
            let mut purged = store.purge(&keys, round_tail).await?;
            if purged.unfinished.len() == keys.len() {
                // Nothing went in this round: send it whole rather than wait forever.
                purged = store.purge(&keys, Tail::Send).await?;
            }
            attribute(&mut tallies, &items, &purged);
            for p in items {
                match purged.locked.iter().find(|l| l.key == p.object_key) {
                    Some(l) => {
                        ctx.store
                            .objects_defer(p.id, retry_after(l.until.as_deref()))
                            .await?
                    }
                    None if purged.unfinished.contains(&p.object_key) => {}
                    None => done.push(p.id),
                }
            }
        }
        ctx.store.objects_done(&done).await?;
        if last_round {
            return Ok(tallies);
        }
    }
}

/// The pending deletes' keys that some row of their table still references:
/// (table, key).
async fn still_referenced(db: &AppDb, due: &[PendingObject]) -> Result<HashSet<(String, String)>> {
    let mut kept = HashSet::new();
    let mut by_column: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for p in due.iter().filter(|p| !p.table_name.is_empty()) {
        by_column
            .entry((&p.table_name, &p.column_name))
            .or_default()
            .push(p.object_key.clone());
    }
    for ((table, column), keys) in by_column {
        for k in db.still_referenced(table, column, &keys).await? {
            kept.insert((table.to_string(), k));
        }
    }
    Ok(kept)
}

/// A store's purge, counted under each key's class and org (a key listed
/// twice counts once, under its first entry).
fn attribute(tallies: &mut Tallies, items: &[&PendingObject], purged: &crate::objstore::Purged) {
    let mut seen = HashSet::new();
    for p in items {
        if !seen.insert(p.object_key.as_str()) {
            continue;
        }
        let t = tallies
            .entry(p.class.clone())
            .or_default()
            .entry(p.org.clone())
            .or_default();
        if let Some((versions, bytes)) = purged.by_key.get(&p.object_key) {
            // A key the store left unfinished is counted once it is gone.
            if !purged.unfinished.contains(&p.object_key) {
                t.objects += 1;
            }
            t.versions += versions;
            t.bytes += bytes;
        }
        if let Some(l) = purged.locked.iter().find(|l| l.key == p.object_key) {
            t.kept_by_object_lock.push(l.until.clone());
        }
    }
    for p in items {
        if purged.refused.contains(&p.object_key) {
            let t = tallies
                .entry(p.class.clone())
                .or_default()
                .entry(p.org.clone())
                .or_default();
            t.refused_keys += 1;
        }
    }
}

/// When to try a locked file again: its retain-until date, or in a day when
/// the bucket does not say.
fn retry_after(until: Option<&str>) -> DateTime<Utc> {
    until
        .and_then(|u| DateTime::parse_from_rfc3339(u).ok())
        .map(|u| u.with_timezone(&Utc))
        .unwrap_or_else(|| Utc::now() + chrono::Duration::days(1))
}

/// A purge run's totals so far (every attempt), kept with the run.
pub(super) async fn load(jc: &JobContext) -> Result<Tallies> {
    Ok(
        match jc.ctx.store.checkpoint_get(jc.run.id, TALLIES_KEY).await? {
            Some(v) => serde_json::from_value(v)
                .map_err(|e| Error::json("stored object-purge totals", e))?,
            None => Tallies::new(),
        },
    )
}

/// Finishes the purges' pending files and adds them to the run's totals;
/// `Tail::Defer` while the run will call again.
pub(super) async fn finish_for_run(jc: &JobContext, db: &AppDb, tail: Tail) -> Result<Tallies> {
    let mut tallies = load(jc).await?;
    absorb(
        &mut tallies,
        finish(&jc.ctx, db, RETENTION, &jc.fence, tail).await?,
    );
    let v = serde_json::to_value(&tallies).map_err(|e| Error::json("object-purge totals", e))?;
    jc.ctx
        .store
        .checkpoint_put(jc.run.id, TALLIES_KEY, &v)
        .await?;
    Ok(tallies)
}

/// Evidence per class and org: counts only, never keys.
pub(super) async fn record(jc: &JobContext, tallies: &Tallies) -> Result<()> {
    for (class, orgs) in tallies {
        for (org, t) in orgs {
            crate::audit::record(
                jc.ctx.store.as_ref(),
                &jc.actor,
                "retention.objects_deleted",
                &format!("class:{class}"),
                json!({"run_id": jc.run.id, "org": org, "objects": t.objects, "versions": t.versions,
                       "bytes": t.bytes, "kept_by_object_lock": t.kept_by_object_lock,
                       "refused_keys": t.refused_keys}),
            )
            .await?;
        }
    }
    Ok(())
}

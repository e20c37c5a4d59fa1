//! Restores from physical base backups: `backup restore --to-dir` (to a
//! moment: `--to-time`, `--to-lsn`, else the end of the archive) and the
//! restore drill `backup verify` runs for a base backup. Both unpack the base
//! backup, replay archived WAL through `lethe wal fetch` in a server Lethe
//! starts, and wait for it to be promoted. A restore then erases again what
//! the erasure ledger holds (an erasure after the chosen moment must not come
//! back) before the server is stopped and handed over; a drill checks that
//! replay reached the newest archived WAL and that every table is readable.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};
use sqlx::Connection;

use super::cluster::{Restored, Target};
use super::manifest::Physical;
use super::physical::{parse_lsn, segment_start};
use super::{find, identity, source, Manifest};
use crate::context::Context;
use crate::dsr::LedgerReapply;
use crate::error::{Error, Result};
use crate::store::BackupRecord;

fn physical_of(b: &BackupRecord) -> Result<Option<Physical>> {
    let m = Manifest::parse(&b.manifest, &format!("the manifest of backup {}", b.id))?;
    Ok(m.physical)
}

/// Whether base backup `p` can reach `target`: it must have ended before it.
fn reaches(p: &Physical, target: Target) -> Result<bool> {
    Ok(match target {
        Target::Latest => true,
        Target::Time(t) => {
            chrono::DateTime::parse_from_rfc3339(&p.stopped_at)
                .map_err(|e| Error::Backup(format!("stopped_at: {e}")))?
                .with_timezone(&chrono::Utc)
                < t
        }
        Target::Lsn(l) => parse_lsn(&p.end_lsn)? <= l,
    })
}

/// The base backup to restore: `id`, or the newest that reaches `target`.
async fn choose(
    ctx: &Context,
    id: Option<&str>,
    target: Target,
) -> Result<(BackupRecord, Physical)> {
    if let Some(id) = id {
        let b = find(ctx, id).await?;
        let p = physical_of(&b)?.ok_or_else(|| {
            Error::Usage(format!(
                "backup {id} is a logical dump: restore it with --to URL"
            ))
        })?;
        if !reaches(&p, target)? {
            return Err(Error::Usage(format!(
                "base backup {id} ended at {} (LSN {}), after the target: choose an older base backup, or omit the id",
                p.stopped_at, p.end_lsn
            )));
        }
        return Ok((b, p));
    }
    // Newest first; one that failed its drill is no base to build on.
    for b in ctx.store.backups(false).await? {
        if b.verify_ok == Some(false) {
            continue;
        }
        if let Some(p) = physical_of(&b)? {
            if reaches(&p, target)? {
                return Ok((b, p));
            }
        }
    }
    Err(Error::NotFound(
        "no physical base backup in the catalog ended before the target \
         (backup.mode = \"physical\" and `lethe run backup.create` make one)"
            .into(),
    ))
}

/// Held in the folder while a restore writes it: a second restore into the
/// same folder finds it not empty, or fails to create this.
const CLAIM: &str = ".lethe-restore";

/// Claims a new folder, or an empty one, for the restored data directory;
/// returns whether it was created here.
fn claim_dir(dir: &Path) -> Result<bool> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    let created = match std::fs::create_dir(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut entries = std::fs::read_dir(dir)
                .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            if entries.next().is_some() {
                return Err(Error::Usage(format!(
                    "{} is not empty: restore into a new or empty folder",
                    dir.display()
                )));
            }
            false
        }
        Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
    };
    std::fs::File::create_new(dir.join(CLAIM)).map_err(|_| {
        Error::Usage(format!(
            "{} is not empty: another restore is writing it",
            dir.display()
        ))
    })?;
    Ok(created)
}

/// `backup restore [ID] --to-dir DIR [--to-time T | --to-lsn L]`.
pub async fn restore_to_dir(
    ctx: &Context,
    id: Option<&str>,
    dir: &Path,
    target: Target,
) -> Result<Value> {
    let (b, p) = choose(ctx, id, target).await?;
    // Everything that can be refused is refused before anything is written.
    identity(&ctx.config)?;
    let ledger = LedgerReapply::prepare(ctx).await?;
    // Read before replay starts: the server keeps archiving meanwhile.
    let newest = newest_segment(ctx).await?;
    let created = claim_dir(dir)?;
    let started = Instant::now();
    let outcome = async {
        let mut server = Restored::unpack(ctx, &b, dir, target).await?;
        server.recover(&ctx.config.database.url).await?;
        let url = server.url_for(&ctx.config.database.url)?;
        let (reached, last_commit) = replay_end(&url).await?;
        // PostgreSQL fails a time or LSN it cannot reach; "the end" it takes
        // to be wherever the archive stops, a gap included.
        if let (Target::Latest, Some(short)) = (target, short_of(reached, &newest, &p)) {
            return Err(Error::Backup(short));
        }
        // What the replayed WAL holds already is not applied again: a later
        // change in the application would be overwritten.
        // Ledger times are Lethe's clock, the point the database's: five
        // minutes' margin for skew (an erasure applied again changes nothing).
        let point = match target {
            Target::Time(t) => t,
            _ => last_commit.unwrap_or(b.created_at),
        } - chrono::Duration::minutes(5);
        let report = ledger.for_backup(point).apply(ctx, &url).await?;
        server.stop()?;
        std::fs::remove_file(dir.join(CLAIM))
            .map_err(|e| Error::io("removing the restore's claim", e))?;
        Ok::<_, Error>((super::physical::format_lsn(reached), report))
    }
    .await;
    let (reached, report) = match outcome {
        Ok(r) => r,
        Err(e) => {
            // Nothing half-restored is left where an operator might start it.
            let cleared = if created {
                std::fs::remove_dir_all(dir)
            } else {
                clear(dir)
            };
            if let Err(ce) = cleared {
                tracing::warn!(error = %ce, dir = %dir.display(), "could not remove the failed restore");
            }
            return Err(e);
        }
    };
    Ok(json!({
        "id": b.id, "restored_to": dir.display().to_string(), "target": target_json(target),
        "timeline": p.timeline, "base_end_lsn": p.end_lsn, "promoted_at_lsn": reached,
        "restore_ms": started.elapsed().as_millis() as u64,
        "erasures_reapplied": report.reapplied, "rectifications_reapplied": report.rectified,
        "corrections_skipped": report.corrections_skipped, "org_erasures_reapplied": report.reapplied_in_orgs,
        "subjects_held": report.subjects_held, "rows_kept_for_holds": report.rows_kept_for_holds,
        "orgs_deleted_again": report.orgs_deleted_again, "org_rows_deleted": report.org_rows_deleted,
        "orgs_held": report.orgs_held,
    }))
}

fn clear(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

fn target_json(t: Target) -> Value {
    match t {
        Target::Latest => json!("latest"),
        Target::Time(t) => json!({"time": t.to_rfc3339()}),
        Target::Lsn(l) => json!({"lsn": super::physical::format_lsn(l)}),
    }
}

/// Where the promoted server's WAL begins (the end of replay), and the
/// time of the last transaction replayed.
async fn replay_end(url: &str) -> Result<(u64, Option<chrono::DateTime<chrono::Utc>>)> {
    let mut c = sqlx::PgConnection::connect(url).await?;
    let (lsn, last): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT pg_current_wal_lsn()::text, pg_last_xact_replay_timestamp()")
            .fetch_one(&mut c)
            .await?;
    c.close().await?;
    Ok((parse_lsn(&lsn)?, last))
}

/// The archive's newest segment, on its newest timeline.
async fn newest_segment(ctx: &Context) -> Result<String> {
    let store = ctx.object_store().await?;
    let newest = super::wal::newest_segment(&ctx.config, store.as_ref()).await?;
    Ok(newest
        .ok_or_else(|| Error::Backup("the WAL archive holds no segment".into()))?
        .0)
}

/// Whether the archive keeps only `p`'s own span of WAL (a base backup older
/// than `backup.pitr_window`, kept by the GFS policy).
async fn span_only(ctx: &Context, p: &Physical) -> Result<bool> {
    let all = ctx.store.backups(false).await?;
    let spans = super::physical::spans(&all.iter().collect::<Vec<_>>())?;
    let own = segment_start(&p.start_wal, p.wal_segment_bytes).unwrap_or(0);
    Ok(
        super::physical::whole_from(&spans, ctx.config.backup.pitr_window)
            .is_some_and(|(from, _)| own < from),
    )
}

/// Why replay that ended at `reached` fell short of the segment `newest`.
fn short_of(reached: u64, newest: &str, p: &Physical) -> Option<String> {
    let wanted = segment_start(newest, p.wal_segment_bytes).unwrap_or(0);
    (reached < wanted).then(|| {
        format!(
            "replay ended at {}, before the newest archived segment {newest}: a gap in the archive \
             (a file missing, or pruned meanwhile); restore to a time or LSN before the gap",
            super::physical::format_lsn(reached)
        )
    })
}

/// The restore drill of base backup `b`: replayed to the newest archived
/// segment in a temporary data directory, every table of the manifest there
/// and readable, `pg_amcheck` clean where installed. Returns the tables
/// checked and what was wrong.
pub(super) async fn drill(
    ctx: &Context,
    b: &BackupRecord,
    p: &Physical,
    expected: &std::collections::BTreeMap<String, i64>,
) -> Result<(usize, Vec<String>)> {
    let newest = newest_segment(ctx).await?;
    // Held while the drill runs: a sweep removes the folder only once it is free.
    let (tmp, _lock) = super::drills::create()?;
    // The cluster unpacked: at least the tar's size (WAL replayed comes on top).
    if let Some(free) = super::parallel::free_bytes(tmp.path()) {
        if free < b.raw_bytes as u64 {
            return Err(Error::Backup(format!(
                "the drill needs {} MiB for the cluster in {} and {} MiB are free: set TMPDIR to a larger disk \
                 (never the server's own data disk)",
                b.raw_bytes >> 20,
                tmp.path().display(),
                free >> 20
            )));
        }
    }
    let data = tmp.path().join("data");
    let mut server = Restored::unpack(ctx, b, &data, Target::Latest).await?;
    server.recover(&ctx.config.database.url).await?;
    let url = server.url_for(&ctx.config.database.url)?;
    let mut problems = Vec::new();
    let (reached, _) = replay_end(&url).await?;
    if span_only(ctx, p).await? {
        // Older than the window: its WAL after its end was pruned by design.
        let end = parse_lsn(&p.end_lsn)?;
        if reached < end {
            problems.push(format!(
                "replay ended at {}, before the base backup's end {}: its WAL is missing",
                super::physical::format_lsn(reached),
                p.end_lsn
            ));
        }
    } else {
        problems.extend(short_of(reached, &newest, p));
    }
    // count(*) reads every page of every table.
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let actual = source::pg_row_counts(&mut conn).await?;
    let superuser: String = sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE oid = 10")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    problems.extend(
        expected
            .keys()
            .filter(|t| !actual.contains_key(*t))
            .map(|t| format!("{t}: in the base backup, missing after the restore")),
    );
    problems.extend(amcheck(ctx, &server, &superuser)?);
    server.stop()?;
    Ok((actual.len(), problems))
}

/// `pg_amcheck` of every database (indexes against their tables), where installed.
fn amcheck(ctx: &Context, server: &Restored, superuser: &str) -> Result<Vec<String>> {
    let tool = source::pg_tool("pg_amcheck", ctx.config.backup.pg_bin.as_deref());
    if !tool.exists() {
        return Ok(vec![]);
    }
    let out = std::process::Command::new(&tool)
        .arg("--host")
        .arg(server.socket_dir())
        .args([
            "--port",
            &server.port().to_string(),
            "--username",
            superuser,
        ])
        .args(["--all", "--install-missing", "--no-password"])
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| Error::Backup(format!("cannot run pg_amcheck: {e}")))?;
    if out.status.success() {
        return Ok(vec![]);
    }
    let said = source::without_row_values(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ));
    Ok(vec![format!(
        "pg_amcheck failed ({}): {}",
        out.status,
        said.lines().take(5).collect::<Vec<_>>().join("; ")
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_claimed_by_one_restore_only() {
        let tmp = tempfile::tempdir().unwrap();
        let new = tmp.path().join("a/new");
        assert!(claim_dir(&new).unwrap(), "created");
        assert!(claim_dir(&new).is_err(), "claimed: not empty");
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(
            !claim_dir(&empty).unwrap(),
            "an empty folder is taken as it is"
        );
        assert!(claim_dir(&empty).is_err());
        let used = tmp.path().join("used");
        std::fs::create_dir(&used).unwrap();
        std::fs::write(used.join("PG_VERSION"), "15").unwrap();
        let e = claim_dir(&used).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
    }
}

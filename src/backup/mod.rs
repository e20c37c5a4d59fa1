//! Backups: dump → zstd → age → object store, streamed (no whole temporary
//! file for PostgreSQL, memory bounded by the part size); a manifest beside
//! each backup; a catalog row only for a backup stored completely. Verify
//! restores into a scratch database and compares row counts (RTO evidence).
//! GFS pruning never removes the newest verified backup; the RPO check mails
//! ops when the newest verified backup is too old.

mod child;
pub mod cluster;
mod drills;
mod dump_rows;
pub mod gfs;
mod manifest;
mod parallel;
pub mod physical;
pub mod pitr;
mod prune;
mod restore;
mod rpo;
pub mod rto;
pub mod scratch;
mod source;
mod verify;
pub mod wal;
pub mod wal_rpo;

pub use crate::archive::{decode, encode, parse_identities, parse_recipients, PartSink};
pub use manifest::{Manifest, MANIFEST_FORMAT};
pub use prune::prune_job;
pub use restore::restore;
pub use rpo::{rpo_check_job, RpoParams, RpoReport};

/// The kinds the RPO check looks for in the catalog.
pub const CREATE_KIND: &str = "backup.create";
pub const VERIFY_KIND: &str = "backup.verify";
pub use verify::{verify, VerifyReport};

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::io::SyncIoBridge;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::notify::{self, Block, Message, Role, Tone};
use crate::objstore::ObjectStore;
use crate::runner::{JobContext, JobParams};
use crate::store::BackupRecord;
use source::Db;

fn new_id(now: DateTime<Utc>) -> String {
    format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// Streams the dump through the pipeline into `store`, aborting the upload on any failure.
async fn upload_stream<T: Send + 'static>(
    ctx: &Context,
    store: &dyn ObjectStore,
    key: &str,
    produce: impl FnOnce(PartSink) -> Result<T> + Send + 'static,
) -> Result<T> {
    let part_size = ctx.config.backup.part_size;
    crate::objstore::stream_upload(store, key, part_size, "backup: uploaded", produce)
        .await
        .map_err(|e| match e {
            Error::Task { source, .. } => {
                Error::Backup(format!("the dump pipeline crashed: {source}"))
            }
            other => other,
        })
}

const COUNTED_FROM_STREAM: &str = "dump stream";
const COUNTED_IN_SNAPSHOT: &str = "snapshot count";
/// A base backup's table list, with the planner's row estimates at its start.
const ESTIMATED_AT_START: &str = "estimate at start";

/// Checkpoint naming the object an attempt is uploading.
const UPLOAD_KEY: &str = "backup.upload";

/// What one dump produced: the stored object's sizes and hash, and the
/// source's row counts and server version (from the same snapshot).
struct Dumped {
    enc: crate::archive::Encoded,
    row_counts: BTreeMap<String, i64>,
    row_counts_from: &'static str,
    server_version: String,
}

/// `backup.create`: returns the catalog row (committed with `actor`'s evidence).
pub async fn create(ctx: &Context, run_id: Option<i64>, actor: &str) -> Result<BackupRecord> {
    let cfg = &ctx.config.backup;
    let recipients = parse_recipients(&cfg.recipients)?;
    let store = ctx.object_store().await?;
    let db = Db::from_url(&ctx.config.database.url)?;
    let started = Instant::now();
    let created_at = Utc::now();
    let id = new_id(created_at);
    let physical = cfg.mode == crate::config::BackupMode::Physical;
    let ext = match db {
        Db::Postgres(_) if physical => "base.tar",
        Db::Postgres(_) => "pgdump",
        Db::Sqlite(_) => "sqlite",
    };
    let object_key = format!("{}{id}.{ext}.zst.age", cfg.prefix);
    let manifest_key = format!("{}{id}.manifest.json", cfg.prefix);
    if let Some(run_id) = run_id {
        // Before any part exists: a retry after a crash knows which upload to abort.
        ctx.store
            .checkpoint_put(run_id, UPLOAD_KEY, &json!({ "object": object_key }))
            .await?;
    }
    let (dumped, wal) = match &db {
        Db::Postgres(url) if physical => {
            let (d, p) =
                physical::base_backup(ctx, store.as_ref(), url, &object_key, &recipients).await?;
            (d, Some(p))
        }
        Db::Postgres(url) => (
            dump_postgres(ctx, store.as_ref(), url, &object_key, &recipients).await?,
            None,
        ),
        Db::Sqlite(path) => (
            dump_sqlite(ctx, store.as_ref(), path, &object_key, &recipients).await?,
            None,
        ),
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let mut m = manifest_for(
        ctx,
        &id,
        created_at,
        &object_key,
        db.kind(),
        dumped,
        duration_ms,
    );
    m.physical = wal;
    let manifest = m.to_value();
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Backup(e.to_string()))?;
    store.put(&manifest_key, body.into()).await?;
    let record = BackupRecord {
        id: id.clone(),
        created_at,
        run_id,
        object_key,
        manifest_key,
        stored_bytes: m.stored_bytes as i64,
        raw_bytes: m.raw_bytes as i64,
        sha256: m.sha256.clone(),
        manifest,
        verified_at: None,
        verify_ok: None,
        restore_ms: None,
        verify_error: None,
        deleted_at: None,
    };
    let b = &record;
    let event = crate::store::evidence(
        actor,
        "backup.created",
        &format!("backup:{}", b.id),
        json!({"object": b.object_key, "sha256": b.sha256, "stored_bytes": b.stored_bytes, "raw_bytes": b.raw_bytes}),
    );
    ctx.store.backup_insert(&record, &event).await?;
    Ok(record)
}

/// `pg_dump` of an exported snapshot, its rows counted from the stream as it
/// is uploaded (no second scan). Should the stream not parse, the rows are
/// counted in the same snapshot instead, so the counts are exact either way.
async fn dump_postgres(
    ctx: &Context,
    store: &dyn ObjectStore,
    url: &str,
    object_key: &str,
    recipients: &[age::x25519::Recipient],
) -> Result<Dumped> {
    let cfg = &ctx.config.backup;
    let (level, threads) = (cfg.zstd_level, cfg.zstd_threads);
    let mut snap = source::PgSnapshot::open(url).await?;
    let mut cmd = source::pg_command(&source::pg_tool("pg_dump", cfg.pg_bin.as_deref()), url);
    cmd.args([
        "--format=custom",
        "--compress=0",
        &format!("--snapshot={}", snap.id),
    ]);
    let mut child = source::spawn_piped(cmd, false)?;
    let stderr = source::collect_stderr(&mut child);
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Backup("pg_dump has no stdout".into()))?;
    // Dropped with this attempt (a timeout): pg_dump is killed, not left running.
    let (_leash, tether) = child::leash(child);
    let rec = recipients.to_vec();
    let upload = upload_stream(ctx, store, object_key, move |sink| {
        let mut counted = dump_rows::CountingReader::new(stdout);
        let r = encode(&mut counted, sink, &rec, level, threads);
        let status = tether
            .wait()
            .map_err(|e| Error::Backup(format!("pg_dump: {e}")))?;
        let err = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(Error::Backup(format!("pg_dump failed ({status}): {err}")));
        }
        Ok((r?, counted.rows.finish()))
    });
    let (enc, streamed) = upload.await?;
    let (row_counts, row_counts_from) = match streamed {
        Ok(mut counts) => {
            counts.extend(snap.extension_config_counts().await?);
            (counts, COUNTED_FROM_STREAM)
        }
        Err(why) => {
            tracing::warn!(%why, "row counts not read from the dump stream; counting in the snapshot");
            (snap.row_counts().await?, COUNTED_IN_SNAPSHOT)
        }
    };
    let server_version = snap.server_version.clone();
    snap.close().await?;
    Ok(Dumped {
        enc,
        row_counts,
        row_counts_from,
        server_version,
    })
}

/// SQLite: `VACUUM INTO` a temporary copy (a consistent snapshot), count its
/// rows and upload it; the copy is removed whatever happens.
async fn dump_sqlite(
    ctx: &Context,
    store: &dyn ObjectStore,
    path: &Path,
    object_key: &str,
    recipients: &[age::x25519::Recipient],
) -> Result<Dumped> {
    let cfg = &ctx.config.backup;
    let (level, threads) = (cfg.zstd_level, cfg.zstd_threads);
    let tmp = tempfile::Builder::new()
        .prefix("lethe-backup-")
        .suffix(".db")
        .tempfile()
        .map_err(|e| Error::io("creating a temporary file for the SQLite snapshot", e))?;
    let tmp_path = tmp.path().to_path_buf();
    drop(tmp); // VACUUM INTO wants to create the file itself
    let result = async {
        source::sqlite_snapshot(path, &tmp_path).await?;
        let counts = source::sqlite_row_counts(&tmp_path).await?;
        let file = std::fs::File::open(&tmp_path)
            .map_err(|e| Error::io("reading the SQLite snapshot", e))?;
        let rec = recipients.to_vec();
        let enc = upload_stream(ctx, store, object_key, move |sink| {
            encode(file, sink, &rec, level, threads)
        })
        .await?;
        Ok::<_, Error>((enc, counts))
    }
    .await;
    let _ = std::fs::remove_file(&tmp_path);
    let (enc, row_counts) = result?;
    Ok(Dumped {
        enc,
        row_counts,
        row_counts_from: COUNTED_IN_SNAPSHOT,
        server_version: format!("sqlite {}", source::sqlite_version(path).await?),
    })
}

/// The manifest stored beside the backup object (what verify and restore
/// check the object against).
fn manifest_for(
    ctx: &Context,
    id: &str,
    created_at: DateTime<Utc>,
    object_key: &str,
    db_kind: &str,
    dumped: Dumped,
    total_ms: u64,
) -> Manifest {
    let cfg = &ctx.config.backup;
    Manifest {
        format: MANIFEST_FORMAT,
        id: id.to_string(),
        created_at: created_at.to_rfc3339(),
        object: object_key.to_string(),
        stored_bytes: dumped.enc.stored_bytes,
        raw_bytes: dumped.enc.raw_bytes,
        sha256: dumped.enc.sha256,
        compression: manifest::Compression {
            algorithm: "zstd".into(),
            level: cfg.zstd_level,
            threads: cfg.zstd_threads,
        },
        encryption: manifest::Encryption {
            algorithm: "age".into(),
            recipients: cfg.recipients.clone(),
        },
        database: manifest::Database {
            kind: db_kind.into(),
            server_version: dumped.server_version,
        },
        row_counts: dumped.row_counts,
        row_counts_from: Some(dumped.row_counts_from.into()),
        timings: manifest::Timings { total_ms },
        lethe_version: env!("CARGO_PKG_VERSION").into(),
        physical: None,
    }
}

/// The age identity text; parsed up front so a bad key fails before any download.
pub(crate) fn identity(config: &crate::config::Config) -> Result<crate::config::Secret> {
    let src = &config.backup.identity;
    let secret = src.load().map_err(Error::Usage)?.ok_or_else(|| {
        Error::Usage(format!(
            "verify, restore and wal fetch need the age identity (AGE-SECRET-KEY-1…) in {}",
            src.describe()
        ))
    })?;
    parse_identities(secret.expose())?;
    Ok(secret)
}

pub async fn find(ctx: &Context, id: &str) -> Result<BackupRecord> {
    ctx.store
        .backups(false)
        .await?
        .into_iter()
        .find(|b| b.id == id)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no backup `{id}` in the catalog (see `lethe backup list`)"
            ))
        })
}

/// Streams the object through decode into `sink_for` (a writer made on the blocking thread).
async fn download_decoded(
    ctx: &Context,
    b: &BackupRecord,
    make_sink: impl FnOnce() -> Result<(
            Box<dyn Write + Send>,
            Box<dyn FnOnce() -> Result<()> + Send>,
        )> + Send
        + 'static,
) -> Result<crate::archive::Decoded> {
    let store = ctx.object_store().await?;
    let secret = identity(&ctx.config)?;
    let reader = store.get(&b.object_key).await?;
    // Dropped with this attempt (a timeout): the copy below stops writing.
    let (_wire, tripped) = child::tripwire();
    let decoded = tokio::task::spawn_blocking(move || {
        // age identities are not Send: parse them on the thread that uses them.
        let ids = parse_identities(secret.expose())?;
        let (out, finish) = make_sink()?;
        let mut out = tripped.writer(out);
        let r = decode(SyncIoBridge::new(reader), &ids, &mut out);
        // A buffered file's last write can fail here (disk full): not on drop, unseen.
        let flushed = out
            .flush()
            .map_err(|e| Error::io("writing the restored database", e));
        drop(out);
        let fin = finish();
        let d = r?;
        fin?;
        flushed?;
        Ok::<_, Error>(d)
    })
    .await
    .map_err(|e| Error::Backup(format!("restore pipeline crashed: {e}")))??;
    if decoded.sha256 != b.sha256 {
        return Err(Error::Backup(format!(
            "the stored object's SHA-256 {} differs from the catalog's {} (object altered or truncated)",
            decoded.sha256, b.sha256
        )));
    }
    Ok(decoded)
}

/// Restores `b` into the (empty) PostgreSQL database at `url` with
/// pg_restore: from the stream, or spooled and in parallel (`verify_jobs`).
async fn restore_into_pg(
    ctx: &Context,
    b: &BackupRecord,
    url: &str,
) -> Result<crate::archive::Decoded> {
    let jobs = ctx.config.backup.verify_jobs;
    if jobs > 1 {
        return parallel::restore_into_pg(ctx, b, url, jobs).await;
    }
    let mut cmd = source::pg_command(
        &source::pg_tool("pg_restore", ctx.config.backup.pg_bin.as_deref()),
        url,
    );
    cmd.args(["--no-owner", "--no-privileges", "--exit-on-error"]);
    pipe_into(ctx, b, cmd, "pg_restore").await
}

/// Streams `b`, decoded, into the stdin of `cmd` (`what` names it in errors).
async fn pipe_into(
    ctx: &Context,
    b: &BackupRecord,
    cmd: std::process::Command,
    what: &'static str,
) -> Result<crate::archive::Decoded> {
    let mut child = source::spawn_piped(cmd, true)?;
    let stderr = source::collect_stderr(&mut child);
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::Backup(format!("{what} has no stdin")))?;
    // Dropped with this attempt (a timeout): the child is killed, its stdin
    // breaks, and the download stops.
    let (_leash, tether) = child::leash(child);
    download_decoded(ctx, b, move || {
        let finish = move || {
            let status = tether
                .wait()
                .map_err(|e| Error::Backup(format!("{what}: {e}")))?;
            let err = stderr.join().unwrap_or_default();
            if status.success() {
                Ok(())
            } else {
                Err(Error::Backup(format!("{what} failed ({status}): {err}")))
            }
        };
        Ok((
            Box::new(stdin) as Box<dyn Write + Send>,
            Box::new(finish) as Box<dyn FnOnce() -> Result<()> + Send>,
        ))
    })
    .await
}

/// Restores the SQLite backup `b` into `file` (new and empty, made by the caller).
async fn restore_into_file(
    ctx: &Context,
    b: &BackupRecord,
    file: std::fs::File,
) -> Result<crate::archive::Decoded> {
    download_decoded(ctx, b, move || {
        let finish = || Ok(());
        Ok((
            Box::new(std::io::BufWriter::new(file)) as Box<dyn Write + Send>,
            Box::new(finish) as Box<dyn FnOnce() -> Result<()> + Send>,
        ))
    })
    .await
}

// ---- jobs ----------------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {}

impl JobParams for CreateParams {}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VerifyParams {
    /// A backup id; default: the newest backup not yet verified (else the newest).
    pub id: Option<String>,
}

impl JobParams for VerifyParams {}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PruneParams {}

impl JobParams for PruneParams {}

pub async fn create_job(jc: &JobContext, _: CreateParams) -> Result<Value> {
    if jc.dry_run {
        let store = jc.ctx.object_store().await?;
        return Ok(
            json!({"dry_run": true, "store": store.describe(), "recipients": jc.ctx.config.backup.recipients.len()}),
        );
    }
    let started = Instant::now();
    // A previous attempt killed mid-upload left its multipart upload open: abort it.
    let mut orphans_aborted = 0;
    if let Some(prev) = jc.ctx.store.checkpoint_get(jc.run.id, UPLOAD_KEY).await? {
        if let Some(object) = prev["object"].as_str() {
            orphans_aborted = jc.ctx.object_store().await?.abort_uploads(object).await?;
            if orphans_aborted > 0 {
                tracing::warn!(
                    object,
                    orphans_aborted,
                    "aborted the upload a crashed attempt left open"
                );
            }
        }
    }
    let b = create(&jc.ctx, Some(jc.run.id), &jc.actor).await?;
    Ok(json!({
        "id": b.id, "object": b.object_key, "manifest": b.manifest_key, "sha256": b.sha256,
        "stored_bytes": b.stored_bytes, "raw_bytes": b.raw_bytes,
        "ratio": if b.stored_bytes > 0 { b.raw_bytes as f64 / b.stored_bytes as f64 } else { 0.0 },
        "tables": b.manifest["row_counts"].as_object().map_or(0, |m| m.len()),
        "row_counts_from": b.manifest["row_counts_from"],
        "duration_ms": started.elapsed().as_millis() as u64,
        "orphans_aborted": orphans_aborted,
    }))
}

/// A dry run names the backup it would verify; a real one reports the check.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum VerifyOutput {
    DryRun { dry_run: bool, would_verify: String },
    Verified(VerifyReport),
}

pub async fn verify_job(jc: &JobContext, p: VerifyParams) -> Result<VerifyOutput> {
    let all = jc.ctx.store.backups(false).await?;
    let id = match p.id {
        Some(id) => id,
        None => all
            .iter()
            .find(|b| b.verified_at.is_none())
            .or_else(|| all.first())
            .map(|b| b.id.clone())
            .ok_or_else(|| {
                Error::Failed("there is no backup to verify yet (run backup.create)".into())
            })?,
    };
    if jc.dry_run {
        return Ok(VerifyOutput::DryRun {
            dry_run: true,
            would_verify: id,
        });
    }
    let r = verify(&jc.ctx, &id, &jc.actor).await?;
    if !r.ok {
        notify::enqueue(
            &jc.ctx,
            Message {
                role: Role::Ops,
                subject: format!("[lethe] backup {id} FAILED verification"),
                blocks: vec![
                    Block::Notice(Tone::Alert, format!("Backup {id} could not be restored and checked: until a newer backup verifies, the RPO promise may not hold.")),
                    Block::Facts(vec![("What failed".into(), r.error.clone().unwrap_or_else(|| r.mismatches.join("; ")))]),
                    Block::Para("Take a new backup and verify it:".into()),
                    Block::Command("lethe run backup.create".into()),
                    Block::Command("lethe backup verify ID".into()),
                ],
                attachments: vec![],
                dedupe_key: Some(format!("backup-verify-failed:{id}")),
            },
        )
        .await?;
        return Err(Error::Backup(format!(
            "backup {id} failed verification: {}",
            r.error.unwrap_or_else(|| r.mismatches.join("; "))
        )));
    }
    Ok(VerifyOutput::Verified(r))
}

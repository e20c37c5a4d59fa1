//! Continuous archiving of PostgreSQL's write-ahead log: `lethe wal push %p`
//! as `archive_command`, `lethe wal fetch %f %p` as `restore_command`. Each
//! file is zstd + age to the backup recipients at
//! `backup.wal_prefix<timeline>/<name>.zst.age`, then `<name>.sha256`, the
//! SHA-256 of its plain bytes: a file is archived once both are stored. No store database on this path: PostgreSQL
//! calls it once a segment and must wait on nothing but the object store.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::archive::Hashing;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::objstore::ObjectStore;

/// A file name PostgreSQL archives: a segment (`000000010000000A000000FF`),
/// a partial segment, a backup label, or a timeline history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalName {
    pub name: String,
    pub timeline: String,
}

pub fn parse_name(name: &str) -> Result<WalName> {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = match name.split('.').collect::<Vec<_>>()[..] {
        [seg] => hex(seg, 24),
        [seg, "partial"] => hex(seg, 24),
        [seg, offset, "backup"] => hex(seg, 24) && hex(offset, 8),
        [tli, "history"] => hex(tli, 8),
        _ => false,
    };
    if !ok {
        return Err(Error::Usage(format!(
            "`{name}` is not a WAL file name PostgreSQL archives (a 24-hex-digit segment, \
             .partial, .backup or a timeline's .history); pass %p (push) or %f (fetch)"
        )));
    }
    Ok(WalName {
        name: name.to_string(),
        timeline: name[..8].to_ascii_uppercase(),
    })
}

/// The object that marks `backup.wal_prefix` as a WAL archive.
const MARKER: &str = "lethe-wal-archive";

/// The archived object and its plain SHA-256, for `name`.
fn keys(config: &Config, n: &WalName) -> (String, String) {
    let dir = format!("{}{}/", config.backup.wal_prefix, n.timeline);
    (
        format!("{dir}{}.zst.age", n.name),
        format!("{dir}{}.sha256", n.name),
    )
}

#[derive(Debug, Serialize)]
pub struct Pushed {
    pub name: String,
    pub object: String,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
    /// Archived before with the same bytes: nothing uploaded (PostgreSQL
    /// retries a push whose success it did not see).
    pub already_archived: bool,
}

/// Archives the file at `path`. Idempotent: the same bytes archived before
/// succeed without an upload; other bytes under an archived name fail
/// (PostgreSQL must not believe a different segment is safe).
pub async fn push(config: &Config, store: &dyn ObjectStore, path: &Path) -> Result<Pushed> {
    let file_name = path
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| Error::Usage(format!("`{}` names no WAL file", path.display())))?;
    let n = parse_name(file_name)?;
    let (object, sum) = keys(config, &n);
    let recipients = crate::archive::parse_recipients(&config.backup.recipients)?;
    mark_archive(config, store).await?;
    // Archived means the object and then its sum were stored: a push that
    // crashed before the sum was never reported to PostgreSQL, and is redone.
    if let (Some(stored), Some(archived)) =
        (store.head(&object).await?, archived_sum(store, &sum).await?)
    {
        let (sha256, bytes) = hash_file(path.to_path_buf()).await?;
        if archived != sha256 {
            return Err(Error::Refused(format!(
                "{} is archived already with other contents (SHA-256 {archived}, this file {sha256}): \
                 two servers may be archiving into one prefix, or a timeline was reused; \
                 give each cluster its own backup.wal_prefix",
                n.name
            )));
        }
        return Ok(Pushed {
            name: n.name,
            object,
            bytes,
            stored_bytes: stored,
            sha256,
            already_archived: true,
        });
    }
    // One pass: hashed as it is sealed, never whole in memory (segments may
    // be configured up to 1 GiB).
    // backup.zstd_threads, as for backups: PostgreSQL archives one file at a
    // time, so a second core is free for it.
    let (level, threads) = (config.backup.zstd_level, config.backup.zstd_threads);
    let file = path.to_path_buf();
    let seal = move |sink: crate::archive::PartSink| {
        let sink = sink.without_hash();
        let f = std::fs::File::open(&file)
            .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
        let mut read = Hashing {
            inner: std::io::BufReader::with_capacity(1 << 20, f),
            hasher: Sha256::new(),
            count: 0,
        };
        let enc = crate::archive::encode(&mut read, sink, &recipients, level, threads)?;
        // Sealed and sent, the upload not completed: a push killed mid-upload.
        crate::test_hooks::crash_point("wal_push_uploading");
        Ok((enc, hex::encode(read.hasher.finalize()), read.count))
    };
    let (enc, sha256, bytes) =
        crate::objstore::stream_upload(store, &object, 8 << 20, "wal: uploaded", seal).await?;
    store.put(&sum, bytes::Bytes::from(sha256.clone())).await?;
    Ok(Pushed {
        name: n.name,
        object,
        bytes,
        stored_bytes: enc.stored_bytes,
        sha256,
        already_archived: false,
    })
}

/// Marks `backup.wal_prefix` as an archive on the first push: a fetch that
/// finds no marker is looking in the wrong place (an unmounted folder, a
/// mistyped prefix or bucket), not at the end of the WAL.
async fn mark_archive(config: &Config, store: &dyn ObjectStore) -> Result<()> {
    let marker = format!("{}{MARKER}", config.backup.wal_prefix);
    if store.head(&marker).await?.is_none() {
        store
            .put(
                &marker,
                bytes::Bytes::from_static(b"lethe WAL archive v1\n"),
            )
            .await?;
    }
    Ok(())
}

/// The SHA-256 (hex) and size of a file, read in blocks on a blocking thread.
async fn hash_file(path: std::path::PathBuf) -> Result<(String, u64)> {
    tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let mut read = Hashing {
            inner: f,
            hasher: Sha256::new(),
            count: 0,
        };
        std::io::copy(&mut read, &mut std::io::sink())
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok((hex::encode(read.hasher.finalize()), read.count))
    })
    .await
    .map_err(|e| Error::task("hashing a WAL file", e))?
}

/// Every archived segment (its sum stored) with when it was stored, in name order.
pub async fn segments(
    config: &Config,
    store: &dyn ObjectStore,
) -> Result<Vec<(String, Option<chrono::DateTime<chrono::Utc>>)>> {
    let prefix = &config.backup.wal_prefix;
    let (mut objects, mut sums) = (Vec::new(), std::collections::BTreeMap::new());
    let mut after: Option<String> = None;
    loop {
        let page = store.list_page(prefix, after.as_deref(), 1000).await?;
        for l in &page {
            let file = l.key.rsplit('/').next().unwrap_or("");
            if let Some(name) = file.strip_suffix(".sha256") {
                sums.insert(name.to_string(), l.modified);
            } else if let Some(name) = file.strip_suffix(".zst.age") {
                objects.push(name.to_string());
            }
        }
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.key.clone()),
            _ => break,
        }
    }
    let mut out: Vec<_> = objects
        .into_iter()
        .filter(|n| n.len() == 24 && parse_name(n).is_ok())
        .filter_map(|n| sums.get(&n).map(|at| (n.clone(), *at)))
        .collect();
    // By timeline, then position: the newest last. A later timeline (a
    // restore put into service) supersedes an earlier one wherever it branched.
    out.sort();
    Ok(out)
}

/// The archived segment furthest along the newest timeline, and when it was stored.
pub async fn newest_segment(
    config: &Config,
    store: &dyn ObjectStore,
) -> Result<Option<(String, Option<chrono::DateTime<chrono::Utc>>)>> {
    Ok(segments(config, store).await?.pop())
}

/// Whether `name` is archived: its object and then its sum stored.
pub async fn is_archived(config: &Config, store: &dyn ObjectStore, name: &str) -> Result<bool> {
    let (object, sum) = keys(config, &parse_name(name)?);
    Ok(store.head(&sum).await?.is_some() && store.head(&object).await?.is_some())
}

async fn archived_sum(store: &dyn ObjectStore, sum: &str) -> Result<Option<String>> {
    if store.head(sum).await?.is_none() {
        return Ok(None);
    }
    let b = store.get_bytes(sum).await?;
    Ok(Some(String::from_utf8_lossy(&b).trim().to_string()))
}

#[derive(Debug, Serialize)]
pub enum Fetched {
    /// Not in the archive: PostgreSQL asks for files that may not exist
    /// (the next timeline's history, the segment after the last).
    Missing,
    Restored {
        bytes: u64,
    },
}

/// Restores `name` to `dest` (written beside it, then renamed, so a crash
/// never leaves a partial segment where PostgreSQL would replay it), its
/// plain bytes checked against the archived SHA-256.
pub async fn fetch(
    config: &Config,
    store: &dyn ObjectStore,
    name: &str,
    dest: &Path,
) -> Result<Fetched> {
    let n = parse_name(name)?;
    // A store that failed for a moment is tried again before recovery is
    // stopped (a standby would shut down): three times, 1 s and 3 s apart.
    let mut attempt = 0;
    loop {
        match fetch_once(config, store, &n, dest).await {
            Err(e) if attempt < 2 && retryable(&e) => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "wal fetch failed; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(if attempt == 1 {
                    1
                } else {
                    3
                }))
                .await;
            }
            other => return other,
        }
    }
}

/// Store and network errors pass; a wrong key, a bad name or a checksum
/// that does not match would fail the same way again.
fn retryable(e: &Error) -> bool {
    !matches!(e, Error::Usage(_) | Error::Backup(_) | Error::Config { .. })
}

async fn fetch_once(
    config: &Config,
    store: &dyn ObjectStore,
    n: &WalName,
    dest: &Path,
) -> Result<Fetched> {
    let name = n.name.as_str();
    let (object, sum) = keys(config, n);
    if store.head(&object).await?.is_none() {
        let marker = format!("{}{MARKER}", config.backup.wal_prefix);
        if store.head(&marker).await?.is_none() {
            return Err(Error::Backup(format!(
                "{} holds no WAL archive (no {marker}): the wrong folder, bucket or \
                 backup.wal_prefix, or one not mounted; recovery stops here rather than end early",
                store.describe()
            )));
        }
        return Ok(Fetched::Missing);
    }
    // Without its sum the push never completed: not archived.
    let Some(expected) = archived_sum(store, &sum).await? else {
        return Ok(Fetched::Missing);
    };
    let secret = super::identity(config)?;
    let reader = store.get(&object).await?;
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |e| Error::io(format!("writing {}", dest.display()), e);
    // Beside `dest`, renamed only once checked: PostgreSQL never replays a
    // partial file. Named so that the next fetch sweeps what a killed one left.
    sweep_partials(dir);
    let tmp = tempfile::Builder::new()
        .prefix(PARTIAL_PREFIX)
        .tempfile_in(dir)
        .map_err(io)?;
    let file = tmp.reopen().map_err(io)?;
    let (got, bytes) = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        // age identities are not Send: parsed on the thread that uses them.
        let ids = crate::archive::parse_identities(secret.expose())?;
        let mut out = HashingWriter {
            inner: std::io::BufWriter::new(file),
            hasher: Sha256::new(),
            count: 0,
        };
        crate::archive::decode(tokio_util::io::SyncIoBridge::new(reader), &ids, &mut out)?;
        let synced = out
            .inner
            .flush()
            .and_then(|()| out.inner.get_ref().sync_all());
        synced.map_err(|e| Error::io("writing a fetched WAL file", e))?;
        Ok::<_, Error>((hex::encode(out.hasher.finalize()), out.count))
    })
    .await
    .map_err(|e| Error::task("fetching a WAL file", e))??;
    if got != expected {
        return Err(Error::Backup(format!(
            "{name} decrypts to other bytes than were archived (SHA-256 {got}, archived {expected}); not restored"
        )));
    }
    tmp.persist(dest).map_err(|e| io(e.error))?;
    Ok(Fetched::Restored { bytes })
}

const PARTIAL_PREFIX: &str = ".lethe-wal-fetch-";

/// Removes fetches' temporary files older than ten minutes from `dir` (a
/// fetch killed with the server leaves one the size of a segment).
fn sweep_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
    for e in entries.flatten() {
        let stale = e.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX)
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < old);
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Hashes and counts bytes written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a PostgreSQL server says of its own archiving, for `lethe check`.
#[derive(Debug)]
pub struct ArchiveState {
    /// `archive_mode` is on and `archive_command` calls `lethe wal push`.
    pub via_lethe: bool,
    /// `archive_timeout` in seconds (0: off).
    pub timeout_s: i64,
    pub last_archived: Option<chrono::DateTime<chrono::Utc>>,
    pub last_failed: Option<chrono::DateTime<chrono::Utc>>,
}

/// The archiving settings and `pg_stat_archiver` of the server at `url`.
pub async fn archive_state(url: &str) -> Result<ArchiveState> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await?;
    let (mode, command, timeout): (String, String, String) = sqlx::query_as(
        "SELECT current_setting('archive_mode'), current_setting('archive_command'),
                (SELECT setting FROM pg_settings WHERE name = 'archive_timeout')",
    )
    .fetch_one(&mut c)
    .await?;
    let (last_archived, last_failed) =
        sqlx::query_as("SELECT last_archived_time, last_failed_time FROM pg_stat_archiver")
            .fetch_one(&mut c)
            .await?;
    c.close().await?;
    Ok(ArchiveState {
        via_lethe: mode != "off" && command.contains("wal push"),
        timeout_s: timeout.parse().unwrap_or(0),
        last_archived,
        last_failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_postgres_archives_are_taken() {
        for ok in [
            "000000010000000A000000FF",
            "000000020000000000000003.partial",
            "000000010000000000000002.00000028.backup",
            "00000002.history",
        ] {
            assert!(parse_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../000000010000000000000001",
            "00000001000000000000000",
            "000000010000000000000001.zst",
            "0000000G0000000000000001",
            "00000002.history.x",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_name("0000000a.history").unwrap().timeline, "0000000A");
    }
}

//! Physical base backups (`backup.mode = "physical"`): `pg_basebackup` writes
//! one tar to stdout, streamed through zstd + age into the object store like a
//! dump. Its WAL is not in the tar: it comes from the archive `lethe wal push`
//! fills, so the server must archive (checked first), and the backup's last
//! segment must be in this archive before the backup counts (a base backup
//! without its WAL restores nothing). The manifest records where the backup
//! starts and ends in the WAL: restore and pruning work from those.

use std::collections::BTreeMap;
use std::io::Read;

use chrono::Utc;
use sqlx::Connection;

use super::manifest::Physical;
use super::{child, encode, source, upload_stream, Dumped};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::objstore::ObjectStore;

/// `X/Y` (hex halves) → a 64-bit WAL position.
pub fn parse_lsn(s: &str) -> Result<u64> {
    let bad = || Error::Usage(format!("`{s}` is not an LSN (like 0/3000028)"));
    let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
    let part = |p: &str| {
        if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u32::from_str_radix(p, 16).map_err(|_| bad())
    };
    Ok((u64::from(part(hi)?) << 32) | u64::from(part(lo)?))
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The segment sizes PostgreSQL allows (1 MiB to 1 GiB, powers of two).
pub fn valid_segment_bytes(b: u64) -> bool {
    b.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&b)
}

/// The WAL file holding `lsn` on `timeline`, as PostgreSQL names it
/// (`segment_bytes` as `valid_segment_bytes` allows).
pub fn wal_file(timeline: u32, lsn: u64, segment_bytes: u64) -> String {
    let per_id = 0x1_0000_0000 / segment_bytes.clamp(1 << 20, 1 << 30);
    let seg = lsn / segment_bytes;
    format!("{timeline:08X}{:08X}{:08X}", seg / per_id, seg % per_id)
}

/// The WAL position a segment file (24 hex digits) starts at.
pub fn segment_start(name: &str, segment_bytes: u64) -> Option<u64> {
    if name.len() < 24 {
        return None;
    }
    let log = u64::from_str_radix(name.get(8..16)?, 16).ok()?;
    let seg = u64::from_str_radix(name.get(16..24)?, 16).ok()?;
    (log << 32).checked_add(seg.checked_mul(segment_bytes)?)
}

/// The server's WAL segment size and a table list with planner estimates
/// (counting every row of a large cluster would read it all a second time).
async fn inspect(url: &str) -> Result<(u64, BTreeMap<String, i64>, String, Option<String>)> {
    let mut c = sqlx::PgConnection::connect(url).await?;
    let (mode, seg): (String, i64) = sqlx::query_as(
        "SELECT current_setting('archive_mode'),
                (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')",
    )
    .fetch_one(&mut c)
    .await?;
    if mode == "off" {
        return Err(Error::Usage(
            "backup.mode = \"physical\" needs the server's WAL archived: set archive_mode = on and \
             archive_command = 'lethe --config … wal push %p' (README: Point-in-time recovery)"
                .into(),
        ));
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT n.nspname::text || '.' || c.relname::text, GREATEST(c.reltuples, 0)::bigint
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND c.relpersistence = 'p'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
    )
    .fetch_all(&mut c)
    .await?;
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version')")
        .fetch_one(&mut c)
        .await?;
    let system = system_identifier(&mut c).await;
    c.close().await?;
    let seg = u64::try_from(seg)
        .ok()
        .filter(|s| valid_segment_bytes(*s))
        .ok_or_else(|| Error::Backup(format!("the server reports wal_segment_size {seg}")))?;
    Ok((seg, rows.into_iter().collect(), version, system))
}

/// The cluster's identity, where this role may read it (pg_monitor or superuser).
pub(super) async fn system_identifier(c: &mut sqlx::PgConnection) -> Option<String> {
    sqlx::query_scalar("SELECT system_identifier::text FROM pg_control_system()")
        .fetch_one(c)
        .await
        .ok()
}

/// Where the backup starts (`backup_label`) and ends (the manifest's
/// `WAL-Ranges`), as the tar holds them: `pg_basebackup` writing to stdout
/// says neither.
fn wal_points(label: &[u8], manifest_tail: &[u8]) -> Result<WalPoints> {
    let bad = |what: &str| Error::Backup(format!("the base backup's {what} could not be read"));
    let label = String::from_utf8_lossy(label);
    let field = |name: &str| {
        label
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let start = field("START WAL LOCATION:").ok_or_else(|| bad("backup_label"))?;
    let start = start.split_whitespace().next().unwrap_or("");
    let timeline: u32 = field("START TIMELINE:")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| bad("backup_label"))?;
    let tail = String::from_utf8_lossy(manifest_tail);
    let ranges = tail
        .rfind("\"WAL-Ranges\"")
        .and_then(|at| {
            let open = at + tail[at..].find('[')?;
            let close = open + tail[open..].find(']')?;
            serde_json::from_str::<Vec<serde_json::Value>>(&tail[open..=close]).ok()
        })
        .ok_or_else(|| bad("backup_manifest (WAL-Ranges)"))?;
    // PostgreSQL lists the end's timeline first (the start's last).
    let last = ranges
        .first()
        .ok_or_else(|| bad("backup_manifest (WAL-Ranges)"))?;
    let end = last["End-LSN"]
        .as_str()
        .ok_or_else(|| bad("backup_manifest (End-LSN)"))?;
    // A backup across a promotion ends on a later timeline than it started.
    let end_timeline = last["Timeline"]
        .as_u64()
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| bad("backup_manifest (Timeline)"))?;
    Ok(WalPoints {
        start: parse_lsn(start)?,
        timeline,
        end: parse_lsn(end)?,
        end_timeline,
    })
}

#[derive(Debug, PartialEq)]
struct WalPoints {
    start: u64,
    timeline: u32,
    end: u64,
    end_timeline: u32,
}

/// The base backup's last WAL file is in this archive: else the server
/// archives elsewhere, and the backup could never be restored from here.
async fn in_archive(ctx: &Context, store: &dyn ObjectStore, last: &str) -> Result<()> {
    if super::wal::is_archived(&ctx.config, store, last).await? {
        return Ok(());
    }
    Err(Error::Backup(format!(
        "the base backup's last WAL file {last} is not in the archive at {}{}: the server archives \
         elsewhere; set its archive_command to `lethe --config … wal push %p` with this config",
        store.describe(),
        ctx.config.backup.wal_prefix
    )))
}

/// `pg_basebackup` streamed into `object_key`; its WAL checked in the archive.
pub(super) async fn base_backup(
    ctx: &Context,
    store: &dyn ObjectStore,
    url: &str,
    object_key: &str,
    recipients: &[age::x25519::Recipient],
) -> Result<(Dumped, Physical)> {
    let cfg = &ctx.config.backup;
    let (level, threads) = (cfg.zstd_level, cfg.zstd_threads);
    let (segment_bytes, estimates, server_version, system_identifier) = inspect(url).await?;
    let tool = source::pg_tool("pg_basebackup", cfg.pg_bin.as_deref());
    let mut cmd = source::pg_command(&tool, url);
    // WAL from the archive (`none`): pg_basebackup then waits until the
    // server has archived the backup's last segment.
    cmd.args([
        "--pgdata=-",
        "--format=tar",
        "--wal-method=none",
        "--checkpoint=fast",
        "--no-password",
        "--label=lethe",
    ])
    .env("LC_ALL", "C");
    let mut child = source::spawn_piped(cmd, false)?;
    let stderr = source::collect_stderr(&mut child);
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Backup("pg_basebackup has no stdout".into()))?;
    // Dropped with this attempt (a timeout): pg_basebackup is killed.
    let (_leash, tether) = child::leash(child);
    let rec = recipients.to_vec();
    let (enc, watched) = upload_stream(ctx, store, object_key, move |sink| {
        let mut tar = TarWatch::new(stdout);
        let r = encode(&mut tar, sink, &rec, level, threads);
        // Its pipe closed: a pg_basebackup still writing (the upload failed) stops.
        let watched = (
            std::mem::take(&mut tar.label),
            std::mem::take(&mut tar.manifest_tail),
        );
        drop(tar);
        let status = tether
            .wait()
            .map_err(|e| Error::Backup(format!("pg_basebackup: {e}")))?;
        let err = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(Error::Backup(format!(
                "pg_basebackup failed ({status}): {err}"
            )));
        }
        Ok((r?, watched))
    })
    .await?;
    let stopped_at = Utc::now();
    let WalPoints {
        start,
        timeline,
        end,
        end_timeline,
    } = wal_points(&watched.0, &watched.1)?;
    let last = wal_file(end_timeline, end.saturating_sub(1), segment_bytes);
    in_archive(ctx, store, &last).await?;
    let physical = Physical {
        timeline,
        start_lsn: format_lsn(start),
        end_lsn: format_lsn(end),
        start_wal: wal_file(timeline, start, segment_bytes),
        wal_segment_bytes: segment_bytes,
        stopped_at: stopped_at.to_rfc3339(),
        system_identifier,
    };
    let dumped = Dumped {
        enc,
        row_counts: estimates,
        row_counts_from: super::ESTIMATED_AT_START,
        server_version,
    };
    Ok((dumped, physical))
}

/// A kept base backup's place in the WAL: its start and end positions.
pub(super) struct Span {
    created_at: chrono::DateTime<Utc>,
    start: u64,
    end: u64,
    start_wal: String,
    segment_bytes: u64,
}

/// The spans of the physical ones among `backups` (newest first, as listed).
pub(super) fn spans(backups: &[&crate::store::BackupRecord]) -> Result<Vec<Span>> {
    let mut out = Vec::new();
    for b in backups {
        let m = super::Manifest::parse(&b.manifest, &format!("the manifest of backup {}", b.id))?;
        if let Some(p) = m.physical {
            out.push(Span {
                created_at: b.created_at,
                start: segment_start(&p.start_wal, p.wal_segment_bytes).unwrap_or(0),
                end: parse_lsn(&p.end_lsn)?,
                start_wal: p.start_wal,
                segment_bytes: p.wal_segment_bytes,
            });
        }
    }
    Ok(out)
}

/// Where the archive keeps WAL whole (a position and its file): from the
/// oldest of the newest base backup, those within `window`, and the newest
/// older than it (a moment at the window's start restores from that one).
pub(super) fn whole_from(spans: &[Span], window: std::time::Duration) -> Option<(u64, String)> {
    let window_start = chrono::Duration::from_std(window)
        .ok()
        .and_then(|w| Utc::now().checked_sub_signed(w))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    let covering = spans.iter().position(|s| s.created_at < window_start);
    spans
        .iter()
        .enumerate()
        .filter(|(i, s)| *i == 0 || s.created_at >= window_start || Some(*i) == covering)
        .min_by_key(|(_, s)| s.start)
        .map(|(_, s)| (s.start, s.start_wal.clone()))
}

/// The archived WAL no kept base backup needs: all but what `whole_from`
/// keeps whole, and each older kept base backup's own span (start to end,
/// enough to restore it to its end). Timeline histories stay (tiny; recovery
/// reads them to choose a timeline). With no base backup kept nothing goes:
/// the archive may be all there is. Files are compared by position (log,
/// segment) whatever their timeline. Returns the files removed (or that
/// would be) and the first kept whole.
pub(super) async fn prune_wal(
    ctx: &Context,
    kept: &[&crate::store::BackupRecord],
    dry_run: bool,
) -> Result<(Vec<String>, Option<String>)> {
    let spans = spans(kept)?;
    let Some(seg_bytes) = spans.first().map(|s| s.segment_bytes) else {
        return Ok((vec![], None));
    };
    let Some((whole_from, first)) = whole_from(&spans, ctx.config.backup.pitr_window) else {
        return Ok((vec![], None));
    };
    let needed =
        |pos: u64| pos >= whole_from || spans.iter().any(|s| pos >= s.start && pos < s.end);
    let store = ctx.object_store().await?;
    let mut removed = Vec::new();
    for key in store.list(&ctx.config.backup.wal_prefix).await? {
        let file = key.rsplit('/').next().unwrap_or("");
        let name = file.split('.').next().unwrap_or("");
        if name.len() != 24 || super::wal::parse_name(name).is_err() {
            continue;
        }
        if segment_start(name, seg_bytes).is_some_and(|pos| !needed(pos)) {
            if !dry_run {
                store.delete(&key).await?;
            }
            removed.push(key);
        }
    }
    Ok((removed, Some(first)))
}

/// Passes a tar stream through, keeping `backup_label` and the tail of
/// `backup_manifest` (where its WAL ranges are) as they go by.
struct TarWatch<R> {
    inner: R,
    header: Vec<u8>,
    data_left: u64,
    pad_left: u64,
    capturing: Option<Watched>,
    label: Vec<u8>,
    manifest_tail: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Watched {
    Label,
    Manifest,
}

/// What of the manifest is kept: its WAL ranges and checksum close it.
const TAIL: usize = 64 << 10;

impl<R> TarWatch<R> {
    fn new(inner: R) -> TarWatch<R> {
        TarWatch {
            inner,
            header: Vec::with_capacity(512),
            data_left: 0,
            pad_left: 0,
            capturing: None,
            label: Vec::new(),
            manifest_tail: Vec::new(),
        }
    }

    fn observe(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            if self.data_left > 0 {
                let n = buf
                    .len()
                    .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                match self.capturing {
                    Some(Watched::Label) if self.label.len() < TAIL => {
                        self.label.extend_from_slice(&buf[..n])
                    }
                    Some(Watched::Manifest) => {
                        self.manifest_tail.extend_from_slice(&buf[..n]);
                        if self.manifest_tail.len() > 2 * TAIL {
                            self.manifest_tail.drain(..self.manifest_tail.len() - TAIL);
                        }
                    }
                    _ => {}
                }
                self.data_left -= n as u64;
                buf = &buf[n..];
            } else if self.pad_left > 0 {
                let n = buf.len().min(self.pad_left as usize);
                self.pad_left -= n as u64;
                buf = &buf[n..];
            } else {
                let n = buf.len().min(512 - self.header.len());
                self.header.extend_from_slice(&buf[..n]);
                buf = &buf[n..];
                if self.header.len() == 512 {
                    self.on_header();
                    self.header.clear();
                }
            }
        }
    }

    fn on_header(&mut self) {
        let h = &self.header;
        if h.iter().all(|b| *b == 0) {
            return; // the end-of-archive blocks
        }
        let text = |r: std::ops::Range<usize>| {
            let f = &h[r];
            let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).trim().to_string()
        };
        let size = if h[124] & 0x80 != 0 {
            // base-256, for entries of 8 GiB and more
            h[125..136]
                .iter()
                .fold(0u64, |a, b| (a << 8) | u64::from(*b))
        } else {
            u64::from_str_radix(&text(124..136), 8).unwrap_or(0)
        };
        let name = text(0..100);
        let regular = matches!(h[156], b'0' | 0);
        self.capturing = match name.trim_start_matches("./") {
            "backup_label" if regular => Some(Watched::Label),
            "backup_manifest" if regular => Some(Watched::Manifest),
            _ => None,
        };
        self.data_left = size;
        self.pad_left = (512 - size % 512) % 512;
    }
}

impl<R: Read> Read for TarWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_and_wal_file_names_are_postgres_own() {
        assert_eq!(parse_lsn("0/3000028").unwrap(), 0x300_0028);
        assert_eq!(parse_lsn("1A/FF").unwrap(), (0x1A << 32) | 0xFF);
        assert_eq!(format_lsn((0x1A << 32) | 0xFF), "1A/FF");
        for bad in [
            "",
            "0",
            "/1",
            "0/",
            "G/1",
            "0/123456789",
            "1/2/3",
            "+0/+3000028",
            "0/ 1",
        ] {
            assert!(parse_lsn(bad).is_err(), "{bad}");
        }
        let mib16 = 16 << 20;
        // SELECT pg_walfile_name('0/3000028') on timeline 1: 000000010000000000000003
        assert_eq!(wal_file(1, 0x300_0028, mib16), "000000010000000000000003");
        assert_eq!(
            wal_file(2, (0x1A << 32) | 0xFF00_0000, mib16),
            "000000020000001A000000FF"
        );
        // 1 GiB segments: four per 4 GiB.
        assert_eq!(
            wal_file(1, 0x1_C000_0000, 1 << 30),
            "000000010000000100000003"
        );
        assert_eq!(
            segment_start("000000020000001A000000FF", mib16),
            Some((0x1A << 32) | 0xFF00_0000)
        );
    }

    #[test]
    fn the_tar_gives_start_end_and_timeline() {
        let label = b"START WAL LOCATION: 0/2000028 (file 000000030000000000000002)\n\
                      CHECKPOINT LOCATION: 0/2000060\nLABEL: lethe\nSTART TIMELINE: 3\n";
        let manifest = br#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [ { "Path": "PG_VERSION", "Size": 3 } ],
"WAL-Ranges": [
{ "Timeline": 3, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
"Manifest-Checksum": "ab" }"#;
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in [
            ("base/1/1259", &[7u8; 1000][..]),
            ("backup_label", &label[..]),
            ("global/pg_control", &[1u8; 8192][..]),
            ("backup_manifest", &manifest[..]),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(body.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, name, body).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        // Read in odd-sized pieces: headers and bodies split across reads.
        let mut w = TarWatch::new(std::io::Cursor::new(bytes.clone()));
        let mut out = Vec::new();
        let mut piece = [0u8; 333];
        loop {
            let n = w.read(&mut piece).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&piece[..n]);
        }
        assert_eq!(out, bytes, "passed through unchanged");
        assert_eq!(
            wal_points(&w.label, &w.manifest_tail).unwrap(),
            WalPoints {
                start: 0x200_0028,
                timeline: 3,
                end: 0x200_0100,
                end_timeline: 3
            }
        );
        assert!(wal_points(b"", &w.manifest_tail).is_err());
        assert!(wal_points(&w.label, b"{}").is_err());
    }
}

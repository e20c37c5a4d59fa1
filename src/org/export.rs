//! An org's export: every org-scoped row of the chosen classes, one JSON
//! Lines file a table, plus `manifest.json` (each file's table, class, row
//! count and SHA-256), in a tar compressed with zstd and encrypted with age to
//! the export keys, uploaded, and its link mailed to the DPO. Rows stream
//! from the database into temporary files (encrypted columns opened on the
//! way), so memory stays flat whatever the org's size.

use std::io::Write;

use chrono::Utc;
use serde_json::{json, Value};
use sha2::Digest;

use super::{check_org_exists, org_tables};
use crate::appdb::AppDb;
use crate::config::DataMapEntry;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::notify::{self, Block, Message, Role, Tone};
use crate::store::org_requests::{DONE, EXPIRED, EXPORT, FAILED, SCHEDULED};
use crate::store::OrgRequest;

/// One table's file in the archive.
#[derive(Debug, Clone, serde::Serialize)]
struct TableFile {
    table: String,
    class: String,
    file: String,
    rows: u64,
    sha256: String,
    /// Encrypted values the export could not open (their org key is gone): `null`.
    unreadable: u64,
}

/// Writes the org's rows of `e` to `path` as JSON Lines.
async fn spool_table(
    ctx: &Context,
    db: &AppDb,
    e: &DataMapEntry,
    org: &str,
    path: &std::path::Path,
) -> Result<TableFile> {
    let org_col = e.org.as_deref().unwrap_or_default();
    let mut rows = db.org_rows(&e.table, org_col, org).await?;
    let file = crate::private_file::create(path)
        .map_err(|err| Error::io("creating a file of the export", err))?;
    let mut out = std::io::BufWriter::new(file);
    let (mut hash, mut count) = (sha2::Sha256::new(), 0u64);
    let mut keys = if e.encrypted.is_empty() {
        None
    } else {
        crate::keys::DataKeys::load(ctx).await?
    };
    let unreadable = crate::dsr::drain_opened(&mut rows, e, keys.as_mut(), |line| {
        hash.update(line.as_bytes());
        hash.update(b"\n");
        writeln!(out, "{line}").map_err(|err| Error::io("writing the export", err))?;
        count += 1;
        Ok(())
    })
    .await?;
    out.flush()
        .map_err(|err| Error::io("writing the export", err))?;
    Ok(TableFile {
        table: e.table.clone(),
        class: e.class.clone(),
        file: format!("{}.jsonl", e.table),
        rows: count,
        sha256: hex::encode(hash.finalize()),
        unreadable,
    })
}

/// An export older than this that is still `scheduled` was left by a crashed
/// process: a new export of the org takes its place.
const ABANDONED_AFTER: chrono::Duration = chrono::Duration::hours(1);

/// Exports `org`'s rows of `classes` (all when empty); returns the evidence.
pub async fn export(ctx: &Context, org: &str, classes: &[String], actor: &str) -> Result<Value> {
    let r = record_export(ctx, org, classes, actor).await?;
    crate::test_hooks::crash_point("org_export_recorded");
    run_export(ctx, &r, actor).await
}

/// Checks and records an export request (one running per org).
pub async fn record_export(
    ctx: &Context,
    org: &str,
    classes: &[String],
    actor: &str,
) -> Result<OrgRequest> {
    let tables = org_tables(ctx, classes)?;
    check_org_exists(ctx, org, &tables).await?;
    let now = Utc::now();
    let request = OrgRequest {
        id: 0,
        org: org.to_string(),
        kind: EXPORT.into(),
        classes: json!(classes),
        reason: "export requested by the org".into(),
        contact: None,
        state: String::new(),
        requested_by: actor.to_string(),
        requested_at: now,
        execute_after: now,
        due_at: now + chrono::Duration::from_std(super::DEADLINE).unwrap_or_default(),
        completed_at: None,
        result: None,
    };
    let event = |id: &i64| {
        crate::store::evidence(
            actor,
            "org.export_requested",
            &format!("org:{org}"),
            json!({"request": id}),
        )
    };
    let stale = ctx
        .store
        .org_requests(Some(org))
        .await?
        .into_iter()
        .find(|r| {
            r.kind == EXPORT && r.state == SCHEDULED && r.requested_at < now - ABANDONED_AFTER
        });
    if let Some(old) = stale {
        let ev = crate::store::evidence(
            actor,
            "org.export_abandoned",
            &format!("org:{org}"),
            json!({"request": old.id}),
        );
        let why = json!({"error": "abandoned: still running an hour later (its process stopped?)"});
        ctx.store
            .org_request_move(old.id, SCHEDULED, FAILED, &why, &ev)
            .await?;
    }
    ctx.store.org_request_insert(&request, &event).await
}

/// Deletes export archives: every one of `org` (its deletion), else those
/// whose link expired (`dsr.export_link_ttl` after the export). An archive
/// that cannot be deleted now is tried again by the next run. Returns the
/// requests whose archive went, and how many could not be deleted now.
pub async fn delete_exports(
    ctx: &Context,
    actor: &str,
    org: Option<&str>,
) -> Result<(Vec<i64>, usize)> {
    let ttl =
        chrono::Duration::from_std(ctx.config.dsr.export_link_ttl).unwrap_or(chrono::Duration::MAX);
    let now = Utc::now();
    let due: Vec<OrgRequest> = ctx
        .store
        .org_requests(org)
        .await?
        .into_iter()
        .filter(|r| r.kind == EXPORT && r.state == DONE)
        .filter(|r| {
            org.is_some()
                || r.completed_at
                    .is_some_and(|c| c.checked_add_signed(ttl).is_some_and(|end| end <= now))
        })
        .collect();
    let (mut deleted, mut failed) = (Vec::new(), 0);
    if due.is_empty() {
        // No archive to delete: a config without an object store is fine.
        return Ok((deleted, failed));
    }
    let store = ctx.object_store().await?;
    for r in due {
        let Some(object) = r
            .result
            .as_ref()
            .and_then(|v| v["object"].as_str())
            .map(str::to_string)
        else {
            continue;
        };
        if let Err(e) = store.delete(&object).await {
            tracing::warn!(request = r.id, error = %e, "org export archive not deleted; the next run tries again");
            failed += 1;
            continue;
        }
        let why = if org.is_some() {
            "the org was deleted"
        } else {
            "its link expired"
        };
        let mut result = r.result.clone().unwrap_or_default();
        result["archive_deleted_at"] = json!(now);
        let event = crate::store::evidence(
            actor,
            "org.export_deleted",
            &format!("org:{}", r.org),
            json!({"request": r.id, "object": object, "reason": why}),
        );
        if ctx
            .store
            .org_request_move(r.id, DONE, EXPIRED, &result, &event)
            .await?
        {
            deleted.push(r.id);
        }
    }
    Ok((deleted, failed))
}

/// Runs a recorded export; a failure closes the request as failed, with the error.
pub async fn run_export(ctx: &Context, r: &OrgRequest, actor: &str) -> Result<Value> {
    let classes: Vec<String> = serde_json::from_value(r.classes.clone()).unwrap_or_default();
    match write_export(ctx, r, &classes).await {
        Ok((result, mail)) => {
            let event = crate::store::evidence(
                actor,
                "org.exported",
                &format!("org:{}", r.org),
                result.clone(),
            );
            if !ctx
                .store
                .org_request_move(r.id, SCHEDULED, DONE, &result, &event)
                .await?
            {
                return Err(Error::Failed(format!(
                    "export request {} was closed meanwhile (taken over as abandoned?): its archive {} is not delivered",
                    r.id, result["object"]
                )));
            }
            // The link goes out only for an export recorded as done.
            notify::enqueue(ctx, mail).await?;
            Ok(result)
        }
        Err(e) => {
            let why = json!({"error": e.to_string()});
            let event = crate::store::evidence(
                actor,
                "org.export_failed",
                &format!("org:{}", r.org),
                why.clone(),
            );
            ctx.store
                .org_request_move(r.id, SCHEDULED, FAILED, &why, &event)
                .await?;
            Err(e)
        }
    }
}

async fn write_export(
    ctx: &Context,
    r: &OrgRequest,
    classes: &[String],
) -> Result<(Value, Message)> {
    let tables = org_tables(ctx, classes)?;
    let org = r.org.as_str();
    let dir = tempfile::tempdir().map_err(|e| Error::io("a folder for the export", e))?;
    let db = AppDb::connect(&ctx.config.database.url).await?;
    let mut files = Vec::new();
    for e in &tables {
        let path = dir.path().join(format!("{}.jsonl", files.len()));
        files.push((spool_table(ctx, &db, e, org, &path).await?, path));
    }
    db.close().await;
    let manifest = json!({
        "org": org, "request": r.id, "created_at": Utc::now(), "classes": classes,
        "tables": files.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
    });
    let (key, stored, mail) = upload(ctx, r, &manifest, files).await?;
    let result = json!({"request": r.id, "org": org, "object": key, "sha256": stored.sha256,
                        "bytes": stored.stored_bytes, "manifest": manifest});
    Ok((result, mail))
}

/// Tars the manifest and the files, then zstd + age + upload; the mail with the link.
async fn upload(
    ctx: &Context,
    r: &OrgRequest,
    manifest: &Value,
    files: Vec<(TableFile, std::path::PathBuf)>,
) -> Result<(String, crate::archive::Encoded, Message)> {
    let config = ctx.config.as_ref();
    let manifest_text =
        serde_json::to_vec_pretty(manifest).map_err(|e| Error::json("the export's manifest", e))?;
    let recipients = crate::archive::parse_recipients(config.export_recipients()?)?;
    let store = ctx.object_store().await?;
    let key = format!(
        "{}org-{}-export-{}.tar.zst.age",
        config.dsr.export_prefix,
        plain(&r.org),
        r.id
    );
    let enc = crate::objstore::stream_upload(
        store.as_ref(),
        &key,
        8 << 20,
        "org export: uploaded",
        move |sink| {
            // The tar is written into a pipe as zstd + age read it: no second copy on disk.
            let (reader, writer) = pipe();
            let tar = std::thread::spawn(move || {
                write_tar(
                    std::io::BufWriter::with_capacity(CHUNK, writer),
                    &manifest_text,
                    &files,
                )
            });
            let encoded = crate::archive::encode(reader, sink, &recipients, 3, 1);
            // A tar that failed half-way must fail the upload, not store a short archive.
            match tar.join() {
                Ok(Ok(())) => encoded,
                Ok(Err(e)) => Err(Error::io("building the export archive", e)),
                Err(_) => Err(Error::Failed("the export's tar writer panicked".into())),
            }
        },
    )
    .await?;
    let ttl = config.dsr.export_link_ttl;
    let link = store.presign(&key, ttl).await?;
    let expires = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
    let mail = ready(ctx, r, &enc, link, expires);
    Ok((key, enc, mail))
}

/// Bytes a pipe chunk holds, and chunks in flight: 16 MiB at most.
const CHUNK: usize = 1 << 20;
const CHUNKS_IN_FLIGHT: usize = 16;

/// A bounded in-memory pipe between two threads (the tar writer and the
/// encoder): the writer blocks while the reader is behind; a dropped writer
/// is the end of the stream, a dropped reader an error for the writer.
fn pipe() -> (PipeReader, PipeWriter) {
    let (tx, rx) = std::sync::mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    (
        PipeReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        },
        PipeWriter(tx),
    )
}

struct PipeWriter(std::sync::mpsc::SyncSender<Vec<u8>>);

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(buf.to_vec()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the encoder stopped")
        })?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct PipeReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl std::io::Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(next) => (self.chunk, self.at) = (next, 0),
                Err(_) => return Ok(0), // the writer is done (or gone: the join says which)
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The manifest and the table files, as one tar into `out`.
fn write_tar(
    out: impl std::io::Write,
    manifest: &[u8],
    files: &[(TableFile, std::path::PathBuf)],
) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(out);
    let mut h = tar::Header::new_gnu();
    h.set_size(manifest.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(Utc::now().timestamp().max(0) as u64);
    h.set_cksum();
    tar.append_data(&mut h, "manifest.json", manifest)?;
    for (t, path) in files {
        tar.append_path_with_name(path, &t.file)?;
    }
    tar.into_inner()?.flush()
}

/// The DPO's notice that the export is ready, with its link.
fn ready(
    ctx: &Context,
    r: &OrgRequest,
    enc: &crate::archive::Encoded,
    link: String,
    expires: chrono::DateTime<Utc>,
) -> Message {
    let zone = notify::zone(ctx);
    Message {
        role: Role::Dpo,
        subject: format!("[lethe] export of org {} ready (request {})", r.org, r.id),
        blocks: vec![
            Block::Notice(
                Tone::Warn,
                format!(
                    "Deliver this export to org {}; the link expires {}.",
                    r.org,
                    zone.show(expires)
                ),
            ),
            Block::Facts(vec![
                ("Request".into(), r.id.to_string()),
                (
                    "Size".into(),
                    format!(
                        "{} bytes, encrypted with age to the export keys",
                        enc.stored_bytes
                    ),
                ),
                ("SHA-256".into(), enc.sha256.clone()),
            ]),
            Block::Link {
                text: "Download the encrypted export".into(),
                url: link,
            },
            Block::Para("Open it with: age -d -i KEY FILE | zstd -d | tar x".into()),
        ],
        attachments: vec![],
        dedupe_key: Some(format!("org-export:{}", r.id)),
    }
}

/// The org id as it may appear in an object key: letters, digits, `_`
/// and `-` kept, anything else (`/`, `.`) as `%XX`.
fn plain(org: &str) -> String {
    org.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_table_file_that_cannot_be_read_fails_the_tar() {
        let t = super::TableFile {
            table: "events".into(),
            class: "events".into(),
            file: "events.jsonl".into(),
            rows: 1,
            sha256: String::new(),
            unreadable: 0,
        };
        let gone = std::path::PathBuf::from("/nonexistent/lethe/events.jsonl");
        let mut out = Vec::new();
        assert!(super::write_tar(&mut out, b"{}", &[(t, gone)]).is_err());
    }

    #[test]
    fn the_pipe_carries_every_byte_and_a_gone_reader_stops_the_writer() {
        use std::io::{Read, Write};
        let (mut r, w) = super::pipe();
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let t = std::thread::spawn(move || {
            let mut w = std::io::BufWriter::with_capacity(super::CHUNK, w);
            w.write_all(&sent)?;
            w.flush()
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        t.join().unwrap().unwrap();
        assert_eq!(got, data);
        let (r, mut w) = super::pipe();
        drop(r);
        assert!(w.write_all(b"x").is_err());
    }

    #[test]
    fn an_org_id_cannot_leave_the_export_folder() {
        assert_eq!(super::plain("acme-2_b"), "acme-2_b");
        assert_eq!(super::plain("../../etc/x"), "%2E%2E%2F%2E%2E%2Fetc%2Fx");
    }
}

//! A subject's export: one JSON file per exported table, the files their
//! rows reference (`files/<table>/<key>`), and a README; spooled to a
//! private temporary file, then zstd + age to the export keys and streamed
//! to the object store part by part, so no file is ever whole in memory.
//! Files beyond `dsr.export_max_bytes` are left out, and the README names
//! each one left out and why.

use std::collections::BTreeMap;
use std::fs::File;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::appdb::{AppDb, OrgScope};
use crate::config::{Config, DataMapEntry};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::notify::{self, Block, Message, Role, Tone, Zone};
use crate::store::DsrRequest;

type Tar = tar::Builder<File>;

/// What went into the archive.
#[derive(Default)]
struct Contents {
    rows: BTreeMap<String, usize>,
    unreadable: u64,
    files: u64,
    file_bytes: u64,
    left_out: Vec<String>,
}

pub(super) async fn export(
    ctx: &Context,
    db: &AppDb,
    r: &DsrRequest,
    actor: &str,
    fence: &Fence,
) -> Result<std::result::Result<Value, (String, String)>> {
    let config = ctx.config.as_ref();
    let (_, subject_id) = match super::process::subject_of(ctx, db, r).await? {
        Ok(found) => found,
        Err(rejection) => return Ok(Err(rejection)),
    };
    // Refused before anything is read: an export with no key of its own is not built.
    let recipients = crate::archive::parse_recipients(config.export_recipients()?)?;
    let (spool, contents) = spool_archive(ctx, db, r, &subject_id).await?;
    let reopen = || {
        spool
            .reopen()
            .map_err(|e| Error::io("reading the export's temporary file", e))
    };
    let archive = reopen()?;

    let store = ctx.object_store().await?;
    let key = format!(
        "{}dsr-{}-export.tar.zst.age",
        config.dsr.export_prefix, r.id
    );
    let ttl = config.dsr.export_link_ttl;
    let expires = chrono::Utc::now()
        + chrono::Duration::from_std(ttl)
            .map_err(|_| Error::Usage("dsr.export_link_ttl is too large".into()))?;
    let subject_key = config
        .dsr
        .deliver_to_subject
        .then(|| super::deliver::subject_key(ctx, r.id));
    // Tracked before they exist, so a crash after an upload leaves no archive nobody deletes.
    ctx.store
        .dsr_export_started(r.id, (&key, subject_key.as_deref()), expires)
        .await?;
    fence.check()?;
    let for_subject = reopen()?;
    let enc = crate::objstore::stream_upload(
        store.as_ref(),
        &key,
        8 << 20,
        "export: uploaded",
        move |sink| crate::archive::encode(archive, sink, &recipients, 3, 1),
    )
    .await?;
    let copy = match subject_key {
        Some(_) => Some(super::deliver::to_subject(ctx, r, for_subject, expires).await?),
        None => None,
    };
    drop(spool);
    let link = store.presign(&key, ttl).await?;
    let (size, sha256) = (enc.stored_bytes, enc.sha256);
    let message = ready(
        r,
        (&contents, copy.is_some()),
        size,
        (&link, &sha256),
        expires,
        &notify::zone(ctx),
    );
    notify::enqueue(ctx, message).await?;
    let evidence = evidence(r, (&key, &sha256, size), &contents, copy.as_ref(), expires);
    crate::audit::record(
        ctx.store.as_ref(),
        actor,
        "dsr.exported",
        &format!("dsr:{}", r.id),
        evidence.clone(),
    )
    .await?;
    Ok(Ok(evidence))
}

/// What `dsr.exported` records: the archive, what it holds, and whether the
/// subject was sent their copy (never its passphrase).
fn evidence(
    r: &DsrRequest,
    (key, sha256, size): (&str, &str, u64),
    contents: &Contents,
    copy: Option<&super::deliver::SubjectCopy>,
    expires: chrono::DateTime<chrono::Utc>,
) -> Value {
    let mut evidence = json!({"request": r.id, "object": key, "sha256": sha256, "bytes": size, "rows": contents.rows,
                              "files": contents.files, "file_bytes": contents.file_bytes,
                              "files_left_out": contents.left_out.len(), "link_expires_at": expires.to_rfc3339()});
    if let Some(c) = copy {
        evidence["subject_copy"] = json!({"object": c.key, "sha256": c.sha256, "bytes": c.bytes, "mailed_to_subject": true});
    }
    evidence
}

/// The whole archive (tables, files, README) in a private temporary file.
async fn spool_archive(
    ctx: &Context,
    db: &AppDb,
    r: &DsrRequest,
    subject_id: &str,
) -> Result<(tempfile::NamedTempFile, Contents)> {
    let spool = tempfile::NamedTempFile::new()
        .map_err(|e| Error::io("creating the export's temporary file", e))?;
    let file = spool
        .reopen()
        .map_err(|e| Error::io("opening the export's temporary file", e))?;
    let mut tar = Some(tar::Builder::new(file));
    let contents = fill(ctx, db, r, subject_id, &mut tar).await?;
    blocking(&mut tar, |t| t.finish()).await?;
    Ok((spool, contents))
}

/// The DPO's notice that the export is ready, with its link.
fn ready(
    r: &DsrRequest,
    (contents, subject_sent): (&Contents, bool),
    size: u64,
    (link, sha256): (&str, &str),
    expires: chrono::DateTime<chrono::Utc>,
    zone: &Zone,
) -> Message {
    let notice = if subject_sent {
        Block::Notice(
            Tone::Good,
            format!(
                "The subject was mailed their own copy: a link and, in a second mail, its one-time password. \
                 The archive below is yours, encrypted to the export keys; both links expire {}.",
                zone.show(expires)
            ),
        )
    } else {
        Block::Notice(
            Tone::Warn,
            format!(
                "Deliver this export to the subject before {}; the link below expires {}.",
                zone.show(r.due_at),
                zone.show(expires)
            ),
        )
    };
    Message {
        role: Role::Dpo,
        subject: format!("[lethe] data export ready for request {}", r.id),
        blocks: vec![
            notice,
            Block::Facts(vec![
                (
                    "Request".into(),
                    format!("{} ({}, {})", r.id, r.kind, r.jurisdiction),
                ),
                (
                    "Scope".into(),
                    match &r.org {
                        Some(o) => format!("org {o}'s workspace only"),
                        None => "every org".into(),
                    },
                ),
                (
                    "Contents".into(),
                    format!(
                        "{} tables and {} files",
                        contents.rows.len(),
                        contents.files
                    ),
                ),
                (
                    "Size".into(),
                    format!("{size} bytes, encrypted with age to the export keys"),
                ),
                ("SHA-256".into(), sha256.to_string()),
            ]),
            Block::Link {
                text: "Download the encrypted export".into(),
                url: link.to_string(),
            },
            Block::Para("Look the request up, or see its evidence, with:".into()),
            Block::Command(format!("lethe dsr show {}", r.id)),
        ],
        attachments: vec![],
        dedupe_key: Some(format!("dsr-export:{}", r.id)),
    }
}

/// Runs `f` on the archive on a blocking thread (file writes of any size).
async fn blocking<R: Send + 'static>(
    tar: &mut Option<Tar>,
    f: impl FnOnce(&mut Tar) -> std::io::Result<R> + Send + 'static,
) -> Result<R> {
    let mut t = tar
        .take()
        .ok_or_else(|| Error::Failed("the export archive failed earlier".into()))?;
    let (t, r) = tokio::task::spawn_blocking(move || {
        let r = f(&mut t);
        (t, r)
    })
    .await
    .map_err(|e| Error::task("building the export archive", e))?;
    *tar = Some(t);
    r.map_err(|e| Error::io("building the export archive", e))
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
    h.set_cksum();
    h
}

async fn append_text(tar: &mut Option<Tar>, name: String, body: String) -> Result<()> {
    blocking(tar, move |t| {
        t.append_data(&mut header(body.len() as u64), name, body.as_bytes())
    })
    .await
}

/// The tables, the files and the README, into the archive.
async fn fill(
    ctx: &Context,
    db: &AppDb,
    r: &DsrRequest,
    subject_id: &str,
    tar: &mut Option<Tar>,
) -> Result<Contents> {
    let config = ctx.config.as_ref();
    let mut keys = crate::keys::DataKeys::load(ctx).await?;
    let mut c = Contents::default();
    // A processor-scoped request reaches the org's tables only, and its rows there.
    let scope = OrgScope::of_request(r.org.as_deref());
    for e in config.data_map.iter().filter(|e| e.export) {
        let Some(col) = &e.subject else { continue };
        if scope.only().is_some() && e.org.is_none() {
            continue;
        }
        let table = (e.table.as_str(), e.org.as_deref());
        let rows = db.subject_rows(table, col, subject_id, scope).await?;
        let keys = keys.as_mut().filter(|_| !e.encrypted.is_empty());
        let spooled = spool_table(e, rows, keys).await?;
        c.unreadable += spooled.unreadable;
        c.rows.insert(e.table.clone(), spooled.rows);
        let (name, size, file) = (format!("{}.json", e.table), spooled.bytes, spooled.file);
        blocking(tar, move |t| t.append_data(&mut header(size), name, file)).await?;
        files(ctx, db, (e, col, subject_id), scope, tar, &mut c).await?;
    }
    append_text(tar, "README.txt".into(), readme(config, r, &c))
        .await
        .map(|()| c)
}

/// One table's rows as a JSON array in a private temporary file, written as
/// they stream from the database (encrypted columns opened a batch at a
/// time), so memory stays flat whatever the subject's row count.
struct Spooled {
    file: File,
    bytes: u64,
    rows: usize,
    unreadable: u64,
}

async fn spool_table(
    e: &DataMapEntry,
    mut rows: tokio::sync::mpsc::Receiver<Result<String>>,
    keys: Option<&mut crate::keys::DataKeys<'_>>,
) -> Result<Spooled> {
    use std::io::{Seek, Write};
    let io = |err| Error::io("writing the export's temporary file", err);
    let mut file = tempfile::tempfile().map_err(io)?;
    let mut out = std::io::BufWriter::new(&mut file);
    let mut count = 0usize;
    out.write_all(b"[").map_err(io)?;
    let unreadable = super::decrypt::drain_opened(&mut rows, e, keys, |line| {
        let sep: &[u8] = if count == 0 { b"" } else { b",\n" };
        out.write_all(sep).map_err(io)?;
        out.write_all(line.as_bytes()).map_err(io)?;
        count += 1;
        Ok(())
    })
    .await?;
    out.write_all(b"]\n").map_err(io)?;
    out.flush().map_err(io)?;
    drop(out);
    let bytes = file.stream_position().map_err(io)?;
    file.rewind().map_err(io)?;
    Ok(Spooled {
        file,
        bytes,
        rows: count,
        unreadable,
    })
}

/// The subject's files of one table, each streamed through a temporary file.
async fn files(
    ctx: &Context,
    db: &AppDb,
    (e, subject, subject_id): (&DataMapEntry, &str, &str),
    scope: OrgScope<'_>,
    tar: &mut Option<Tar>,
    c: &mut Contents,
) -> Result<()> {
    let limit = ctx.config.dsr.export_max_bytes;
    for o in &e.objects {
        let store = ctx.app_store(&o.store).await?;
        let keys = db
            .subject_object_keys(
                &e.table,
                subject,
                e.org.as_deref(),
                &o.column,
                subject_id,
                scope,
            )
            .await?;
        let mut seen = std::collections::HashSet::new();
        for (_, key) in keys {
            // Two rows may name one stored file: it goes in once.
            if !seen.insert(key.clone()) {
                continue;
            }
            // No `\` or `:` either: a ZIP tool on Windows reads them as separators and drives.
            let plain = !key.is_empty()
                && !key.contains(['\\', ':'])
                && std::path::Path::new(&key)
                    .components()
                    .all(|p| matches!(p, std::path::Component::Normal(_)));
            let name = format!("files/{}/{key}", e.table);
            if !plain {
                c.left_out.push(format!(
                    "a file of {}: its key is not a plain relative path",
                    e.table
                ));
                continue;
            }
            let Some(size) = store.head(&key).await? else {
                c.left_out.push(format!("{name}: not found in the store"));
                continue;
            };
            if c.file_bytes + size > limit {
                c.left_out.push(format!("{name} ({size} bytes): the export's size limit of {limit} bytes was reached; ask for it separately"));
                continue;
            }
            let tmp = tempfile::NamedTempFile::new()
                .map_err(|e| Error::io("creating a temporary file", e))?;
            let mut out = tokio::fs::File::from_std(
                tmp.reopen()
                    .map_err(|e| Error::io("opening a temporary file", e))?,
            );
            let mut body = store.get(&key).await?;
            let copied = tokio::io::copy(&mut body, &mut out)
                .await
                .map_err(|err| crate::objstore::error("get", &key, err))?;
            out.flush()
                .await
                .map_err(|e| Error::io("writing a temporary file", e))?;
            let file = tmp
                .reopen()
                .map_err(|e| Error::io("reading a temporary file", e))?;
            blocking(tar, move |t| t.append_data(&mut header(copied), name, file)).await?;
            c.files += 1;
            c.file_bytes += copied;
        }
    }
    Ok(())
}

fn readme(config: &Config, r: &DsrRequest, c: &Contents) -> String {
    let mut readme = format!(
        "Data export for request {} ({}), created {}.\nOne JSON file per table; each holds the rows about the subject.\n",
        r.id,
        r.jurisdiction,
        chrono::Utc::now().to_rfc3339()
    );
    if config.dsr.deliver_to_subject {
        readme.push_str(
            "The copy mailed to the subject also has each table as CSV, for spreadsheets; a cell \
             that begins like a formula (= + - @) is prefixed with ' so that it is shown, not run.\n",
        );
    }
    if let Some(org) = &r.org {
        readme.push_str(&format!(
            "The request was limited to org {org}'s workspace: only its tables, and only its rows there.\n"
        ));
    }
    if c.files > 0 {
        readme.push_str(&format!(
            "files/ holds the subject's {} file(s), by table and storage key.\n",
            c.files
        ));
    }
    if c.unreadable > 0 {
        readme.push_str(&format!("{} encrypted value(s) could not be decrypted (their organisation's key was destroyed) and are shown as null.\n", c.unreadable));
    }
    if !c.left_out.is_empty() {
        readme.push_str(&format!(
            "{} file(s) are not in this archive (the size limit is {} bytes):\n",
            c.left_out.len(),
            config.dsr.export_max_bytes
        ));
        for l in &c.left_out {
            readme.push_str(&format!("- {l}\n"));
        }
    }
    readme
}

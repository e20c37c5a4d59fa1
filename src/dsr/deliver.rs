//! Delivery of an export to the subject (`dsr.deliver_to_subject`): their own
//! copy (see `subject_copy`) behind a time-limited link in one mail, its
//! passphrase in a second, so that neither mail alone opens it. The DPO's
//! archive, sealed to the export keys, is the DPO's (see `export`).

use std::fs::File;

use chrono::{DateTime, Utc};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::notify::{self, Block, Message, Role, Tone};
use crate::store::DsrRequest;

/// The subject's copy, as stored.
pub(super) struct SubjectCopy {
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Where the subject's copy of request `id` is stored.
pub(super) fn subject_key(ctx: &Context, id: i64) -> String {
    format!("{}dsr-{id}-subject.zip", ctx.config.dsr.export_prefix)
}

/// Builds the subject's copy from the finished export tar, stores it, and
/// queues the link mail and then the passphrase mail to the subject.
pub(super) async fn to_subject(
    ctx: &Context,
    r: &DsrRequest,
    tar: File,
    expires: DateTime<Utc>,
) -> Result<SubjectCopy> {
    let key = subject_key(ctx, r.id);
    let store = ctx.object_store().await?;
    // A retry after the mails went out reuses that copy: a new one would
    // not open with the passphrase the subject already holds.
    if let Some(sha256) = &r.subject_copy_sha {
        if let Some(bytes) = store.head(&key).await? {
            return Ok(SubjectCopy {
                key,
                bytes,
                sha256: sha256.clone(),
            });
        }
    }
    let passphrase = super::subject_copy::passphrase();
    let pass = passphrase.clone();
    let zip = tokio::task::spawn_blocking(move || {
        let out = tempfile::tempfile()?;
        super::subject_copy::build(tar, out, &pass)
    })
    .await
    .map_err(|e| Error::task("building the subject's copy", e))?
    .map_err(|e| Error::io("building the subject's copy", e))?;

    let (sha256, bytes) = crate::objstore::stream_upload(
        store.as_ref(),
        &key,
        8 << 20,
        "export: subject's copy uploaded",
        move |mut sink| {
            let mut zip = zip;
            std::io::copy(&mut zip, &mut sink)
                .and_then(|_| sink.finish())
                .map_err(|e| Error::io("uploading the subject's copy", e))
        },
    )
    .await?;
    let link = store.presign(&key, ctx.config.dsr.export_link_ttl).await?;
    // A retry after a crash makes a new copy with a new passphrase: the pair
    // of mails is keyed by the copy, so the subject gets a matching pair.
    let pair = format!("{}:{}", r.id, &sha256[..12.min(sha256.len())]);
    let to = [r.subject.clone()];
    notify::enqueue_to(ctx, link_mail(ctx, r, (&link, bytes), expires, &pair), &to).await?;
    notify::enqueue_secret(ctx, secret_mail(r, passphrase, &pair), &to).await?;
    ctx.store.dsr_subject_copy_mailed(r.id, &sha256).await?;
    Ok(SubjectCopy { key, bytes, sha256 })
}

/// The first mail: the link, and how to open what it fetches.
fn link_mail(
    ctx: &Context,
    r: &DsrRequest,
    (link, bytes): (&str, u64),
    expires: DateTime<Utc>,
    pair: &str,
) -> Message {
    let zone = notify::zone(ctx);
    Message {
        role: Role::Subject,
        subject: format!("Your data export is ready (request {})", r.id),
        blocks: vec![
            Block::Para(format!(
                "You asked for a copy of the personal data we hold about you (request {}, received {}). Here it is.",
                r.id,
                zone.show(r.received_at)
            )),
            Block::Link {
                text: format!("Download your data (ZIP file, {})", size_text(bytes)),
                url: link.to_string(),
            },
            Block::Notice(
                Tone::Warn,
                format!(
                    "The link works until {}; after that the file is deleted.",
                    zone.show(expires)
                ),
            ),
            Block::Para(
                "The file is locked with a password, which we send in a separate email. \
                 To open it: on Windows use 7-Zip (free); on a Mac use Keka or The Unarchiver; \
                 on Linux your file manager or 7-Zip. Enter the password when asked. \
                 (The unzip built into Windows and macOS cannot open this kind of locked file.)"
                    .into(),
            ),
            Block::Para(
                "Inside: a README, and for each kind of record we keep a JSON file (exact, for \
                 moving your data to another service) and a CSV file (opens in a spreadsheet); \
                 your files are in the files folder."
                    .into(),
            ),
        ],
        attachments: vec![],
        dedupe_key: Some(format!("dsr-subject-link:{pair}")),
    }
}

/// The second mail: the passphrase alone, no link.
fn secret_mail(r: &DsrRequest, passphrase: String, pair: &str) -> Message {
    Message {
        role: Role::Subject,
        subject: format!("The password for your data export (request {})", r.id),
        blocks: vec![
            Block::Para(format!(
                "This password opens the file in our other email about request {}. It works for that file only.",
                r.id
            )),
            // Facts, not a command: nothing to copy but the passphrase itself.
            Block::Facts(vec![("Password".into(), passphrase)]),
            Block::Para("Keep it to yourself: we will never ask you for it.".into()),
        ],
        attachments: vec![],
        dedupe_key: Some(format!("dsr-subject-secret:{pair}")),
    }
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{} KB", b >> 10),
        b => format!("{b} bytes"),
    }
}

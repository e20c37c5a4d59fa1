//! Object storage behind one interface: a local folder (`file://`) or S3 and
//! S3-compatible stores (`s3://bucket/prefix`). Uploads are streamed part by
//! part; an upload that is not completed is aborted, leaving no orphan parts.

mod local;
mod s3;
mod s3_listing;
mod s3_purge;

pub use local::LocalStore;
pub use s3::S3Store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

use crate::config::ObjectStoreConfig;
use crate::error::{Error, Result};

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// One page of the keys that hold data (see `ObjectStore::list_versions_page`).
#[derive(Debug, Default)]
pub struct VersionsPage {
    pub keys: Vec<Listed>,
    /// Where the next page starts; `None` when this was the last. A page
    /// may be empty and still have a next one (one key's many versions).
    pub next: Option<String>,
}

/// A key written once that a versioned store shows was written again, or
/// deleted: more than one version, or a delete marker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rewritten {
    pub key: String,
    /// Object versions (data), the first write included.
    pub versions: u64,
    pub delete_markers: u64,
}

/// What deleting objects for good did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    /// Keys that had anything to delete.
    pub objects: u64,
    /// Versions and delete markers removed (one per object without versioning).
    pub versions: u64,
    pub bytes: u64,
    /// Versions the bucket's Object Lock keeps.
    pub locked: Vec<Locked>,
    /// Keys refused as unsafe for the store (a folder store takes plain
    /// relative paths only): nothing was deleted for them.
    pub refused: Vec<String>,
    /// Per key (as given): versions and bytes deleted, for callers that
    /// count per org.
    pub by_key: std::collections::BTreeMap<String, (u64, u64)>,
    /// Keys (as given) not wholly deleted yet under [`Tail::Defer`]: pass
    /// them again (versions already deleted are counted in `by_key`).
    pub unfinished: std::collections::BTreeSet<String>,
}

/// Whether a purge sends a last `DeleteObjects` request that is not full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Everything now: the last call of a purge.
    Send,
    /// The keys whose versions would only fill a part of a request wait (in
    /// `Purged::unfinished`) for a later call with more keys, so a purge over
    /// many calls sends full requests. Stores without such requests send all.
    Defer,
}

/// An object version kept by Object Lock, and until when if the bucket says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Locked {
    pub key: String,
    pub until: Option<String>,
}

/// One streamed upload. Parts arrive in order; all but the last have the same size.
#[async_trait]
pub trait Upload: Send {
    async fn part(&mut self, data: Bytes) -> Result<()>;
    async fn complete(self: Box<Self>) -> Result<()>;
    /// Discards everything uploaded so far.
    async fn abort(self: Box<Self>) -> Result<()>;
}

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;

#[async_trait]
pub trait ObjectStore: Send + Sync {
    fn describe(&self) -> String;
    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>>;
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;
    /// Writes a small object that must outlive whoever can write the store:
    /// on S3 under Object Lock in COMPLIANCE mode until `until` (the bucket
    /// needs Object Lock enabled); a folder cannot enforce that, so the file
    /// is only made read-only and never replaced.
    async fn put_retained(
        &self,
        key: &str,
        data: Bytes,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<()>;
    async fn get(&self, key: &str) -> Result<Reader>;
    async fn get_bytes(&self, key: &str) -> Result<Bytes>;
    /// Size in bytes, or `None` when absent.
    async fn head(&self, key: &str) -> Result<Option<u64>>;
    async fn delete(&self, key: &str) -> Result<()>;
    /// Deletes each key for good: every version and delete marker where the
    /// store keeps versions. A missing key is not an error.
    async fn purge(&self, keys: &[String], tail: Tail) -> Result<Purged>;
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Every key under `prefix` that still holds data, in key order, a page
    /// at a time from `token` (the previous page's `next`): on a versioned
    /// bucket also a key whose current version is a delete marker (its older
    /// versions keep what was uploaded), aged by its newest version. Stores
    /// without versions list their objects.
    async fn list_versions_page(&self, prefix: &str, token: Option<&str>) -> Result<VersionsPage> {
        const PAGE: usize = 1000;
        let keys = self.list_page(prefix, token, PAGE).await?;
        let next = match keys.last() {
            Some(last) if keys.len() == PAGE => Some(last.key.clone()),
            _ => None,
        };
        Ok(VersionsPage { keys, next })
    }
    /// Keys under `prefix` with more than one version or a delete marker, in
    /// key order, read page by page. A store without versions (a folder)
    /// cannot tell, and returns none.
    async fn rewritten(&self, prefix: &str) -> Result<Vec<Rewritten>>;
    /// Up to `limit` objects under `prefix` after the key `after`, in key order.
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Listed>>;
    /// A link that lets the holder download the object until `ttl` passes.
    async fn presign(&self, key: &str, ttl: Duration) -> Result<String>;
    /// Multipart uploads started but neither completed nor aborted (orphans).
    async fn open_uploads(&self, prefix: &str) -> Result<Vec<String>>;
    /// Aborts every open upload whose key starts with `prefix`: what a killed
    /// process left behind. Returns how many.
    async fn abort_uploads(&self, prefix: &str) -> Result<usize>;
}

pub async fn open(cfg: &ObjectStoreConfig) -> Result<Arc<dyn ObjectStore>> {
    if let Some(rest) = cfg.url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Usage(format!(
                "object_store.url `{}` has no bucket",
                cfg.url
            )));
        }
        Ok(Arc::new(S3Store::new(cfg, bucket, prefix).await?))
    } else if let Some(path) = cfg.url.strip_prefix("file://") {
        Ok(Arc::new(LocalStore::new(path.into())))
    } else {
        Err(Error::Usage(format!(
            "object_store.url `{}` must start with s3:// or file://",
            cfg.url
        )))
    }
}

/// Streams what `produce` writes into its sink (run on a blocking thread) to
/// `key` as a multipart upload, part by part: one part waits in the channel
/// and the store bounds the parts in flight, so memory stays flat whatever
/// the size. Any failure aborts the upload: no partial object remains.
pub async fn stream_upload<T: Send + 'static>(
    store: &dyn ObjectStore,
    key: &str,
    part_size: usize,
    label: &str,
    produce: impl FnOnce(crate::archive::PartSink) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let sink = crate::archive::PartSink::new(part_size, tx);
    let producer = tokio::task::spawn_blocking(move || produce(sink));
    let mut upload = store.upload(key).await?;
    let mut upload_err = None;
    let bar = crate::progress::bar(label, None, crate::progress::Unit::Bytes);
    while let Some(part) = rx.recv().await {
        bar.inc(part.len() as u64);
        if let Err(e) = upload.part(part).await {
            upload_err = Some(e);
            break;
        }
    }
    drop(rx); // a producer still writing now fails fast with "the upload stopped"
    let produced = producer
        .await
        .map_err(|e| Error::task("the upload's producer", e));
    match (upload_err, produced) {
        (None, Ok(Ok(out))) => {
            upload.complete().await?;
            Ok(out)
        }
        (Some(e), _) | (None, Ok(Err(e))) | (None, Err(e)) => {
            if let Err(abort) = upload.abort().await {
                tracing::error!(error = %abort, key, "could not abort the failed upload");
            }
            Err(e)
        }
    }
}

/// Object-store failures: what failed, on which key, and the backend's reason.
pub fn error(op: &str, key: &str, reason: impl std::fmt::Display) -> Error {
    Error::ObjectStore(format!("{op} {key}: {reason}"))
}

//! A local folder as an object store: keys are relative paths; an upload is
//! written to `KEY.partial` and renamed into place only when complete.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{error, ObjectStore, Reader, Upload};
use crate::error::Result;

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.trim_start_matches('/'))
    }

    /// Every file below the root as a key, sorted; a missing root is empty.
    async fn walk(&self) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let mut rd = match tokio::fs::read_dir(&dir).await {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            while let Some(entry) = rd.next_entry().await? {
                let p = entry.path();
                if entry.file_type().await?.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&self.root) {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

struct LocalUpload {
    key: String,
    partial: PathBuf,
    target: PathBuf,
    file: tokio::fs::File,
}

/// `KEY.<pid>-<random>.partial`: two writers of one key (two processes
/// archiving one WAL file) never share, nor unlink, each other's partial file.
fn partial_of(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(
        ".{}-{:08x}.partial",
        std::process::id(),
        rand::random::<u32>()
    ));
    s.into()
}

#[async_trait]
impl Upload for LocalUpload {
    async fn part(&mut self, data: Bytes) -> Result<()> {
        self.file
            .write_all(&data)
            .await
            .map_err(|e| error("write", &self.key, e))
    }

    async fn complete(mut self: Box<Self>) -> Result<()> {
        self.file
            .flush()
            .await
            .map_err(|e| error("write", &self.key, e))?;
        self.file
            .sync_all()
            .await
            .map_err(|e| error("sync", &self.key, e))?;
        tokio::fs::rename(&self.partial, &self.target)
            .await
            .map_err(|e| error("rename", &self.key, e))?;
        // The rename is durable only once its folder is synced: a caller
        // (PostgreSQL, after a WAL push) may delete its own copy next.
        if let Some(dir) = self.target.parent() {
            let dir = tokio::fs::File::open(dir)
                .await
                .map_err(|e| error("sync folder of", &self.key, e))?;
            dir.sync_all()
                .await
                .map_err(|e| error("sync folder of", &self.key, e))?;
        }
        Ok(())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        drop(self.file);
        match tokio::fs::remove_file(&self.partial).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(error("abort", &self.key, e)),
        }
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        let target = self.path(key);
        if let Some(dir) = target.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| error("create folder for", key, e))?;
        }
        let partial = partial_of(&target);
        // Backups and export archives: owner-only from the first byte.
        let file = crate::private_file::create(&partial)
            .map(tokio::fs::File::from_std)
            .map_err(|e| error("create", key, e))?;
        Ok(Box::new(LocalUpload {
            key: key.to_string(),
            partial,
            target,
            file,
        }))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let mut up = self.upload(key).await?;
        up.part(data).await?;
        up.complete().await
    }

    async fn put_retained(
        &self,
        key: &str,
        data: Bytes,
        _until: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let target = self.path(key);
        if tokio::fs::try_exists(&target).await.unwrap_or(false) {
            return Err(error(
                "put",
                key,
                "already exists (a retained object is never replaced)",
            ));
        }
        self.put(key, data).await?;
        // Read-only is all a folder can do: its owner can still change it.
        let ro = std::os::unix::fs::PermissionsExt::from_mode(0o400);
        tokio::fs::set_permissions(&target, ro)
            .await
            .map_err(|e| error("make read-only", key, e))
    }

    async fn get(&self, key: &str) -> Result<Reader> {
        let f = tokio::fs::File::open(self.path(key))
            .await
            .map_err(|e| error("open", key, e))?;
        Ok(Box::new(f))
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        tokio::fs::read(self.path(key))
            .await
            .map(Bytes::from)
            .map_err(|e| error("read", key, e))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(error("stat", key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(error("delete", key, e)),
        }
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<super::Listed>> {
        let keys = self.walk().await.map_err(|e| error("list", prefix, e))?;
        let mut out = Vec::new();
        for k in keys.into_iter().filter(|k| {
            k.starts_with(prefix)
                && !k.ends_with(".partial")
                && after.is_none_or(|a| k.as_str() > a)
        }) {
            if out.len() == limit {
                break;
            }
            let meta = tokio::fs::metadata(self.path(&k))
                .await
                .map_err(|e| error("list", &k, e))?;
            let modified = meta
                .modified()
                .ok()
                .map(chrono::DateTime::<chrono::Utc>::from);
            out.push(super::Listed {
                key: k,
                size: meta.len(),
                modified,
            });
        }
        Ok(out)
    }

    async fn purge(&self, keys: &[String], _tail: super::Tail) -> Result<super::Purged> {
        let mut out = super::Purged::default();
        for key in keys {
            // A key from the application's rows must not reach outside the folder.
            let unsafe_key = key.is_empty()
                || std::path::Path::new(key)
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)));
            if unsafe_key {
                tracing::warn!(store = %self.root.display(), "an object key is not a plain relative path; nothing deleted for it");
                out.refused.push(key.clone());
                continue;
            }
            let path = self.path(key);
            match tokio::fs::metadata(&path).await {
                Ok(m) if m.is_file() => {
                    tokio::fs::remove_file(&path)
                        .await
                        .map_err(|e| error("delete", key, e))?;
                    out.objects += 1;
                    out.versions += 1;
                    out.bytes += m.len();
                    out.by_key.insert(key.clone(), (1, m.len()));
                }
                Ok(_) => return Err(error("delete", key, "not a file")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(error("delete", key, e)),
            }
        }
        Ok(out)
    }

    /// A folder keeps no versions: an overwrite leaves no trace here.
    async fn rewritten(&self, _prefix: &str) -> Result<Vec<super::Rewritten>> {
        Ok(Vec::new())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let keys = self.walk().await.map_err(|e| error("list", prefix, e))?;
        Ok(keys
            .into_iter()
            .filter(|k| k.starts_with(prefix) && !k.ends_with(".partial"))
            .collect())
    }

    async fn presign(&self, key: &str, _ttl: Duration) -> Result<String> {
        // A local folder has no signed links: the path is the link, for whoever can read the folder.
        Ok(format!("file://{}", self.path(key).display()))
    }

    async fn open_uploads(&self, prefix: &str) -> Result<Vec<String>> {
        let keys = self.walk().await.map_err(|e| error("list", prefix, e))?;
        Ok(keys
            .into_iter()
            .filter(|k| k.starts_with(prefix) && k.ends_with(".partial"))
            .collect())
    }

    async fn abort_uploads(&self, prefix: &str) -> Result<usize> {
        let open = self.open_uploads(prefix).await?;
        for key in &open {
            match tokio::fs::remove_file(self.path(key)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(error("abort", key, e)),
            }
        }
        Ok(open.len())
    }
}

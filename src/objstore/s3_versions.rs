//! Keys written more than once on a versioned bucket (Object Lock buckets
//! always are): `ListObjectVersions` shows every version and delete marker,
//! so an object meant to be written once (an anchor) that was overwritten
//! or deleted is seen, even though a GET shows only the current version.

use std::collections::BTreeMap;

use aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput;

use super::s3::{sdk, S3Store};
use super::Rewritten;
use crate::error::Result;

/// `ListObjectVersions` under one prefix, page by page.
struct VersionPages {
    full: String,
    key_marker: Option<String>,
    version_marker: Option<String>,
    done: bool,
}

impl VersionPages {
    fn new(full: &str) -> Self {
        VersionPages {
            full: full.to_string(),
            key_marker: None,
            version_marker: None,
            done: false,
        }
    }

    /// The next page, `None` after the last.
    async fn next(&mut self, s3: &S3Store) -> Result<Option<ListObjectVersionsOutput>> {
        if self.done {
            return Ok(None);
        }
        let page = s3
            .client
            .list_object_versions()
            .bucket(&s3.bucket)
            .prefix(&self.full)
            .set_key_marker(self.key_marker.take())
            .set_version_id_marker(self.version_marker.take())
            .send()
            .await
            .map_err(|e| sdk("list versions", &self.full, e))?;
        self.done = page.is_truncated() != Some(true);
        self.key_marker = page.next_key_marker().map(str::to_string);
        self.version_marker = page.next_version_id_marker().map(str::to_string);
        Ok(Some(page))
    }

    /// Where the next page starts (its first key may continue this one's
    /// last), `None` once the listing is over.
    fn next_key(&self) -> Option<&str> {
        (!self.done).then_some(self.key_marker.as_deref()).flatten()
    }
}

impl S3Store {
    /// Keys under `prefix` with more than one version or a delete marker.
    /// The listing runs in key order, so a key is complete once the listing
    /// has passed it: memory holds one page's keys, plus those found.
    pub(super) async fn rewritten_keys(&self, prefix: &str) -> Result<Vec<Rewritten>> {
        let full = self.key(prefix);
        let mut found = Vec::new();
        let mut open: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut pages = VersionPages::new(&full);
        while let Some(page) = pages.next(self).await? {
            for v in page.versions() {
                if let Some(k) = v.key() {
                    open.entry(k.to_string()).or_default().0 += 1;
                }
            }
            for m in page.delete_markers() {
                if let Some(k) = m.key() {
                    open.entry(k.to_string()).or_default().1 += 1;
                }
            }
            // Keys before the next page's first key are complete.
            let done: Vec<String> = match pages.next_key() {
                Some(next) => open
                    .range(..next.to_string())
                    .map(|(k, _)| k.clone())
                    .collect(),
                None => open.keys().cloned().collect(),
            };
            for k in done {
                if let Some((versions, delete_markers)) = open.remove(&k) {
                    if versions > 1 || delete_markers > 0 {
                        let key = k.strip_prefix(&self.prefix).unwrap_or(&k).to_string();
                        found.push(Rewritten {
                            key,
                            versions,
                            delete_markers,
                        });
                    }
                }
            }
        }
        Ok(found)
    }
}

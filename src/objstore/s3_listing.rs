//! Listing every key that still holds data on S3, page by page: a key
//! whose current version is a delete marker is invisible to `ListObjectsV2`,
//! yet its older versions still hold what was uploaded, so retention must
//! see it. Keys come from `ListObjectVersions`; a key whose versions span a
//! page boundary is reported once, when all of them are read (the partial
//! key travels in the continuation token, so no page is listed twice and
//! every marker sent is one the server gave). The same walk finds keys
//! written more than once (`rewritten`): an anchor overwritten or deleted.

use aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::s3::{sdk, S3Store};
use super::{Listed, Rewritten, VersionsPage};
use crate::error::{Error, Result};

/// Entries per `ListObjectVersions` request (S3's maximum).
const PAGE: i32 = 1000;

/// A key's entries read so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Partial {
    key: String,
    /// The newest version's time and size (a delete marker is no version).
    newest: Option<(DateTime<Utc>, u64)>,
    /// The newest delete marker's time: the key's age when it has no version.
    marker: Option<DateTime<Utc>>,
    #[serde(default)]
    versions: u64,
    #[serde(default)]
    markers: u64,
}

impl Partial {
    fn listed(self, prefix: &str) -> Option<Listed> {
        let key = self.key.strip_prefix(prefix)?.to_string();
        let (modified, size) = match self.newest {
            Some((t, size)) => (Some(t), size),
            None => (self.marker, 0),
        };
        Some(Listed {
            key,
            size,
            modified,
        })
    }

    fn add(&mut self, at: Option<DateTime<Utc>>, size: Option<u64>) {
        match size {
            Some(_) => self.versions += 1,
            None => self.markers += 1,
        }
        match (at, size) {
            (Some(t), Some(size)) if self.newest.is_none_or(|(n, _)| t > n) => {
                self.newest = Some((t, size));
            }
            (Some(t), None) if self.marker.is_none_or(|m| t > m) => self.marker = Some(t),
            _ => {}
        }
    }
}

/// Where the next call goes on: the server's markers, and the key they
/// stopped in the middle of.
#[derive(Debug, Serialize, Deserialize)]
struct Token {
    key_marker: String,
    version_marker: String,
    partial: Partial,
}

/// A version (with its size) or a delete marker (no size): key and time.
type Entry<'p> = (&'p str, Option<DateTime<Utc>>, Option<u64>);

/// A page's versions and delete markers in key order.
fn entries(page: &ListObjectVersionsOutput) -> Vec<Entry<'_>> {
    let mut entries: Vec<Entry<'_>> = page
        .versions()
        .iter()
        .filter_map(|v| {
            let size = u64::try_from(v.size().unwrap_or(0)).unwrap_or(0);
            Some((v.key()?, time(v.last_modified()), Some(size)))
        })
        .chain(
            page.delete_markers()
                .iter()
                .filter_map(|m| Some((m.key()?, time(m.last_modified()), None))),
        )
        .collect();
    entries.sort_by(|a, b| a.0.cmp(b.0)); // stable: keys in order, as listed
    entries
}

fn time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

impl S3Store {
    /// One `ListObjectVersions` request under `full` (a prefix inside the
    /// bucket) from the given markers.
    pub(super) async fn versions_request(
        &self,
        full: &str,
        key_marker: Option<String>,
        version_marker: Option<String>,
    ) -> Result<ListObjectVersionsOutput> {
        self.client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(full)
            .max_keys(PAGE)
            .set_key_marker(key_marker)
            .set_version_id_marker(version_marker)
            .send()
            .await
            .map_err(|e| sdk("list versions", full, e))
    }

    pub(super) async fn list_versions_page(
        &self,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<VersionsPage> {
        let (keys, next) = self.key_page(&self.key(prefix), token).await?;
        let keys = keys
            .into_iter()
            .filter_map(|k| k.listed(&self.prefix))
            .collect();
        Ok(VersionsPage { keys, next })
    }

    /// Keys under `prefix` with more than one version or a delete marker,
    /// in key order.
    pub(super) async fn rewritten_keys(&self, prefix: &str) -> Result<Vec<Rewritten>> {
        let full = self.key(prefix);
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (keys, next) = self.key_page(&full, token.as_deref()).await?;
            found.extend(
                keys.into_iter()
                    .filter(|k| k.versions > 1 || k.markers > 0)
                    .map(|k| Rewritten {
                        key: k
                            .key
                            .strip_prefix(&self.prefix)
                            .unwrap_or(&k.key)
                            .to_string(),
                        versions: k.versions,
                        delete_markers: k.markers,
                    }),
            );
            match next {
                Some(n) => token = Some(n),
                None => return Ok(found),
            }
        }
    }

    /// The keys wholly read by one page from `token`, and the next page's token.
    async fn key_page(
        &self,
        full: &str,
        token: Option<&str>,
    ) -> Result<(Vec<Partial>, Option<String>)> {
        let token: Option<Token> = token
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| Error::json("an object listing's continuation token", e))?;
        let (markers, mut current) = match token {
            Some(t) => (Some((t.key_marker, t.version_marker)), Some(t.partial)),
            None => (None, None),
        };
        let (key_marker, version_marker) = markers.unzip();
        let page = self
            .versions_request(full, key_marker, version_marker)
            .await?;
        let mut keys = Vec::new();
        for (key, at, size) in entries(&page) {
            if current.as_ref().is_some_and(|c| c.key != key) {
                keys.extend(current.take());
            }
            current
                .get_or_insert_with(|| Partial {
                    key: key.to_string(),
                    ..Default::default()
                })
                .add(at, size);
        }
        let next = match (
            page.is_truncated() == Some(true),
            page.next_key_marker(),
            page.next_version_id_marker(),
        ) {
            (false, _, _) => {
                keys.extend(current.take());
                None
            }
            (true, Some(k), Some(v)) => {
                // Keys before the marker are whole; the marker's key may go on.
                if current.as_ref().is_some_and(|c| c.key.as_str() != k) {
                    keys.extend(current.take());
                }
                let token = Token {
                    key_marker: k.to_string(),
                    version_marker: v.to_string(),
                    partial: current.unwrap_or(Partial {
                        key: k.to_string(),
                        ..Default::default()
                    }),
                };
                Some(serde_json::to_string(&token).map_err(|e| Error::json("a listing token", e))?)
            }
            (true, _, _) => {
                return Err(super::error(
                    "list versions",
                    full,
                    "a truncated page without NextKeyMarker and NextVersionIdMarker",
                ))
            }
        };
        Ok((keys, next))
    }
}

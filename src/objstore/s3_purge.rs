//! Deleting objects for good on S3: every version and delete marker of each
//! key (a versioned bucket keeps the data in old versions otherwise), in
//! `DeleteObjects` requests of up to 1,000 identifiers. A version that the
//! bucket's Object Lock protects is reported with its retain-until date, not
//! retried.
//!
//! Finding the versions costs few requests when the keys are close together
//! (a prefix purge lists them in key order) and never many more than one
//! listing per key when they are scattered. A call's keys are sorted and
//! walked by one listing (`ListObjectVersions`, pages of 1,000 entries):
//! - a *seek* lists one key (prefix = the key: exact on every server, and it
//!   also takes in the call's keys that extend it, `a/1` → `a/10`);
//! - a *range* page goes on from where the last page stopped (the server's
//!   `NextKeyMarker` + `NextVersionIdMarker`, or after a key whose every entry
//!   was just listed and is still there — a marker that names an existing key
//!   is read the same by S3, which starts after the key, and by servers that
//!   start at its newest entry, whose entries are skipped here), under the
//!   common prefix of the keys left, keeping only entries of the call's keys.
//!
//! A range page that covers fewer than two of the call's keys and is mostly
//! other keys' entries means the keys are sparse here: the walk seeks the
//! next keys one by one, and tries a range again after 1, 2, 4, … seeks (back
//! to ranges at once when one pays), so a scattered call costs at most its
//! keys plus a logarithm of them in listings. Versions are deleted while the
//! walk goes on, in full requests, except the entries of the key a range
//! would go on from (the next page starts from it). With [`Tail::Defer`] a
//! last, part-full request is not sent: its keys come back as `unfinished`
//! for a later call, so a long purge sends ⌈versions / 1,000⌉ requests, not
//! one part-full request per call.

use std::collections::BTreeSet;

use aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::s3::{sdk, S3Store};
use super::{error, Locked, Purged, Tail};
use crate::error::Result;

/// S3's limit of keys per `DeleteObjects` request.
const PER_REQUEST: usize = 1000;

/// A call's keys: full keys (with the store's prefix) sorted and without
/// repeats, each with the key as the caller gave it.
struct Round {
    full: Vec<String>,
    given: Vec<String>,
}

impl Round {
    fn new(store: &S3Store, keys: &[String]) -> Round {
        let mut pairs: Vec<(String, &String)> = keys
            .iter()
            .map(|k| (store.key(k), k))
            .filter(|(full, _)| !full.is_empty())
            .collect();
        pairs.sort();
        pairs.dedup_by(|a, b| a.0 == b.0);
        let (full, given) = pairs.into_iter().map(|(f, g)| (f, g.clone())).unzip();
        Round { full, given }
    }
}

/// A version or delete marker of one of the round's keys (its index).
struct Found {
    key: usize,
    version: Option<String>,
    size: u64,
}

/// Where a range page goes on from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cursor {
    /// After this version of this key (a truncated page's next markers).
    Version(String, String),
    /// After this key: it exists, and every entry of it has been listed.
    Key(String),
}

/// The walk over a round's keys (see the module's comment).
struct Walk<'a> {
    round: &'a Round,
    /// The first key not yet wholly listed.
    next: usize,
    cursor: Option<Cursor>,
    /// Seeks to make before the next range attempt, and the current backoff.
    seeks_left: u32,
    backoff: u32,
}

impl<'a> Walk<'a> {
    fn new(round: &'a Round) -> Self {
        Walk {
            round,
            next: 0,
            cursor: None,
            seeks_left: 0,
            backoff: 0,
        }
    }

    /// The next page's entries of the round's keys, or `None` once every key is listed.
    async fn step(&mut self, s3: &S3Store) -> Result<Option<Vec<Found>>> {
        let Some(first) = self.round.full.get(self.next) else {
            return Ok(None);
        };
        let last = self.round.full.last().unwrap_or(first);
        let range = self.ranges();
        let (prefix, from) = match (&self.cursor, range) {
            (Some(c), true) => (common_prefix(first, last), Some(c)),
            _ => (first.as_str(), None),
        };
        let page = s3.versions_page(prefix, from).await?;
        let entries = entries(&page);
        let mut found = Vec::new();
        for (key, version, size) in &entries {
            // Before `first`: listed already (a server that starts at a marker key's newest entry).
            if key.as_str() < first.as_str() {
                continue;
            }
            if let Ok(i) = self.round.full[self.next..].binary_search(key) {
                found.push(Found {
                    key: self.next + i,
                    version: version.clone(),
                    size: *size,
                });
            }
        }
        let before = self.next;
        if page.is_truncated() == Some(true) {
            let (Some(k), Some(v)) = (page.next_key_marker(), page.next_version_id_marker()) else {
                return Err(error(
                    "list versions",
                    prefix,
                    "a truncated page without NextKeyMarker and NextVersionIdMarker",
                ));
            };
            self.advance_while(|key| key < k);
            self.cursor = Some(Cursor::Version(k.to_string(), v.to_string()));
        } else if range {
            self.next = self.round.full.len();
        } else {
            let prefix = prefix.to_string();
            self.advance_while(|key| key.starts_with(&prefix));
            self.cursor = entries.last().map(|e| Cursor::Key(e.0.clone()));
        }
        self.learn(range, self.next - before, found.len(), entries.len());
        Ok(Some(found))
    }

    fn advance_while(&mut self, covered: impl Fn(&str) -> bool) {
        while self.round.full.get(self.next).is_some_and(|k| covered(k)) {
            self.next += 1;
        }
    }

    /// Whether the next page is a range page (else a seek of the next key).
    fn ranges(&self) -> bool {
        match &self.cursor {
            None => false,
            // In the middle of a key's versions: only going on lists the rest.
            Some(Cursor::Version(k, _)) if Some(k) == self.round.full.get(self.next) => true,
            Some(_) => self.seeks_left == 0,
        }
    }

    /// After a page: a range page that covered under two keys and was mostly
    /// other keys' entries doubles the seeks before the next range attempt;
    /// one that paid resets them.
    fn learn(&mut self, range: bool, covered: usize, found: usize, listed: usize) {
        if !range {
            self.seeks_left = self.seeks_left.saturating_sub(1);
        } else if covered >= 2 || found * 2 >= listed {
            self.backoff = 0;
        } else {
            self.backoff = (self.backoff * 2).max(1);
            self.seeks_left = self.backoff;
        }
    }

    /// Whether a listed entry must stay until the next range page is listed:
    /// the one it starts after (a server may look it up), or every entry of
    /// the key it starts after (one of them must be there).
    fn holds(&self, f: &Found) -> bool {
        let key = self.round.full[f.key].as_str();
        match &self.cursor {
            Some(Cursor::Version(k, v)) => key == k && f.version.as_deref().unwrap_or("null") == v,
            Some(Cursor::Key(k)) => key == k,
            None => false,
        }
    }
}

/// A page's versions and delete markers in key order: (key, version, size);
/// `None` as version where the bucket has no versioning.
fn entries(page: &ListObjectVersionsOutput) -> Vec<(String, Option<String>, u64)> {
    let version = |v: Option<&str>| v.filter(|v| *v != "null").map(str::to_string);
    let mut out: Vec<(String, Option<String>, u64)> = page
        .versions()
        .iter()
        .filter_map(|v| {
            let size = u64::try_from(v.size().unwrap_or(0)).unwrap_or(0);
            Some((v.key()?.to_string(), version(v.version_id()), size))
        })
        .chain(
            page.delete_markers()
                .iter()
                .filter_map(|m| Some((m.key()?.to_string(), version(m.version_id()), 0))),
        )
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0)); // stable: each key's entries keep their order
    out
}

/// The longest common prefix of two keys, on a character boundary.
fn common_prefix<'k>(a: &'k str, b: &str) -> &'k str {
    let end = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or_else(|| a.len().min(b.len()), |((i, _), _)| i);
    &a[..end]
}

impl S3Store {
    pub(super) async fn purge_keys(&self, keys: &[String], tail: Tail) -> Result<Purged> {
        let round = Round::new(self, keys);
        let mut walk = Walk::new(&round);
        let mut out = Purged::default();
        let mut pending: Vec<Found> = Vec::new();
        while let Some(found) = walk.step(self).await? {
            pending.extend(found);
            let (held, free): (Vec<Found>, Vec<Found>) =
                pending.drain(..).partition(|f| walk.holds(f));
            let full = free.len() - free.len() % PER_REQUEST;
            for batch in free[..full].chunks(PER_REQUEST) {
                self.delete_batch(&round, batch, &mut out).await?;
            }
            pending = free.into_iter().skip(full).chain(held).collect();
        }
        match tail {
            Tail::Send => {
                for batch in pending.chunks(PER_REQUEST) {
                    self.delete_batch(&round, batch, &mut out).await?;
                }
            }
            Tail::Defer => {
                out.unfinished = pending.iter().map(|f| round.given[f.key].clone()).collect();
            }
        }
        out.objects = out
            .by_key
            .keys()
            .filter(|k| !out.unfinished.contains(*k))
            .count() as u64;
        Ok(out)
    }

    /// One page of versions under `prefix`, from `from` or from the start.
    async fn versions_page(
        &self,
        prefix: &str,
        from: Option<&Cursor>,
    ) -> Result<ListObjectVersionsOutput> {
        let (key_marker, version_marker) = match from {
            Some(Cursor::Version(k, v)) => (Some(k.clone()), Some(v.clone())),
            Some(Cursor::Key(k)) => (Some(k.clone()), None),
            None => (None, None),
        };
        self.versions_request(prefix, key_marker, version_marker)
            .await
    }

    async fn delete_batch(&self, round: &Round, batch: &[Found], out: &mut Purged) -> Result<()> {
        let ids = batch
            .iter()
            .map(|f| {
                let full = &round.full[f.key];
                ObjectIdentifier::builder()
                    .key(full)
                    .set_version_id(f.version.clone())
                    .build()
                    .map_err(|e| error("delete", full, e))
            })
            .collect::<Result<Vec<_>>>()?;
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| error("delete", &self.bucket, e))?;
        let resp = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| sdk("delete objects", &self.bucket, e))?;
        let mut failed = Vec::new();
        let mut kept = BTreeSet::new();
        for e in resp.errors() {
            let (key, version) = (e.key().unwrap_or_default(), e.version_id());
            // Some stores name only the key of a version they refused.
            kept.insert((key, version.filter(|v| *v != "null")));
            if e.code() == Some("AccessDenied") {
                // Object Lock (retention or legal hold) keeps this version.
                let until = self.retained_until(key, version).await;
                let given = round.full.binary_search_by(|k| k.as_str().cmp(key));
                out.locked.push(Locked {
                    key: given.map_or_else(|_| key.to_string(), |i| round.given[i].clone()),
                    until,
                });
            } else {
                failed.push(format!("{key}: {}", e.code().unwrap_or("error")));
            }
        }
        if !failed.is_empty() {
            return Err(error(
                "delete objects",
                &self.bucket,
                format!(
                    "{} object version(s) not deleted: {}",
                    failed.len(),
                    failed.join("; ")
                ),
            ));
        }
        for f in batch {
            let full = round.full[f.key].as_str();
            let refused =
                kept.contains(&(full, None)) || kept.contains(&(full, f.version.as_deref()));
            if !refused {
                out.versions += 1;
                out.bytes += f.size;
                let k = out.by_key.entry(round.given[f.key].clone()).or_default();
                k.0 += 1;
                k.1 += f.size;
            }
        }
        Ok(())
    }

    /// A locked version's retain-until date, when the bucket says.
    async fn retained_until(&self, key: &str, version: Option<&str>) -> Option<String> {
        let r = self
            .client
            .get_object_retention()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .ok()?;
        r.retention()?.retain_until_date().map(|d| d.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefixes_end_on_character_boundaries() {
        assert_eq!(
            common_prefix("frames/1/a.jpg", "frames/1/b.jpg"),
            "frames/1/"
        );
        assert_eq!(common_prefix("a/1", "a/10"), "a/1");
        assert_eq!(common_prefix("a/10", "a/1"), "a/1");
        assert_eq!(common_prefix("x", "y"), "");
        // é and è share their first UTF-8 byte: the prefix stops before both.
        assert_eq!(common_prefix("café", "cafè"), "caf");
        assert_eq!(common_prefix("same", "same"), "same");
    }
}

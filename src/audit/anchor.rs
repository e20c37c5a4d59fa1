//! Anchors: the chain's head (sequence number, hash, time) signed and written
//! to a store that Lethe's database owner cannot rewrite (S3 Object Lock in
//! COMPLIANCE mode; a folder is weaker). A history rewritten later no longer
//! matches what was anchored, whatever the rewriter recomputed.
//!
//! Object: `{seq:020}.json` (lists in sequence order) holding
//! `{"lethe_anchor":1,"seq":N,"hash":H,"time":T,"hmac":HEX}` where
//! `hmac = HMAC-SHA256(key, "lethe-anchor-v1\n" ‖ N ‖ "\n" ‖ H ‖ "\n" ‖ T)`.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::Mac;
use serde::{Deserialize, Serialize};

use super::{finish_hex, signer, AT_FORMAT};
use crate::config::Secret;
use crate::error::{Error, Result};
use crate::objstore::ObjectStore;
use crate::store::Store;

/// The anchor object's format version.
pub const FORMAT: i64 = 1;
const PAGE: usize = 1000;

/// One anchor object as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    pub lethe_anchor: i64,
    pub seq: i64,
    pub hash: String,
    /// When it was written: RFC 3339 UTC, six fractional digits.
    pub time: String,
    pub hmac: String,
}

/// The object key of the anchor for `seq`: zero-padded so keys list in order.
pub fn object_key(seq: i64) -> String {
    format!("{seq:020}.json")
}

/// What the anchor's HMAC covers.
pub fn message(seq: i64, hash: &str, time: &str) -> String {
    format!("lethe-anchor-v1\n{seq}\n{hash}\n{time}")
}

fn sign(key: &Secret, seq: i64, hash: &str, time: &str) -> String {
    let mut mac = signer(key.expose().as_bytes());
    mac.update(message(seq, hash, time).as_bytes());
    finish_hex(mac)
}

impl Anchor {
    pub fn new(key: &Secret, seq: i64, hash: &str, time: DateTime<Utc>) -> Anchor {
        let time = time.format(AT_FORMAT).to_string();
        Anchor {
            lethe_anchor: FORMAT,
            seq,
            hash: hash.to_string(),
            hmac: sign(key, seq, hash, &time),
            time,
        }
    }

    /// Parses an anchor object stored under `object`, checking its shape and
    /// that its name matches its sequence number.
    pub fn parse(object: &str, bytes: &[u8]) -> std::result::Result<Anchor, String> {
        let a: Anchor = serde_json::from_slice(bytes).map_err(|e| {
            format!("anchor object {object} is not a Lethe anchor ({e}); anchors are never rewritten, so it was altered or is not Lethe's")
        })?;
        let well_formed = a.lethe_anchor == FORMAT
            && a.seq >= 1
            && a.hash.len() == 64
            && a.hash.bytes().all(|b| b.is_ascii_hexdigit())
            && chrono::NaiveDateTime::parse_from_str(&a.time, AT_FORMAT).is_ok();
        if !well_formed {
            return Err(format!("anchor object {object} is not a format-{FORMAT} Lethe anchor (seq ≥ 1, 64 hex digits of hash, time like 2026-01-02T03:04:05.000000Z)"));
        }
        if object != object_key(a.seq) {
            return Err(format!(
                "anchor object {object} holds seq {} (its name should be {})",
                a.seq,
                object_key(a.seq)
            ));
        }
        Ok(a)
    }

    pub fn signature_valid(&self, key: &Secret) -> bool {
        let want = sign(key, self.seq, &self.hash, &self.time);
        // Both are hex of the same length; the MAC is not secret once written.
        want.eq_ignore_ascii_case(&self.hmac)
    }

    pub fn at(&self) -> DateTime<Utc> {
        chrono::NaiveDateTime::parse_from_str(&self.time, AT_FORMAT)
            .map(|t| t.and_utc())
            .unwrap_or_default()
    }
}

/// The audit signing key anchors are signed with; an error saying where to
/// put it when absent.
pub fn signing_key(config: &crate::config::Config) -> Result<Secret> {
    let src = &config.audit.signing_key;
    src.load().map_err(Error::Usage)?.ok_or_else(|| {
        Error::Usage(format!(
            "anchors are signed with the audit signing key: set it in {}",
            src.describe()
        ))
    })
}

/// The configured anchor store (`[audit] anchor_store`).
pub async fn open_store(config: &crate::config::Config) -> Result<std::sync::Arc<dyn ObjectStore>> {
    let cfg = config.audit.anchor_store.as_ref().ok_or_else(|| {
        Error::Usage(format!(
            "no anchor store in {}: add anchor_store = \"s3://BUCKET/anchors\" (a bucket created with Object Lock) or \"file://anchors\" under [audit]",
            config.path.display()
        ))
    })?;
    crate::objstore::open(cfg).await
}

/// What `write_head` did.
#[derive(Debug, Serialize)]
pub struct Anchored {
    pub seq: i64,
    pub hash: String,
    pub time: String,
    pub object: String,
    pub store: String,
    /// Already anchored with this hash (a retry after a crash): not written again.
    pub existed: bool,
}

/// Writes the chain's current head as an anchor, kept `retention` long.
/// `None` when the chain is empty. An anchor already stored for the head's
/// sequence number must hold the same hash: otherwise the chain was rewritten
/// since it was anchored, and this fails loudly.
pub async fn write_head(
    store: &dyn Store,
    anchors: &dyn ObjectStore,
    key: &Secret,
    retention: Duration,
    now: DateTime<Utc>,
) -> Result<Option<Anchored>> {
    let Some(head) = store.audit_head().await? else {
        return Ok(None);
    };
    let object = object_key(head.seq);
    let anchor = Anchor::new(key, head.seq, &head.hash, now);
    let mut existed = false;
    if anchors.head(&object).await?.is_some() {
        let bytes = anchors.get_bytes(&object).await?;
        let stored = Anchor::parse(&object, &bytes).map_err(Error::Audit)?;
        if stored.hash != head.hash {
            return Err(Error::Audit(format!(
                "anchor {object} in {} holds another hash for seq {} than the chain now has: the chain was rewritten after {}; run `lethe audit verify --live`",
                anchors.describe(), head.seq, stored.time
            )));
        }
        existed = true;
    } else {
        let body = serde_json::to_vec(&anchor).map_err(|e| Error::Audit(e.to_string()))?;
        let until = now + chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        anchors
            .put_retained(&object, Bytes::from(body), until)
            .await?;
    }
    Ok(Some(Anchored {
        seq: head.seq,
        hash: head.hash,
        time: anchor.time,
        object,
        store: anchors.describe(),
        existed,
    }))
}

/// The anchors of a store in sequence order, page by page (memory stays
/// flat). An object that is not a well-formed anchor comes back as `Err`.
pub struct AnchorCursor<'a> {
    store: &'a dyn ObjectStore,
    page: std::vec::IntoIter<crate::objstore::Listed>,
    after: Option<String>,
    exhausted: bool,
}

/// An anchor, or why the object under that name is not one.
pub type Found = std::result::Result<Anchor, (String, String)>;

impl<'a> AnchorCursor<'a> {
    pub fn new(store: &'a dyn ObjectStore) -> Self {
        AnchorCursor {
            store,
            page: Vec::new().into_iter(),
            after: None,
            exhausted: false,
        }
    }

    /// The next object's listing entry, fetching pages as needed.
    pub async fn next_listed(&mut self) -> Result<Option<crate::objstore::Listed>> {
        loop {
            if let Some(l) = self.page.next() {
                self.after = Some(l.key.clone());
                // A folder store's unfinished write, never an anchor.
                if !l.key.ends_with(".json") {
                    continue;
                }
                return Ok(Some(l));
            }
            if self.exhausted {
                return Ok(None);
            }
            let page = self
                .store
                .list_page("", self.after.as_deref(), PAGE)
                .await?;
            self.exhausted = page.len() < PAGE;
            self.page = page.into_iter();
        }
    }

    pub async fn next(&mut self) -> Result<Option<Found>> {
        let Some(l) = self.next_listed().await? else {
            return Ok(None);
        };
        let bytes = self.store.get_bytes(&l.key).await?;
        Ok(Some(Anchor::parse(&l.key, &bytes).map_err(|p| (l.key, p))))
    }
}

/// Anchoring's rhythm, from the store's listing (no object is read): how
/// many anchors, when the newest was written, and the longest gap between two.
#[derive(Debug, Default)]
pub struct Rhythm {
    pub anchors: u64,
    pub newest: Option<(String, DateTime<Utc>)>,
    /// (earlier object, later object, gap).
    pub longest_gap: Option<(String, String, chrono::Duration)>,
}

pub async fn rhythm(store: &dyn ObjectStore) -> Result<Rhythm> {
    let mut r = Rhythm::default();
    let mut cursor = AnchorCursor::new(store);
    while let Some(l) = cursor.next_listed().await? {
        r.anchors += 1;
        let Some(at) = l.modified else { continue };
        if let Some((prev, prev_at)) = &r.newest {
            let gap = at - *prev_at;
            if r.longest_gap.as_ref().is_none_or(|(_, _, g)| gap > *g) {
                r.longest_gap = Some((prev.clone(), l.key.clone(), gap));
            }
        }
        r.newest = Some((l.key, at));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's anchor test vector (computed independently in Python).
    #[test]
    fn anchor_vector() {
        let key = Secret::new("k".repeat(32));
        let time = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678901Z")
            .unwrap()
            .with_timezone(&Utc);
        let a = Anchor::new(&key, 42, &"ab".repeat(32), time);
        assert_eq!(a.time, "2026-01-02T03:04:05.678901Z");
        assert_eq!(a.hmac, ANCHOR_VECTOR_HMAC);
        assert!(a.signature_valid(&key));
        assert!(!a.signature_valid(&Secret::new("x".repeat(32))));
        let text = serde_json::to_vec(&a).unwrap();
        assert_eq!(Anchor::parse(&object_key(42), &text), Ok(a.clone()));
        assert!(Anchor::parse(&object_key(43), &text)
            .unwrap_err()
            .contains("holds seq 42"));
        assert!(Anchor::parse("x.json", b"{\"seq\":1}")
            .unwrap_err()
            .contains("not a Lethe anchor"));
    }

    const ANCHOR_VECTOR_HMAC: &str =
        "85e1c1e4eb2dfbd464b40bc9ef7d80408bd7e9feca78dbe7fc81bf8f89c6105c";
}

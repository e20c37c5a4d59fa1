//! Anchors: the chain's head (sequence number, hash, time) signed and written
//! to a store that Lethe's database owner cannot rewrite (S3 Object Lock in
//! COMPLIANCE mode; a folder is weaker). A history rewritten later no longer
//! matches what was anchored, whatever the rewriter recomputed.
//!
//! Object: `{seq:020}.json` (lists in sequence order) holding format 2,
//! `{"lethe_anchor":2,"seq":N,"hash":H,"time":T,"tree_size":N,"root":R,"hmac":HEX}`
//! where R is the RFC 9162 Merkle root over the hashes of events 1..=N
//! (`super::tree`) and `hmac = HMAC-SHA256(key, "lethe-anchor-v2\n" ‖ N ‖
//! "\n" ‖ H ‖ "\n" ‖ T ‖ "\n" ‖ N ‖ "\n" ‖ R)`. Format 1 (written before
//! trees: no `tree_size`, `root`; message `lethe-anchor-v1\n N\n H\n T`)
//! stays readable.

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

/// The anchor object's format version written now; format 1 is still read.
pub const FORMAT: i64 = 2;
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
    /// Format 2: the Merkle tree's size (= seq) and root over events 1..=seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    pub hmac: String,
}

/// The object key of the anchor for `seq`: zero-padded so keys list in order.
pub fn object_key(seq: i64) -> String {
    format!("{seq:020}.json")
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Anchor {
    /// A format-2 anchor of the head (`seq`, `hash`) whose tree root over
    /// events 1..=seq is `root`.
    pub fn new(key: &Secret, seq: i64, hash: &str, root: &str, time: DateTime<Utc>) -> Anchor {
        let mut a = Anchor {
            lethe_anchor: FORMAT,
            seq,
            hash: hash.to_string(),
            time: time.format(AT_FORMAT).to_string(),
            tree_size: Some(seq),
            root: Some(root.to_string()),
            hmac: String::new(),
        };
        a.hmac = a.sign(key);
        a
    }

    /// What the anchor's HMAC covers, by its format.
    pub fn message(&self) -> String {
        let (seq, hash, time) = (self.seq, &self.hash, &self.time);
        match (&self.tree_size, &self.root) {
            (Some(size), Some(root)) => {
                format!("lethe-anchor-v2\n{seq}\n{hash}\n{time}\n{size}\n{root}")
            }
            _ => format!("lethe-anchor-v1\n{seq}\n{hash}\n{time}"),
        }
    }

    /// The HMAC this anchor's fields get under `key`.
    pub fn sign(&self, key: &Secret) -> String {
        let mut mac = signer(key.expose().as_bytes());
        mac.update(self.message().as_bytes());
        finish_hex(mac)
    }

    /// Parses an anchor object stored under `object`, checking its shape and
    /// that its name matches its sequence number.
    pub fn parse(object: &str, bytes: &[u8]) -> std::result::Result<Anchor, String> {
        let a: Anchor = serde_json::from_slice(bytes).map_err(|e| {
            format!("anchor object {object} is not a Lethe anchor ({e}); anchors are never rewritten, so it was altered or is not Lethe's")
        })?;
        let tree_ok = match (a.lethe_anchor, a.tree_size, &a.root) {
            (1, None, None) => true,
            (2, Some(size), Some(root)) => size == a.seq && is_hex64(root),
            _ => false,
        };
        let well_formed = tree_ok
            && a.seq >= 1
            && is_hex64(&a.hash)
            && chrono::NaiveDateTime::parse_from_str(&a.time, AT_FORMAT).is_ok();
        if !well_formed {
            return Err(format!("anchor object {object} is not a well-formed Lethe anchor (format 1, or format 2 with tree_size = seq and a 64-hex-digit root; seq ≥ 1, 64 hex digits of hash, time like 2026-01-02T03:04:05.000000Z)"));
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
        let want = self.sign(key);
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

/// The configured anchor store (`[audit] anchor_url`).
pub async fn open_store(config: &crate::config::Config) -> Result<std::sync::Arc<dyn ObjectStore>> {
    let cfg = config.audit.anchor_url.as_ref().ok_or_else(|| {
        Error::Usage(format!(
            "no anchor store in {}: add anchor_url = \"s3://BUCKET/anchors\" (a bucket created with Object Lock) or \"file://anchors\" under [audit]",
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
    /// The Merkle root over events 1..=seq (absent when an older format-1
    /// anchor of this seq already existed).
    pub root: Option<String>,
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
    let root = super::tree::root_at(store, head.seq).await?;
    let mut anchor = Anchor::new(key, head.seq, &head.hash, &hex::encode(root), now);
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
        anchor.root = stored.root;
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
        root: anchor.root,
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
        let mut a = Anchor::new(&key, 42, &"ab".repeat(32), &"cd".repeat(32), time);
        assert_eq!(a.time, "2026-01-02T03:04:05.678901Z");
        assert_eq!(a.hmac, ANCHOR_V2_VECTOR_HMAC);
        let v1 = Anchor {
            lethe_anchor: 1,
            tree_size: None,
            root: None,
            hmac: ANCHOR_VECTOR_HMAC.into(),
            ..a.clone()
        };
        assert!(v1.signature_valid(&key), "format 1 stays verifiable");
        let text = serde_json::to_vec(&v1).unwrap();
        assert!(!String::from_utf8_lossy(&text).contains("root"));
        assert_eq!(Anchor::parse(&object_key(42), &text), Ok(v1));
        a.tree_size = Some(41);
        let text = serde_json::to_vec(&a).unwrap();
        assert!(
            Anchor::parse(&object_key(42), &text).is_err(),
            "tree_size must be seq"
        );
        a.tree_size = Some(42);
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

    const ANCHOR_V2_VECTOR_HMAC: &str =
        "08b426a4c43ffe2bf68967cdd1f33b70389ef6de2be3d2f7bb05414a99155a13";
    const ANCHOR_VECTOR_HMAC: &str =
        "85e1c1e4eb2dfbd464b40bc9ef7d80408bd7e9feca78dbe7fc81bf8f89c6105c";
}

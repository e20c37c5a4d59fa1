//! `lethe audit prove`: an inclusion proof of one event against an anchored
//! tree root, and a consistency proof between two anchored roots (RFC 9162
//! 2.1.3 and 2.1.4), computed from the store's chain by streaming subtree
//! ranges (`super::tree`). Each proof is checked against the anchors before
//! it is handed out, so a store whose history was rewritten yields an error,
//! never a proof that fails later in an auditor's hands.

use serde::Serialize;
use serde_json::Value;

use super::anchor::{object_key, Anchor, AnchorCursor};
use super::tree::{event_leaf, range_roots};
use crate::config::Secret;
use crate::error::{Error, Result};
use crate::merkle::{consistency_ranges, consistent, inclusion_ranges, root_from_inclusion, Hash};
use crate::objstore::ObjectStore;
use crate::store::Store;

/// The tree and hash a proof is in, as its JSON names them.
pub const ALG: &str = "rfc9162-sha256";

/// An anchor a proof refers to, as stored, and whether its HMAC was checked.
#[derive(Debug, Serialize)]
pub struct ProvedAnchor {
    pub object: String,
    /// `valid` (checked with the key) or `unchecked` (no key configured).
    pub signature: &'static str,
    #[serde(flatten)]
    pub anchor: Anchor,
}

#[derive(Debug, Serialize)]
pub struct InclusionProof {
    pub proof: &'static str,
    pub alg: &'static str,
    pub seq: i64,
    pub leaf_index: i64,
    pub tree_size: i64,
    /// The event's exported line: its `hash` is the leaf's data.
    pub event: Value,
    /// Sibling subtree hashes from the leaf up (RFC 9162 inclusion path).
    pub path: Vec<String>,
    pub root: String,
    pub anchor: ProvedAnchor,
    pub store: String,
}

#[derive(Debug, Serialize)]
pub struct ConsistencyProof {
    pub proof: &'static str,
    pub alg: &'static str,
    pub old_size: i64,
    pub new_size: i64,
    pub old_root: String,
    pub new_root: String,
    /// RFC 9162 consistency path.
    pub path: Vec<String>,
    pub old_anchor: ProvedAnchor,
    pub new_anchor: ProvedAnchor,
    pub store: String,
}

/// The seq of the newest anchor in the store, from its listing.
async fn newest_seq(anchors: &dyn ObjectStore) -> Result<i64> {
    let mut cursor = AnchorCursor::new(anchors);
    let mut last = None;
    while let Some(l) = cursor.next_listed().await? {
        last = Some(l.key);
    }
    let name = last.ok_or_else(|| {
        Error::NotFound(format!(
            "no anchors in {} yet: run `lethe run audit.anchor`, then prove",
            anchors.describe()
        ))
    })?;
    name.trim_end_matches(".json").parse().map_err(|_| {
        Error::Audit(format!(
            "anchor object {name} in {} is not named by a seq: it is not Lethe's",
            anchors.describe()
        ))
    })
}

/// The format-2 anchor of `seq` (the newest when `None`), its HMAC checked
/// when there is a key.
async fn anchor_at(
    anchors: &dyn ObjectStore,
    seq: Option<i64>,
    key: Option<&Secret>,
) -> Result<ProvedAnchor> {
    let (seq, named) = match seq {
        Some(s) => (s, true),
        None => (newest_seq(anchors).await?, false),
    };
    let object = object_key(seq);
    if anchors.head(&object).await?.is_none() {
        let newest = newest_seq(anchors).await.ok();
        return Err(Error::NotFound(format!(
            "no anchor for seq {seq} in {} (anchors are named by the seq they anchor, like {object}; the newest is {}): name an anchored seq, or omit it for the newest",
            anchors.describe(),
            newest.map_or("none".into(), |s| format!("seq {s}"))
        )));
    }
    let bytes = anchors.get_bytes(&object).await?;
    let anchor = Anchor::parse(&object, &bytes).map_err(Error::Audit)?;
    let signature = match key {
        Some(k) if !anchor.signature_valid(k) => return Err(Error::Audit(format!(
            "anchor {object} in {} has an HMAC that does not match: forged, altered, or signed with another key",
            anchors.describe()
        ))),
        Some(_) => "valid",
        None => "unchecked",
    };
    if anchor.root.is_none() {
        let fix = match named {
            true => "name a later anchor, or omit it for the newest",
            false => "it is the newest, so run `lethe run audit.anchor` to write one with a root",
        };
        return Err(Error::Usage(format!(
            "anchor {object} is format 1, written before anchors carried a Merkle root: there is nothing to prove against; {fix}"
        )));
    }
    Ok(ProvedAnchor {
        object,
        signature,
        anchor,
    })
}

fn root_of(a: &ProvedAnchor) -> Result<Hash> {
    let mut root = [0u8; 32];
    hex::decode_to_slice(a.anchor.root.as_deref().unwrap_or_default(), &mut root)
        .map_err(|_| Error::Audit(format!("anchor {}: root is not hex", a.object)))?;
    Ok(root)
}

fn rewritten(a: &ProvedAnchor) -> Error {
    Error::Audit(format!(
        "the store's chain no longer matches anchor {} (seq {}, written {}): history was rewritten at or before seq {}; run `lethe audit verify --live` to find where",
        a.object, a.anchor.seq, a.anchor.time, a.anchor.seq
    ))
}

/// Event `seq` is in the tree anchor `anchor_seq` (default: the newest) roots.
pub async fn inclusion(
    store: &dyn Store,
    anchors: &dyn ObjectStore,
    key: Option<&Secret>,
    seq: i64,
    anchor_seq: Option<i64>,
) -> Result<InclusionProof> {
    if seq < 1 {
        return Err(Error::Usage(format!(
            "seq must be 1 or more (got {seq}): events are numbered from 1"
        )));
    }
    let a = anchor_at(anchors, anchor_seq, key).await?;
    let size = a.anchor.seq;
    if seq > size {
        return Err(Error::NotFound(format!(
            "seq {seq} is beyond anchor {} (a tree of events 1..={size}, written {}): name a later anchor, or run `lethe run audit.anchor` to anchor the head first",
            a.object, a.anchor.time
        )));
    }
    let event = store
        .audit_page(seq - 1, 1)
        .await?
        .into_iter()
        .find(|e| e.seq == seq)
        .ok_or_else(|| rewritten(&a))?;
    let (index, n) = ((seq - 1) as u64, size as u64);
    let path = range_roots(store, &inclusion_ranges(index, n)).await?;
    let leaf = event_leaf(seq, &event.hash)?;
    if root_from_inclusion(index, n, leaf, &path) != Some(root_of(&a)?) {
        return Err(rewritten(&a));
    }
    Ok(InclusionProof {
        proof: "inclusion",
        alg: ALG,
        seq,
        leaf_index: seq - 1,
        tree_size: size,
        event: super::event_line(&event),
        path: path.iter().map(hex::encode).collect(),
        root: hex::encode(root_of(&a)?),
        anchor: a,
        store: anchors.describe(),
    })
}

/// The tree anchor `old` roots is a prefix of the one anchor `new` roots.
pub async fn consistency(
    store: &dyn Store,
    anchors: &dyn ObjectStore,
    key: Option<&Secret>,
    old: i64,
    new: i64,
) -> Result<ConsistencyProof> {
    if old > new {
        return Err(Error::Usage(format!(
            "--consistency OLD NEW needs OLD ≤ NEW (got {old} and {new})"
        )));
    }
    let (o, n) = (
        anchor_at(anchors, Some(old), key).await?,
        anchor_at(anchors, Some(new), key).await?,
    );
    let (m, size) = (o.anchor.seq as u64, n.anchor.seq as u64);
    let path = range_roots(store, &consistency_ranges(m, size)).await?;
    let (old_root, new_root) = (root_of(&o)?, root_of(&n)?);
    if !consistent(m, size, &old_root, &new_root, &path) {
        return Err(rewritten(&n));
    }
    Ok(ConsistencyProof {
        proof: "consistency",
        alg: ALG,
        old_size: old,
        new_size: new,
        old_root: hex::encode(old_root),
        new_root: hex::encode(new_root),
        path: path.iter().map(hex::encode).collect(),
        old_anchor: o,
        new_anchor: n,
        store: anchors.describe(),
    })
}

//! The Merkle tree over the audit chain (RFC 9162, `crate::merkle`): leaf i
//! (0-based) is the 32 raw bytes of event seq i+1's chain hash, which
//! already commits to the event and everything before it. Roots and proofs
//! stream the store's events range by range, so memory is O(log n).

use std::ops::Range;

use crate::error::{Error, Result};
use crate::merkle::{leaf_hash, Frontier, Hash};
use crate::store::Store;

const PAGE: u32 = 1000;

/// The leaf hash of an event: `SHA-256(0x00 ‖ its chain hash as 32 bytes)`.
pub fn event_leaf(seq: i64, hash_hex: &str) -> Result<Hash> {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(hash_hex, &mut raw).map_err(|_| {
        Error::Audit(format!(
            "event seq {seq} in the store has a hash that is not 64 hex digits: the store was altered"
        ))
    })?;
    Ok(leaf_hash(&raw))
}

/// The root of the subtree over leaves `range` (events `range.start + 1
/// ..= range.end`), read from the store page by page.
pub async fn range_root(store: &dyn Store, range: Range<u64>) -> Result<Hash> {
    let mut tree = Frontier::new();
    let end = i64::try_from(range.end).unwrap_or(i64::MAX);
    let mut after = i64::try_from(range.start).unwrap_or(i64::MAX);
    while after < end {
        let want = u32::try_from(end - after).unwrap_or(PAGE).min(PAGE);
        let page = store.audit_page(after, want).await?;
        let Some(first) = page.first() else {
            return Err(Error::Audit(format!(
                "the store's chain ends at seq {after}, before seq {end}: events were removed"
            )));
        };
        if first.seq != after + 1 {
            return Err(Error::Audit(format!(
                "the store's chain jumps from seq {after} to {}: events were removed",
                first.seq
            )));
        }
        for e in &page {
            // Seqs are the primary key, so a page after `after` is contiguous
            // exactly when its last seq is `after` + its length.
            tree.push(event_leaf(e.seq, &e.hash)?);
        }
        let last = page.last().map_or(after, |e| e.seq);
        if last != after + page.len() as i64 {
            return Err(Error::Audit(format!(
                "the store's chain has a gap between seq {after} and {last}: events were removed"
            )));
        }
        after = last;
    }
    Ok(tree.root())
}

/// The root of the tree over events 1..=`size`.
pub async fn root_at(store: &dyn Store, size: i64) -> Result<Hash> {
    range_root(store, 0..u64::try_from(size).unwrap_or(0)).await
}

/// The subtree roots of `ranges`, in order (a proof's hashes).
pub async fn range_roots(store: &dyn Store, ranges: &[Range<u64>]) -> Result<Vec<Hash>> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        out.push(range_root(store, r.clone()).await?);
    }
    Ok(out)
}

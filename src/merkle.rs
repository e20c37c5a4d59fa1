//! Merkle trees as RFC 9162 (Certificate Transparency v2) defines them, over
//! any sequence of leaves: `leaf = SHA-256(0x00 ‖ data)`, `node =
//! SHA-256(0x01 ‖ left ‖ right)`, a tree of n > 1 leaves split at the largest
//! power of two below n. Pure functions: the audit module feeds them the
//! chain's event hashes.
//!
//! Memory stays O(log n): a root is computed by a `Frontier` fed one leaf at a
//! time, and a proof is described as the leaf ranges whose subtree hashes it
//! lists (`inclusion_ranges`, `consistency_ranges`), each computed by
//! streaming its range.

use std::ops::Range;

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n` (n ≥ 2): where RFC 9162 splits.
pub fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// A root computed leaf by leaf: the perfect subtrees so far, largest first
/// (at most one per bit of the size, so O(log n) hashes).
#[derive(Debug, Default, Clone)]
pub struct Frontier {
    stack: Vec<(u64, Hash)>,
    size: u64,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf given by its leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.size += 1;
        let mut top = (1u64, leaf);
        while let Some(&(n, left)) = self.stack.last() {
            if n != top.0 {
                break;
            }
            self.stack.pop();
            top = (n * 2, node_hash(&left, &top.1));
        }
        self.stack.push(top);
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree's root: the perfect subtrees joined right to left, which is
    /// RFC 9162's shape (each split is at the largest power of two).
    pub fn root(&self) -> Hash {
        let mut parts = self.stack.iter().rev();
        let Some(&(_, mut acc)) = parts.next() else {
            return empty_root();
        };
        for (_, left) in parts {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// The leaf ranges whose subtree hashes form the inclusion proof of leaf
/// `index` in a tree of `size` leaves, in proof order (RFC 9162 2.1.3.1).
pub fn inclusion_ranges(index: u64, size: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    path(index, 0..size, &mut out);
    out
}

fn path(m: u64, d: Range<u64>, out: &mut Vec<Range<u64>>) {
    let n = d.end - d.start;
    if n <= 1 {
        return;
    }
    let k = d.start + split(n);
    if m < k {
        path(m, d.start..k, out);
        out.push(k..d.end);
    } else {
        path(m, k..d.end, out);
        out.push(d.start..k);
    }
}

/// The leaf ranges whose subtree hashes form the consistency proof from a
/// tree of `old` leaves to one of `new` (RFC 9162 2.1.4.1); empty when equal.
pub fn consistency_ranges(old: u64, new: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    if 0 < old && old < new {
        subproof(old, 0..new, true, &mut out);
    }
    out
}

fn subproof(m: u64, d: Range<u64>, whole: bool, out: &mut Vec<Range<u64>>) {
    let n = d.end - d.start;
    if m == n {
        if !whole {
            out.push(d);
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, d.start..d.start + k, whole, out);
        out.push(d.start + k..d.end);
    } else {
        subproof(m - k, d.start + k..d.end, false, out);
        out.push(d.start..d.start + k);
    }
}

/// The root an inclusion proof leads to (RFC 9162 2.1.3.2), or `None` when
/// the proof has the wrong length for `index` and `size`.
pub fn root_from_inclusion(index: u64, size: u64, leaf: Hash, proof: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in proof {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

/// Whether `proof` shows the tree of `old` leaves with root `old_root` is a
/// prefix of the tree of `new` leaves with root `new_root` (RFC 9162 2.1.4.2).
pub fn consistent(old: u64, new: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    if old == 0 || old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && fr == *old_root && sr == *new_root
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaves of the Certificate Transparency test vectors.
    fn ct_leaves() -> Vec<Vec<u8>> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|h| hex::decode(h).unwrap())
        .collect()
    }

    /// A root computed straight from RFC 9162's recursive definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn roots_match_the_ct_test_vectors() {
        let want = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut f = Frontier::new();
        assert_eq!(
            hex::encode(f.root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (leaf, root) in ct_leaves().iter().zip(want) {
            f.push(leaf_hash(leaf));
            assert_eq!(hex::encode(f.root()), root, "size {}", f.size());
        }
    }

    /// The README's proof vectors (the CT test data): leaf 5 in a tree of 8,
    /// and the consistency of 3 leaves with 7.
    #[test]
    fn proofs_match_the_readme_vectors() {
        let leaves: Vec<Hash> = ct_leaves().iter().map(|l| leaf_hash(l)).collect();
        let sub = |r: &Range<u64>| hex::encode(mth(&leaves[r.start as usize..r.end as usize]));
        let inclusion: Vec<String> = inclusion_ranges(5, 8).iter().map(sub).collect();
        assert_eq!(
            inclusion,
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        let consistency: Vec<String> = consistency_ranges(3, 7).iter().map(sub).collect();
        assert_eq!(
            consistency,
            [
                "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
                "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
                "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                "837dbb152e9b079010717e84e865da4ebc0fa198a806d59d31bf15accef22d0e",
            ]
        );
    }

    /// A million leaves: the frontier holds one subtree per set bit of the size.
    #[test]
    fn a_million_leaves_keep_a_logarithmic_frontier() {
        let mut f = Frontier::new();
        let mut widest = 0;
        for i in 0..1_000_000u32 {
            f.push(leaf_hash(&i.to_be_bytes()));
            widest = widest.max(f.stack.len());
        }
        assert_eq!(f.stack.len(), 1_000_000u32.count_ones() as usize);
        assert!(widest <= 20, "{widest}");
    }

    /// Every proof for every size up to 70 verifies, and its ranges' hashes
    /// are what the recursive definition gives; a wrong leaf or root fails.
    #[test]
    fn every_inclusion_and_consistency_proof_verifies() {
        let leaves: Vec<Hash> = (0..70u8).map(|i| leaf_hash(&[i])).collect();
        let sub = |r: &Range<u64>| mth(&leaves[r.start as usize..r.end as usize]);
        for n in 1..=leaves.len() as u64 {
            let root = mth(&leaves[..n as usize]);
            let mut f = Frontier::new();
            leaves[..n as usize].iter().for_each(|l| f.push(*l));
            assert_eq!(f.root(), root, "size {n}");
            for m in 0..n {
                let proof: Vec<Hash> = inclusion_ranges(m, n).iter().map(sub).collect();
                let leaf = leaves[m as usize];
                assert_eq!(root_from_inclusion(m, n, leaf, &proof), Some(root));
                assert_ne!(
                    root_from_inclusion(m, n, leaf_hash(b"x"), &proof),
                    Some(root)
                );
            }
            for old in 1..=n {
                let proof: Vec<Hash> = consistency_ranges(old, n).iter().map(sub).collect();
                let old_root = mth(&leaves[..old as usize]);
                assert!(consistent(old, n, &old_root, &root, &proof), "{old}→{n}");
                if old < n {
                    assert!(!consistent(old, n, &leaf_hash(b"x"), &root, &proof));
                    assert!(!consistent(old, n, &old_root, &leaf_hash(b"x"), &proof));
                }
            }
        }
    }
}

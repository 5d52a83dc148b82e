//! Rendezvous (highest random weight) hashing.

use super::{hash_u64, mix64};

fn score(key: u64, node: u64) -> u64 {
    mix64(hash_u64(key) ^ node.rotate_left(17).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The node of `nodes` with the highest score for `key` (Thaler & Ravishankar 1998). Removing
/// a node moves only its keys; adding one takes keys only for itself. `None` if `nodes` is
/// empty. Ties, which need equal 64-bit scores, go to the smaller node id.
pub fn rendezvous(key: u64, nodes: &[u64]) -> Option<u64> {
    nodes
        .iter()
        .map(|&n| (score(key, n), std::cmp::Reverse(n)))
        .max()
        .map(|(_, std::cmp::Reverse(n))| n)
}

/// Weighted rendezvous (Schindelhauer & Schomaker 2005): node `i` wins a share of keys
/// proportional to its weight, with score `-w / ln(u)` for a uniform `u` in (0, 1).
/// Nodes with a weight that is not positive and finite never win.
pub fn rendezvous_weighted(key: u64, nodes: &[(u64, f64)]) -> Option<u64> {
    let mut best: Option<(f64, u64)> = None;
    for &(n, w) in nodes {
        if !(w.is_finite() && w > 0.0) {
            continue;
        }
        // u in (0, 1): 53 random bits, never 0 or 1.
        let u = ((score(key, n) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let s = -w / u.ln();
        let better = match best {
            None => true,
            Some((bs, bn)) => s > bs || (s == bs && n < bn),
        };
        if better {
            best = Some((s, n));
        }
    }
    best.map(|(_, n)| n)
}

//! # Consistent hashing: a ring with virtual nodes, jump hash and rendezvous hashing
//!
//! Three ways to map keys to nodes so that a change of membership moves as few keys as
//! possible:
//!
//! - [`Ring`]: consistent hashing (Karger et al., *Consistent Hashing and Random Trees*,
//!   STOC 1997, §4) with virtual nodes (each physical node owns many points; Stoica et al.,
//!   *Chord*, SIGCOMM 2001, §6.2; DeCandia et al., *Dynamo*, SOSP 2007, §4.2). A key belongs
//!   to the first point at or after its hash, clockwise. Lookups are a binary search over
//!   the sorted points, O(log V), instead of the chapter's linear scan over a re-sorted
//!   list. Nodes carry a weight (more points) and an optional zone. [`Ring::preference_list`]
//!   gives the first N *distinct physical* nodes clockwise (Dynamo §4.3), and
//!   [`Ring::preference_list_zoned`] spreads them over distinct zones first. The ring also
//!   answers what a store needs to move data: [`Ring::ranges_of`] (the key ranges a node
//!   owns, e.g. to build Merkle trees per range) and [`Transfer`]s returned by
//!   [`Ring::add`] and [`Ring::remove`] (which range moves from whom to whom).
//! - [`jump_hash`]: Lamping & Veach, *A Fast, Minimal Memory, Consistent Hash Algorithm*
//!   (2014). No memory, perfectly even, but buckets can only be added or removed at the end.
//! - [`rendezvous`]: highest random weight hashing, Thaler & Ravishankar, *Using
//!   Name-Based Mappings to Increase Hit Rates* (IEEE/ACM ToN 1998). O(nodes) per lookup,
//!   no state beyond the node list; [`rendezvous_weighted`] follows Schindelhauer &
//!   Schomaker's logarithmic method (2005).
//!
//! ## Invariants (checked by property tests)
//!
//! - **Minimal movement.** Adding a node moves keys only *to* that node; removing a node
//!   moves only the keys it owned. The [`Transfer`]s the ring reports are exactly the keys
//!   that changed owner.
//! - **Distinctness.** A preference list never names a physical node twice, and the zoned
//!   list names distinct zones while enough zones remain.
//! - **Determinism.** The ring depends only on its set of members, not on the order they
//!   were added: points are ordered by (position, member), so even a collision of two
//!   points resolves the same way everywhere.
//!
//! ## Hash function
//!
//! Positions are 64-bit: [`hash_bytes`] is FNV-1a followed by the SplitMix64 finalizer
//! (Steele, Lea & Flood, OOPSLA 2014), which makes every output bit depend on every input
//! bit. It is not cryptographic: an adversary who picks keys can aim them at one node,
//! which SHA-1 in the Chord paper prevents. A 64-bit space keeps a point in one machine
//! word, which is what makes a 10-million-lookups-per-second ring possible; collisions
//! are about 2^-64 per pair and are resolved deterministically anyway.
//!
//! ## Differences from the chapter's sketch
//!
//! The chapter re-sorts every point on every lookup and scans them linearly (O(V log V)
//! per lookup), has no weights or zones, hashes with MD5 hex strings compared as text, and
//! leaves "rebalance" undefined. Here lookups are O(log V), and the data to move is
//! computed exactly.

mod jump;
mod rendezvous;
pub(crate) mod ring;

#[cfg(test)]
mod tests;

pub use jump::jump_hash;
pub use rendezvous::{rendezvous, rendezvous_weighted};
pub use ring::{KeyRange, NodeSpec, Ring, RingError, RingMember, Transfer};

/// 64-bit FNV-1a of `bytes`, finished with SplitMix64 so that the output is well mixed.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// The SplitMix64 finalizer: a bijection on u64 with full avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of a 64-bit key, as [`hash_bytes`] of its little-endian bytes would be too
/// slow for benchmarks: one finalizer round.
pub fn hash_u64(key: u64) -> u64 {
    mix64(key ^ 0x9e37_79b9_7f4a_7c15)
}

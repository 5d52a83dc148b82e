//! The consistent-hashing ring with virtual nodes, weights, zones and exact movement.

use super::hash_bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use synod_core::NodeId;
use thiserror::Error;

/// Something that can own points on a [`Ring`]: its points are hashed from
/// [`RingMember::ring_key`], so every process that builds a ring from the same members
/// gets the same ring.
pub trait RingMember: Ord + Clone + Debug {
    /// The bytes that name this member.
    fn ring_key(&self) -> Vec<u8>;
}

impl RingMember for NodeId {
    fn ring_key(&self) -> Vec<u8> {
        format!("node-{}", self.0).into_bytes()
    }
}

impl RingMember for u32 {
    fn ring_key(&self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}

impl RingMember for u64 {
    fn ring_key(&self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}

impl RingMember for String {
    fn ring_key(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

/// How a member joins the ring: its weight (a multiple of the ring's virtual nodes per
/// unit of weight) and, optionally, the zone (rack, availability zone) it lives in.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    /// Relative capacity. A member of weight 2 gets twice the points, so about twice the
    /// keys. Must be positive and finite.
    pub weight: f64,
    /// The failure domain. [`Ring::preference_list_zoned`] spreads replicas over zones.
    pub zone: Option<String>,
}

impl Default for NodeSpec {
    fn default() -> Self {
        NodeSpec {
            weight: 1.0,
            zone: None,
        }
    }
}

impl NodeSpec {
    /// Weight 1 in `zone`.
    pub fn in_zone(zone: impl Into<String>) -> Self {
        NodeSpec {
            weight: 1.0,
            zone: Some(zone.into()),
        }
    }

    /// This spec with another weight.
    pub fn with_weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }
}

/// The positions `(start, end]` of the ring, clockwise, wrapping past `u64::MAX` to 0.
/// `start == end` means the whole ring (a ring of one point).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyRange {
    /// Exclusive start: the position of the preceding point.
    pub start: u64,
    /// Inclusive end: the position of the owning point.
    pub end: u64,
}

impl KeyRange {
    /// Whether position `h` is in the range.
    pub fn contains(&self, h: u64) -> bool {
        in_half_open(h, self.start, self.end)
    }

    /// Whether this is the whole ring.
    pub fn is_full(&self) -> bool {
        self.start == self.end
    }

    /// How many positions the range covers (2^64 for the whole ring).
    pub fn len(&self) -> u128 {
        if self.is_full() {
            1u128 << 64
        } else {
            u128::from(self.end.wrapping_sub(self.start))
        }
    }

    /// Never true: a range always holds at least its end point.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Whether `x` is in the clockwise interval `(a, b]`; `(a, a]` is the whole ring.
pub(crate) fn in_half_open(x: u64, a: u64, b: u64) -> bool {
    if a == b {
        true
    } else {
        x.wrapping_sub(a).wrapping_sub(1) < b.wrapping_sub(a)
    }
}

/// Keys in `range` changed owner from `from` to `to`: what a store must copy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Transfer<N> {
    /// The positions that moved.
    pub range: KeyRange,
    /// The old owner.
    pub from: N,
    /// The new owner.
    pub to: N,
}

/// Why a membership change was refused.
#[derive(Debug, Error, PartialEq)]
pub enum RingError {
    /// The member is already on the ring.
    #[error("{0} is already on the ring")]
    AlreadyMember(String),
    /// The member is not on the ring.
    #[error("{0} is not on the ring")]
    NotMember(String),
    /// The weight is not positive and finite.
    #[error("weight {0} must be positive and finite")]
    BadWeight(f64),
}

#[derive(Clone, Debug)]
struct Member {
    spec: NodeSpec,
    slot: u32,
}

/// A consistent-hashing ring of members `N` with virtual nodes.
///
/// Points live in two parallel sorted arrays (positions and owner slots), so a lookup is
/// one binary search over a dense `Vec<u64>`.
#[derive(Clone, Debug)]
pub struct Ring<N: RingMember> {
    vnodes_per_weight: u32,
    positions: Vec<u64>,
    owners: Vec<u32>,
    members: BTreeMap<N, Member>,
    slots: Vec<Option<N>>,
}

impl<N: RingMember> Ring<N> {
    /// An empty ring where a member of weight 1 gets `vnodes_per_weight` points (at least
    /// one point per member, whatever its weight).
    pub fn new(vnodes_per_weight: u32) -> Self {
        Ring {
            vnodes_per_weight: vnodes_per_weight.max(1),
            positions: Vec::new(),
            owners: Vec::new(),
            members: BTreeMap::new(),
            slots: Vec::new(),
        }
    }

    /// A ring of `members`, each of weight 1 and no zone.
    pub fn with_members(vnodes_per_weight: u32, members: impl IntoIterator<Item = N>) -> Self {
        let mut ring = Ring::new(vnodes_per_weight);
        let mut points = Vec::new();
        for m in members {
            if ring.members.contains_key(&m) {
                continue;
            }
            let slot = ring.slots.len() as u32;
            ring.slots.push(Some(m.clone()));
            points.extend(ring.points_for(&m, &NodeSpec::default(), slot));
            ring.members.insert(
                m,
                Member {
                    spec: NodeSpec::default(),
                    slot,
                },
            );
        }
        ring.install(points);
        ring
    }

    // ---- getters -------------------------------------------------------------------

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the ring has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Number of points (virtual nodes) on the ring.
    pub fn point_count(&self) -> usize {
        self.positions.len()
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: &N) -> bool {
        self.members.contains_key(node)
    }

    /// Every member with its spec, in member order.
    pub fn members(&self) -> impl Iterator<Item = (&N, &NodeSpec)> {
        self.members.iter().map(|(n, m)| (n, &m.spec))
    }

    /// The sorted positions of every point, with their owners.
    pub fn points(&self) -> impl Iterator<Item = (u64, &N)> {
        self.positions
            .iter()
            .zip(&self.owners)
            .map(|(&p, &o)| (p, self.slot(o)))
    }

    // ---- lookups -------------------------------------------------------------------

    /// The member that owns position `h`: the owner of the first point at or after `h`,
    /// clockwise. `None` on an empty ring.
    #[inline]
    pub fn owner(&self, h: u64) -> Option<&N> {
        let i = self.point_at_or_after(h)?;
        Some(self.slot(self.owners[i]))
    }

    /// The owner of `key`, hashed with [`super::hash_bytes`].
    pub fn owner_of_key(&self, key: &[u8]) -> Option<&N> {
        self.owner(hash_bytes(key))
    }

    /// The first `n` distinct members clockwise from `h` (fewer if the ring has fewer):
    /// the owner first, then the replicas. Points of members already listed are skipped,
    /// so a node never holds two replicas of one key.
    pub fn preference_list(&self, h: u64, n: usize) -> Vec<&N> {
        if n == 0 {
            return Vec::new();
        }
        let mut out: Vec<&N> = Vec::with_capacity(n.min(self.len()));
        let mut seen = BTreeSet::new();
        self.walk(h, |slot| {
            if seen.insert(slot) {
                out.push(self.slot(slot));
            }
            out.len() < n
        });
        out
    }

    /// Like [`Ring::preference_list`], but members in zones already listed are skipped
    /// while unlisted zones remain; then the list is filled with the next distinct members
    /// regardless of zone. Members without a zone count as a zone of their own.
    pub fn preference_list_zoned(&self, h: u64, n: usize) -> Vec<&N> {
        let want = n.min(self.len());
        if want == 0 {
            return Vec::new();
        }
        let mut chosen: Vec<u32> = Vec::with_capacity(want);
        let mut zones: BTreeSet<&str> = BTreeSet::new();
        self.walk(h, |slot| {
            if !chosen.contains(&slot) {
                let zone = self.members[self.slot(slot)].spec.zone.as_deref();
                match zone {
                    Some(z) if zones.contains(z) => {}
                    Some(z) => {
                        zones.insert(z);
                        chosen.push(slot);
                    }
                    None => chosen.push(slot),
                }
            }
            chosen.len() < want
        });
        if chosen.len() < want {
            self.walk(h, |slot| {
                if !chosen.contains(&slot) {
                    chosen.push(slot);
                }
                chosen.len() < want
            });
        }
        chosen.into_iter().map(|s| self.slot(s)).collect()
    }

    /// The key ranges `node` owns, in ring order (empty if it is not a member). The ranges
    /// of all members partition the ring.
    pub fn ranges_of(&self, node: &N) -> Vec<KeyRange> {
        let Some(member) = self.members.get(node) else {
            return Vec::new();
        };
        (0..self.positions.len())
            .filter(|&i| self.owners[i] == member.slot)
            .filter_map(|i| self.range_at(i))
            .collect()
    }

    /// Every non-empty range with its owner, in ring order.
    pub fn ranges(&self) -> Vec<(KeyRange, &N)> {
        (0..self.positions.len())
            .filter_map(|i| Some((self.range_at(i)?, self.slot(self.owners[i]))))
            .collect()
    }

    /// The fraction of the ring each member owns.
    pub fn ownership(&self) -> BTreeMap<&N, f64> {
        let mut out: BTreeMap<&N, f64> = self.members.keys().map(|n| (n, 0.0)).collect();
        for (range, owner) in self.ranges() {
            *out.entry(owner).or_default() += range.len() as f64 / (1u128 << 64) as f64;
        }
        out
    }

    // ---- membership ----------------------------------------------------------------

    /// Add `node` with weight 1 and no zone. See [`Ring::add_with`].
    pub fn add(&mut self, node: N) -> Result<Vec<Transfer<N>>, RingError> {
        self.add_with(node, NodeSpec::default())
    }

    /// Add `node` and return the ranges that move to it, each from its previous owner.
    /// Nothing else changes owner (minimal movement). A first member takes nothing from
    /// anyone, so the list is empty.
    pub fn add_with(&mut self, node: N, spec: NodeSpec) -> Result<Vec<Transfer<N>>, RingError> {
        if !(spec.weight.is_finite() && spec.weight > 0.0) {
            return Err(RingError::BadWeight(spec.weight));
        }
        if self.members.contains_key(&node) {
            return Err(RingError::AlreadyMember(format!("{node:?}")));
        }
        let was_empty = self.is_empty();
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => {
                self.slots[free] = Some(node.clone());
                free as u32
            }
            None => {
                self.slots.push(Some(node.clone()));
                (self.slots.len() - 1) as u32
            }
        };
        let mut points: Vec<(u64, u32)> = self
            .positions
            .iter()
            .copied()
            .zip(self.owners.iter().copied())
            .collect();
        points.extend(self.points_for(&node, &spec, slot));
        self.members.insert(node.clone(), Member { spec, slot });
        self.install(points);
        if was_empty {
            return Ok(Vec::new());
        }
        // The old owner of a new point's range is the first point after it that is not
        // the new member's: that point was the range's successor before the add.
        let transfers = (0..self.positions.len())
            .filter(|&i| self.owners[i] == slot)
            .filter_map(|i| {
                let range = self.range_at(i)?;
                let from = self.next_owner_other_than(i, slot)?;
                Some(Transfer {
                    range,
                    from: self.slot(from).clone(),
                    to: node.clone(),
                })
            })
            .collect();
        Ok(transfers)
    }

    /// Remove `node` and return the ranges it owned, each with its new owner. Nothing else
    /// changes owner. Removing the last member returns no transfers: nobody is left.
    pub fn remove(&mut self, node: &N) -> Result<Vec<Transfer<N>>, RingError> {
        let Some(member) = self.members.get(node) else {
            return Err(RingError::NotMember(format!("{node:?}")));
        };
        let slot = member.slot;
        let transfers = (0..self.positions.len())
            .filter(|&i| self.owners[i] == slot)
            .filter_map(|i| {
                let range = self.range_at(i)?;
                let to = self.next_owner_other_than(i, slot)?;
                Some(Transfer {
                    range,
                    from: node.clone(),
                    to: self.slot(to).clone(),
                })
            })
            .collect();
        let points: Vec<(u64, u32)> = self
            .positions
            .iter()
            .copied()
            .zip(self.owners.iter().copied())
            .filter(|&(_, o)| o != slot)
            .collect();
        self.members.remove(node);
        self.slots[slot as usize] = None;
        self.install(points);
        Ok(transfers)
    }

    /// What [`Ring::add_with`] would move, without changing the ring.
    pub fn plan_add(&self, node: N, spec: NodeSpec) -> Result<Vec<Transfer<N>>, RingError> {
        self.clone().add_with(node, spec)
    }

    /// What [`Ring::remove`] would move, without changing the ring.
    pub fn plan_remove(&self, node: &N) -> Result<Vec<Transfer<N>>, RingError> {
        self.clone().remove(node)
    }

    // ---- internals -----------------------------------------------------------------

    fn slot(&self, slot: u32) -> &N {
        match &self.slots[slot as usize] {
            Some(n) => n,
            None => unreachable!("a point refers to a removed member"),
        }
    }

    fn points_for(&self, node: &N, spec: &NodeSpec, slot: u32) -> Vec<(u64, u32)> {
        let count = ((f64::from(self.vnodes_per_weight) * spec.weight).round() as u64).max(1);
        let mut key = node.ring_key();
        key.push(b'#');
        let base = key.len();
        (0..count)
            .map(|i| {
                key.truncate(base);
                key.extend_from_slice(&i.to_le_bytes());
                (hash_bytes(&key), slot)
            })
            .collect()
    }

    fn install(&mut self, mut points: Vec<(u64, u32)>) {
        // Ties on position break by member, never by insertion order.
        let slots = &self.slots;
        points.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| slots[a.1 as usize].cmp(&slots[b.1 as usize]))
        });
        self.positions = points.iter().map(|p| p.0).collect();
        self.owners = points.iter().map(|p| p.1).collect();
    }

    #[inline]
    fn point_at_or_after(&self, h: u64) -> Option<usize> {
        if self.positions.is_empty() {
            return None;
        }
        let i = self.positions.partition_point(|&p| p < h);
        Some(if i == self.positions.len() { 0 } else { i })
    }

    /// The range point `i` owns, or `None` if it is empty (a collision with the point
    /// before it, which then owns the position).
    fn range_at(&self, i: usize) -> Option<KeyRange> {
        let len = self.positions.len();
        let end = self.positions[i];
        if len == 1 {
            return Some(KeyRange { start: end, end });
        }
        let start = self.positions[(i + len - 1) % len];
        if start == end {
            return None;
        }
        Some(KeyRange { start, end })
    }

    fn next_owner_other_than(&self, i: usize, slot: u32) -> Option<u32> {
        let len = self.positions.len();
        (1..len)
            .map(|k| self.owners[(i + k) % len])
            .find(|&o| o != slot)
    }

    /// Call `visit` with the owner slot of each point clockwise from `h`, once around the
    /// ring, until it returns false.
    fn walk(&self, h: u64, mut visit: impl FnMut(u32) -> bool) {
        let Some(start) = self.point_at_or_after(h) else {
            return;
        };
        let len = self.positions.len();
        for k in 0..len {
            if !visit(self.owners[(start + k) % len]) {
                return;
            }
        }
    }
}

//! Vector clocks (Fidge 1988; Mattern 1989), sparse over an open set of nodes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use synod_core::NodeId;

/// How two events, or two vector timestamps, are related by causality.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Causality {
    /// The left one happened before the right one (`V(a) < V(b)`).
    Before,
    /// The right one happened before the left one (`V(a) > V(b)`).
    After,
    /// The same timestamp: in an execution, the same event.
    Equal,
    /// Neither happened before the other.
    Concurrent,
}

impl Causality {
    /// The relation seen from the other side: `Before` becomes `After` and back.
    pub fn reverse(self) -> Causality {
        match self {
            Causality::Before => Causality::After,
            Causality::After => Causality::Before,
            other => other,
        }
    }
}

/// A vector clock: for each node, how many of its events are in the causal past.
///
/// Rules (Mattern 1989, §4): a node increments its own entry at each event
/// ([`VectorClock::increment`]); a message carries the sender's vector; the receiver merges
/// it by pointwise maximum and then increments its own entry ([`VectorClock::observe`]).
/// Then for events `a` and `b`, `a → b` if and only if `V(a) < V(b)`
/// ([`VectorClock::happened_before`]), and `a ∥ b` if and only if the vectors are
/// incomparable.
///
/// The vector is sparse: a node with no entry has counter zero, so any set of nodes works
/// and a new node needs no resizing. Zero entries are never stored, which keeps equality
/// structural; deserialization drops any that arrive.
///
/// The [`PartialOrd`] impl is the causal order, consistent with [`VectorClock::compare`]:
/// `partial_cmp` returns `None` for concurrent vectors.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VectorClock {
    entries: BTreeMap<NodeId, u64>,
}

impl VectorClock {
    /// The empty vector: no events at all, before every other vector.
    pub fn new() -> Self {
        VectorClock::default()
    }

    /// The counter for `node` (zero if absent).
    pub fn get(&self, node: NodeId) -> u64 {
        self.entries.get(&node).copied().unwrap_or(0)
    }

    /// Record one more event of `node` and return its new counter.
    ///
    /// The counter saturates at `u64::MAX`; only a peer sending absurd vectors gets it
    /// there, and a saturated entry no longer distinguishes later events.
    pub fn increment(&mut self, node: NodeId) -> u64 {
        let counter = self.entries.entry(node).or_insert(0);
        *counter = counter.saturating_add(1);
        *counter
    }

    /// Merge `other` in: the pointwise maximum, which is the least upper bound of the two.
    pub fn merge(&mut self, other: &VectorClock) {
        for (&node, &counter) in &other.entries {
            let mine = self.entries.entry(node).or_insert(0);
            *mine = (*mine).max(counter);
        }
    }

    /// The receive event at `node` of a message stamped `received`: merge, then increment
    /// the own entry. The clock's new value is the receive event's timestamp.
    pub fn observe(&mut self, node: NodeId, received: &VectorClock) {
        self.merge(received);
        self.increment(node);
    }

    /// How `self` relates to `other` in the causal order.
    pub fn compare(&self, other: &VectorClock) -> Causality {
        let mut some_less = false;
        let mut some_greater = false;
        for node in self.entries.keys().chain(other.entries.keys()) {
            match self.get(*node).cmp(&other.get(*node)) {
                Ordering::Less => some_less = true,
                Ordering::Greater => some_greater = true,
                Ordering::Equal => {}
            }
            if some_less && some_greater {
                return Causality::Concurrent;
            }
        }
        match (some_less, some_greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// `self < other`: the event stamped `self` happened before the one stamped `other`.
    pub fn happened_before(&self, other: &VectorClock) -> bool {
        self.compare(other) == Causality::Before
    }

    /// `self ≥ other`: everything `other` has seen, `self` has seen too.
    pub fn descends(&self, other: &VectorClock) -> bool {
        matches!(self.compare(other), Causality::After | Causality::Equal)
    }

    /// Neither vector is below or equal to the other.
    pub fn concurrent_with(&self, other: &VectorClock) -> bool {
        self.compare(other) == Causality::Concurrent
    }

    /// The non-zero entries, in node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.entries.iter().map(|(&node, &counter)| (node, counter))
    }

    /// The number of nodes with a non-zero counter.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True for the empty vector.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl PartialOrd for VectorClock {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.compare(other) {
            Causality::Before => Some(Ordering::Less),
            Causality::After => Some(Ordering::Greater),
            Causality::Equal => Some(Ordering::Equal),
            Causality::Concurrent => None,
        }
    }
}

impl FromIterator<(NodeId, u64)> for VectorClock {
    /// Build a vector from entries. Zero counters are dropped; a node listed twice keeps
    /// its larger counter.
    fn from_iter<I: IntoIterator<Item = (NodeId, u64)>>(iter: I) -> Self {
        let mut clock = VectorClock::new();
        for (node, counter) in iter {
            if counter > 0 {
                let entry = clock.entries.entry(node).or_insert(0);
                *entry = (*entry).max(counter);
            }
        }
        clock
    }
}

impl fmt::Debug for VectorClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for VectorClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (node, counter)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{node}:{counter}")?;
        }
        f.write_str("}")
    }
}

impl Serialize for VectorClock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for VectorClock {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = BTreeMap::<NodeId, u64>::deserialize(deserializer)?;
        Ok(entries.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vc(entries: &[(u32, u64)]) -> VectorClock {
        entries.iter().map(|&(n, c)| (NodeId(n), c)).collect()
    }

    #[test]
    fn compare_names_all_four_relations() {
        assert_eq!(
            vc(&[(0, 1)]).compare(&vc(&[(0, 1), (1, 1)])),
            Causality::Before
        );
        assert_eq!(
            vc(&[(0, 2), (1, 1)]).compare(&vc(&[(0, 1)])),
            Causality::After
        );
        assert_eq!(
            vc(&[(0, 1), (1, 0)]).compare(&vc(&[(0, 1)])),
            Causality::Equal
        );
        assert_eq!(vc(&[(0, 2)]).compare(&vc(&[(1, 1)])), Causality::Concurrent);
    }

    #[test]
    fn missing_entries_read_as_zero() {
        let clock = vc(&[(7, 3)]);
        assert_eq!(clock.get(NodeId(7)), 3);
        assert_eq!(clock.get(NodeId(1_000)), 0);
        assert!(VectorClock::new().happened_before(&clock));
    }

    #[test]
    fn receive_merges_then_increments_own_entry() {
        let mut receiver = vc(&[(1, 2)]);
        receiver.observe(NodeId(1), &vc(&[(0, 5), (1, 1), (2, 1)]));
        assert_eq!(receiver, vc(&[(0, 5), (1, 3), (2, 1)]));
    }

    #[test]
    fn partial_order_is_none_exactly_for_concurrent_vectors() {
        let a = vc(&[(0, 1)]);
        let b = vc(&[(1, 1)]);
        assert_eq!(a.partial_cmp(&b), None);
        assert_eq!([a < b, a > b, a <= b, a >= b], [false; 4]);
        let mut c = a.clone();
        c.merge(&b);
        assert!(a < c && b < c);
    }

    #[test]
    fn zero_entries_are_dropped_on_decode() {
        let mut raw = BTreeMap::new();
        raw.insert(NodeId(0), 0u64);
        raw.insert(NodeId(1), 4u64);
        let bytes = synod_core::codec::encode(&raw);
        let decoded: VectorClock = synod_core::codec::decode(&bytes).expect("decodes");
        assert_eq!(decoded, vc(&[(1, 4)]));
        assert_eq!(decoded.len(), 1);
    }

    #[test]
    fn codec_round_trip_preserves_the_vector() {
        let clock = vc(&[(0, 3), (5, 9), (2, 1)]);
        let bytes = synod_core::codec::encode(&clock);
        let decoded: VectorClock = synod_core::codec::decode(&bytes).expect("decodes");
        assert_eq!(decoded, clock);
        assert_eq!(format!("{clock}"), "{n0:3, n2:1, n5:9}");
    }
}

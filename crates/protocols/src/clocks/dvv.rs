//! Dots, version vectors and DVV sets for a Dynamo-style replicated store.
//!
//! Preguiça, Baquero, Almeida, Fonte and Gonçalves, "Dotted Version Vectors: Logical Clocks
//! for Optimistic Replication" (2010), name each write by a *dot* `(replica, counter)` kept
//! apart from the version vector of what the write overwrote. Almeida, Baquero, Gonçalves,
//! Preguiça and Fonte, "Scalable and Accurate Causality Tracking for Eventually Consistent
//! Stores" (DAIS 2014), §4, store one key's siblings compactly as a *DVV set*: for each
//! replica `r`, a counter `n` and the values of `r`'s newest dots, `(r, n)`, `(r, n − 1)`, ….
//! Everything below a replica's listed values is causal past that has been overwritten.

use super::vector::{Causality, VectorClock};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use synod_core::NodeId;
use thiserror::Error;

/// One write event: the `counter`-th write coordinated by replica `node`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Dot {
    /// The replica that coordinated the write.
    pub node: NodeId,
    /// Its per-replica sequence number, from 1.
    pub counter: u64,
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.node, self.counter)
    }
}

/// A version vector: for each replica, the prefix `1..=n` of its dots that have been seen.
///
/// It is the causal context a client reads with a value and hands back with its next
/// write ([`DvvSet::context`], [`DvvSet::update`]). Structurally it is a
/// [`VectorClock`] over replicas; the separate type says what its counters count.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionVector(VectorClock);

impl VersionVector {
    /// The empty context: nothing seen. A write with it overwrites nothing.
    pub fn new() -> Self {
        VersionVector::default()
    }

    /// The highest counter of `node` seen (zero if none).
    pub fn get(&self, node: NodeId) -> u64 {
        self.0.get(node)
    }

    /// Whether the write `dot` is in the causal past this vector describes.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.node)
    }

    /// Add `dot` and, because dots of one replica are seen in order, every earlier dot of
    /// the same replica.
    pub fn add(&mut self, dot: Dot) {
        self.0
            .merge(&VectorClock::from_iter([(dot.node, dot.counter)]));
    }

    /// Merge `other` in (pointwise maximum): the union of the two causal pasts.
    pub fn merge(&mut self, other: &VersionVector) {
        self.0.merge(&other.0);
    }

    /// How the two causal pasts relate.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        self.0.compare(&other.0)
    }

    /// `self ⊇ other`: every write `other` has seen, `self` has seen too.
    pub fn descends(&self, other: &VersionVector) -> bool {
        self.0.descends(&other.0)
    }

    /// The non-zero entries, in node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.0.iter()
    }

    /// True if nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialOrd for VersionVector {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.0.partial_cmp(&other.0)
    }
}

impl FromIterator<(NodeId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (NodeId, u64)>>(iter: I) -> Self {
        VersionVector(iter.into_iter().collect())
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A replica's counter cannot advance: it is already `u64::MAX`.
///
/// Only a client context that claims an absurd counter can cause this, so it is returned
/// as an error on the untrusted input rather than a panic.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
#[error("the write counter of replica {node} is exhausted")]
pub struct CounterOverflow {
    /// The replica whose counter is at `u64::MAX`.
    pub node: NodeId,
}

/// Why an encoded [`DvvSet`] was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
#[error("replica {node} lists {values} values but its counter is only {counter}")]
pub(crate) struct MalformedDvvSet {
    node: NodeId,
    values: usize,
    counter: u64,
}

/// One replica's part of a [`DvvSet`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct DvvEntry<V> {
    /// The replica's dots `1..=counter` are all in the causal past.
    counter: u64,
    /// Values of the newest dots, newest first: `values[i]` was written with dot
    /// `(replica, counter − i)`. Never longer than `counter`.
    values: Vec<V>,
}

impl<V> DvvEntry<V> {
    fn empty() -> Self {
        DvvEntry {
            counter: 0,
            values: Vec::new(),
        }
    }

    /// Keep only the values whose dots are above `seen` (the paper's `take(n − seen, l)`).
    fn discard_seen(&mut self, seen: u64) {
        let keep = self.counter.saturating_sub(seen);
        self.values
            .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
    }

    /// The counter below which this replica has discarded every value.
    fn floor(&self) -> u64 {
        // `values.len() <= counter` is the entry's invariant, checked on decode.
        self.counter.saturating_sub(self.values.len() as u64)
    }
}

/// The siblings of one key, with their causal history: a DVV set (Almeida et al. 2014, §4).
///
/// Inputs:
///
/// - [`DvvSet::update`]: a client write, given the context the client read. The new value
///   supersedes exactly the siblings that context saw and stays beside the rest.
/// - [`DvvSet::sync`]: merge another replica's state for the same key. Values that either
///   side knows to be overwritten are dropped; concurrent ones are kept.
/// - [`DvvSet::discard`]: drop the values a context has seen, without adding a value.
///
/// Outputs: [`DvvSet::values`] (the siblings to return on a read) and
/// [`DvvSet::context`] (the paper's `join`: the causal context to return with them).
///
/// The state is exact: a sibling is dropped only when a write or a replica has seen it, so
/// there are no lost updates and no false conflicts, and its size is bounded by the number
/// of replicas plus the number of concurrent siblings, however many clients write.
///
/// Assumption: only replica `r` coordinates writes with `coordinator == r`, because dot
/// counters are drawn from the local state.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "DvvSetWire<V>", bound(deserialize = "V: Deserialize<'de>"))]
pub struct DvvSet<V> {
    entries: BTreeMap<NodeId, DvvEntry<V>>,
}

/// The encoded shape of a [`DvvSet`], validated before it becomes one.
#[derive(Deserialize)]
struct DvvSetWire<V> {
    entries: BTreeMap<NodeId, DvvEntry<V>>,
}

impl<V> TryFrom<DvvSetWire<V>> for DvvSet<V> {
    type Error = MalformedDvvSet;

    fn try_from(wire: DvvSetWire<V>) -> Result<Self, Self::Error> {
        let mut entries = BTreeMap::new();
        for (node, entry) in wire.entries {
            if u64::try_from(entry.values.len()).map_or(true, |len| len > entry.counter) {
                return Err(MalformedDvvSet {
                    node,
                    values: entry.values.len(),
                    counter: entry.counter,
                });
            }
            if entry.counter > 0 {
                entries.insert(node, entry);
            }
        }
        Ok(DvvSet { entries })
    }
}

impl<V> Default for DvvSet<V> {
    fn default() -> Self {
        DvvSet {
            entries: BTreeMap::new(),
        }
    }
}

impl<V> DvvSet<V> {
    /// A key never written: no values, empty context.
    pub fn new() -> Self {
        DvvSet::default()
    }

    /// The causal context of the current siblings, to hand to a client with
    /// [`DvvSet::values`]. A later write with this context supersedes all of them. The
    /// paper calls it `join`.
    pub fn context(&self) -> VersionVector {
        self.entries
            .iter()
            .map(|(&node, entry)| (node, entry.counter))
            .collect()
    }

    /// The sibling values: in replica order, newest first within a replica.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.entries.values().flat_map(|entry| entry.values.iter())
    }

    /// The sibling values with the dots that wrote them.
    pub fn dotted_values(&self) -> impl Iterator<Item = (Dot, &V)> + '_ {
        self.entries.iter().flat_map(|(&node, entry)| {
            entry.values.iter().zip(0u64..).map(move |(value, age)| {
                let dot = Dot {
                    node,
                    counter: entry.counter - age,
                };
                (dot, value)
            })
        })
    }

    /// The number of siblings.
    pub fn len(&self) -> usize {
        self.entries.values().map(|entry| entry.values.len()).sum()
    }

    /// True if there are no siblings (never written, or only superseded values).
    pub fn is_empty(&self) -> bool {
        self.entries.values().all(|entry| entry.values.is_empty())
    }

    /// Drop every sibling whose dot `context` contains (the paper's `discard`). The causal
    /// history is unchanged.
    pub fn discard(&mut self, context: &VersionVector) {
        for (&node, entry) in &mut self.entries {
            entry.discard_seen(context.get(node));
        }
    }

    /// A client write of `value`, coordinated by this replica `coordinator`, from a client
    /// that read `context` (empty for a blind write).
    ///
    /// The new state holds the new value, under a fresh dot of `coordinator`, and every
    /// sibling the context did not see; the siblings it saw are superseded. The causal
    /// history grows to include the context. This is `update(S, C, r, v)` of the paper:
    /// `event` on the sync of `S` with `C`. Returns the new value's dot.
    ///
    /// Fails without changing anything if `coordinator`'s counter is exhausted, which only
    /// an absurd client context can cause.
    pub fn update(
        &mut self,
        context: &VersionVector,
        value: V,
        coordinator: NodeId,
    ) -> Result<Dot, CounterOverflow> {
        let highest = self
            .entries
            .get(&coordinator)
            .map_or(0, |entry| entry.counter)
            .max(context.get(coordinator));
        let counter = highest
            .checked_add(1)
            .ok_or(CounterOverflow { node: coordinator })?;

        // Sync with the client's context, which holds no values of its own: what the client
        // saw is overwritten, and the history grows to what it saw.
        for (node, seen) in context.iter() {
            let entry = self.entries.entry(node).or_insert_with(DvvEntry::empty);
            if seen >= entry.counter {
                entry.counter = seen;
                entry.values.clear();
            } else {
                entry.discard_seen(seen);
            }
        }

        // The event: one new dot at the coordinator. Its unseen siblings stay in the list,
        // which remains the coordinator's newest dots in order.
        let entry = self
            .entries
            .entry(coordinator)
            .or_insert_with(DvvEntry::empty);
        entry.counter = counter;
        entry.values.insert(0, value);
        Ok(Dot {
            node: coordinator,
            counter,
        })
    }

    /// Every value, consuming the set.
    pub fn into_values(self) -> Vec<V> {
        self.entries
            .into_values()
            .flat_map(|entry| entry.values)
            .collect()
    }
}

impl<V: Clone> DvvSet<V> {
    /// Merge another replica's state for the same key (the paper's `sync`).
    ///
    /// For each replica the history becomes the larger counter. A value survives if the
    /// side that lacks it has not seen its dot: a dot that one side has seen but no longer
    /// lists was overwritten there. Commutative, associative and idempotent.
    pub fn sync(&mut self, other: &DvvSet<V>) {
        for (&node, theirs) in &other.entries {
            let Some(mine) = self.entries.get_mut(&node) else {
                self.entries.insert(node, theirs.clone());
                continue;
            };
            if mine.counter >= theirs.counter {
                // Keep my values above the point where the other side dropped values.
                mine.discard_seen(theirs.floor());
            } else {
                let keep = theirs.counter - mine.floor();
                let keep = usize::try_from(keep).unwrap_or(usize::MAX);
                mine.counter = theirs.counter;
                mine.values = theirs.values.iter().take(keep).cloned().collect();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(0);
    const B: NodeId = NodeId(1);

    fn sorted_values(set: &DvvSet<&'static str>) -> Vec<&'static str> {
        let mut values: Vec<_> = set.values().copied().collect();
        values.sort_unstable();
        values
    }

    #[test]
    fn concurrent_writes_with_the_same_context_become_two_siblings() {
        let mut replica = DvvSet::new();
        let context = replica.context();
        let first = replica.update(&context, "x", A).expect("counter");
        let second = replica.update(&context, "y", A).expect("counter");
        assert_eq!(
            first,
            Dot {
                node: A,
                counter: 1
            }
        );
        assert_eq!(
            second,
            Dot {
                node: A,
                counter: 2
            }
        );
        assert_eq!(sorted_values(&replica), ["x", "y"]);
    }

    #[test]
    fn write_that_saw_both_siblings_leaves_one_value() {
        let mut replica = DvvSet::new();
        replica
            .update(&VersionVector::new(), "x", A)
            .expect("counter");
        replica
            .update(&VersionVector::new(), "y", A)
            .expect("counter");
        let context = replica.context();
        replica.update(&context, "z", A).expect("counter");
        assert_eq!(sorted_values(&replica), ["z"]);
        assert_eq!(replica.context(), VersionVector::from_iter([(A, 3)]));
    }

    #[test]
    fn stale_write_supersedes_only_what_its_context_saw() {
        let mut replica = DvvSet::new();
        let stale = replica.context();
        replica.update(&stale, "x", A).expect("counter");
        let saw_x = replica.context();
        replica.update(&stale, "y", A).expect("counter");
        // A client that read only "x" writes "z": "x" is gone, "y" stays beside "z".
        replica.update(&saw_x, "z", A).expect("counter");
        assert_eq!(sorted_values(&replica), ["y", "z"]);
        let dots: Vec<Dot> = replica.dotted_values().map(|(dot, _)| dot).collect();
        assert_eq!(
            dots,
            [
                Dot {
                    node: A,
                    counter: 3
                },
                Dot {
                    node: A,
                    counter: 2
                }
            ]
        );
    }

    #[test]
    fn sync_keeps_writes_from_different_coordinators() {
        let mut a = DvvSet::new();
        let mut b = DvvSet::new();
        a.update(&VersionVector::new(), "from a", A)
            .expect("counter");
        b.update(&VersionVector::new(), "from b", B)
            .expect("counter");
        a.sync(&b);
        assert_eq!(sorted_values(&a), ["from a", "from b"]);
        // A write that read both replaces both, and replication carries that to b.
        let context = a.context();
        a.update(&context, "merged", A).expect("counter");
        b.sync(&a);
        assert_eq!(sorted_values(&b), ["merged"]);
        assert_eq!(a, b);
    }

    #[test]
    fn sync_drops_a_value_the_other_replica_overwrote() {
        let mut a = DvvSet::new();
        a.update(&VersionVector::new(), "old", A).expect("counter");
        let mut b = a.clone();
        let context = b.context();
        b.update(&context, "new", B).expect("counter");
        a.sync(&b);
        assert_eq!(sorted_values(&a), ["new"]);
        assert_eq!(a.context(), VersionVector::from_iter([(A, 1), (B, 1)]));
    }

    #[test]
    fn context_from_another_replica_is_absorbed_into_the_history() {
        // A client read from b, which knows a write of a that this copy of a lacks.
        let mut a = DvvSet::new();
        let mut b = DvvSet::new();
        a.update(&VersionVector::new(), "first", A)
            .expect("counter");
        b.sync(&a);
        let mut stale_a: DvvSet<&str> = DvvSet::new();
        let context = b.context();
        let dot = stale_a.update(&context, "second", A).expect("counter");
        assert_eq!(
            dot,
            Dot {
                node: A,
                counter: 2
            },
            "the dot skips what the context saw"
        );
        b.sync(&stale_a);
        assert_eq!(sorted_values(&b), ["second"]);
    }

    #[test]
    fn discard_removes_seen_values_and_keeps_history() {
        let mut replica = DvvSet::new();
        replica
            .update(&VersionVector::new(), "x", A)
            .expect("counter");
        let context = replica.context();
        replica.discard(&context);
        assert!(replica.is_empty());
        assert_eq!(replica.context(), context);
    }

    #[test]
    fn absurd_context_counter_is_an_error_not_a_panic() {
        let mut replica = DvvSet::new();
        let context = VersionVector::from_iter([(A, u64::MAX)]);
        let before = replica.clone();
        assert_eq!(
            replica.update(&context, "x", A),
            Err(CounterOverflow { node: A })
        );
        assert_eq!(replica, before);
    }

    #[test]
    fn decode_refuses_more_values_than_dots() {
        let mut entries = BTreeMap::new();
        entries.insert(
            A,
            DvvEntry {
                counter: 1,
                values: vec![1u8, 2u8],
            },
        );
        let forged = DvvSet { entries };
        let bytes = synod_core::codec::encode(&forged);
        assert!(synod_core::codec::decode::<DvvSet<u8>>(&bytes).is_err());

        let mut good = DvvSet::new();
        good.update(&VersionVector::new(), 7u8, A).expect("counter");
        let bytes = synod_core::codec::encode(&good);
        assert_eq!(synod_core::codec::decode::<DvvSet<u8>>(&bytes), Ok(good));
    }

    #[test]
    fn version_vector_contains_every_dot_up_to_its_counter() {
        let mut context = VersionVector::new();
        context.add(Dot {
            node: B,
            counter: 3,
        });
        assert!(context.contains(Dot {
            node: B,
            counter: 1
        }));
        assert!(context.contains(Dot {
            node: B,
            counter: 3
        }));
        assert!(!context.contains(Dot {
            node: B,
            counter: 4
        }));
        assert!(!context.contains(Dot {
            node: A,
            counter: 1
        }));
    }
}

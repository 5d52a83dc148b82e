//! Property tests for the three hashing schemes: minimal movement and distinct replicas.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn ring_of(members: &BTreeSet<u32>, vnodes: u32) -> Ring<u32> {
    Ring::with_members(vnodes, members.iter().copied())
}

fn owner_changes(before: &Ring<u32>, after: &Ring<u32>, keys: &[u64]) -> Vec<(u64, u32, u32)> {
    keys.iter()
        .filter_map(|&k| {
            let (a, b) = (*before.owner(k)?, *after.owner(k)?);
            (a != b).then_some((k, a, b))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Karger et al. §4 (monotonicity): a new node takes keys only for itself, and the
    /// transfers the ring reports are exactly the keys that moved.
    #[test]
    fn adding_a_node_moves_keys_only_to_it(
        members in prop::collection::btree_set(0u32..1000, 1..12),
        new in 1000u32..2000,
        vnodes in 1u32..40,
        keys in prop::collection::vec(any::<u64>(), 200),
    ) {
        let before = ring_of(&members, vnodes);
        let mut after = before.clone();
        let transfers = after.add(new).unwrap();
        for (k, from, to) in owner_changes(&before, &after, &keys) {
            prop_assert_eq!(to, new, "key {} moved from {} to {}", k, from, to);
            prop_assert!(transfers.iter().any(|t| t.range.contains(k) && t.from == from));
        }
        for t in &transfers {
            prop_assert_eq!(t.to, new);
            prop_assert_eq!(before.owner(t.range.end), Some(&t.from));
            prop_assert_eq!(after.owner(t.range.end), Some(&new));
        }
        prop_assert_eq!(after.ranges_of(&new).len(), transfers.len());
    }

    /// Removing a node moves only the keys it owned, each to the next member clockwise.
    #[test]
    fn removing_a_node_moves_only_its_keys(
        members in prop::collection::btree_set(0u32..1000, 2..12),
        pick in any::<prop::sample::Index>(),
        vnodes in 1u32..40,
        keys in prop::collection::vec(any::<u64>(), 200),
    ) {
        let gone = *pick.get(&members.iter().copied().collect::<Vec<_>>());
        let before = ring_of(&members, vnodes);
        let mut after = before.clone();
        let transfers = after.remove(&gone).unwrap();
        for (k, from, to) in owner_changes(&before, &after, &keys) {
            prop_assert_eq!(from, gone, "key {} moved from {} to {}", k, from, to);
            prop_assert!(transfers.iter().any(|t| t.range.contains(k) && t.to == to));
        }
        for k in &keys {
            if before.owner(*k) == Some(&gone) {
                prop_assert!(transfers.iter().any(|t| t.range.contains(*k)));
            }
        }
        prop_assert!(!after.contains(&gone));
    }

    /// A preference list never names a node twice, and has min(n, members) entries; the
    /// zoned list covers distinct zones first.
    #[test]
    fn preference_lists_hold_distinct_nodes(
        members in prop::collection::btree_set(0u32..1000, 1..16),
        zones in 1u32..5,
        vnodes in 1u32..30,
        n in 0usize..8,
        h in any::<u64>(),
    ) {
        let mut ring = Ring::new(vnodes);
        for &m in &members {
            ring.add_with(m, NodeSpec::in_zone(format!("z{}", m % zones))).unwrap();
        }
        let list = ring.preference_list(h, n);
        prop_assert_eq!(list.len(), n.min(members.len()));
        prop_assert_eq!(list.iter().collect::<BTreeSet<_>>().len(), list.len());
        if let Some(first) = list.first() {
            prop_assert_eq!(Some(*first), ring.owner(h));
        }
        let zoned = ring.preference_list_zoned(h, n);
        prop_assert_eq!(zoned.len(), n.min(members.len()));
        prop_assert_eq!(zoned.iter().collect::<BTreeSet<_>>().len(), zoned.len());
        let present: BTreeSet<u32> = members.iter().map(|m| m % zones).collect();
        let distinct_zones: BTreeSet<u32> = zoned.iter().map(|&&m| m % zones).collect();
        prop_assert_eq!(distinct_zones.len(), zoned.len().min(present.len()));
    }

    /// The ranges of all members partition the ring, and every key in a member's range is
    /// owned by it.
    #[test]
    fn ranges_partition_the_ring(
        members in prop::collection::btree_set(0u32..1000, 1..10),
        vnodes in 1u32..20,
        keys in prop::collection::vec(any::<u64>(), 100),
    ) {
        let ring = ring_of(&members, vnodes);
        let total: u128 = ring.ranges().iter().map(|(r, _)| r.len()).sum();
        prop_assert_eq!(total, 1u128 << 64);
        for k in keys {
            let owner = ring.owner(k).unwrap();
            let holders: Vec<_> = ring.ranges().into_iter().filter(|(r, _)| r.contains(k)).collect();
            prop_assert_eq!(holders.len(), 1);
            prop_assert_eq!(holders[0].1, owner);
            prop_assert!(ring.ranges_of(owner).iter().any(|r| r.contains(k)));
        }
    }

    /// The ring depends on its members, not on the order they joined.
    #[test]
    fn ring_is_independent_of_join_order(
        members in prop::collection::vec(0u32..50, 1..20),
        keys in prop::collection::vec(any::<u64>(), 50),
    ) {
        let mut forward = Ring::new(8);
        let mut backward = Ring::new(8);
        for m in &members { let _ = forward.add(*m); }
        for m in members.iter().rev() { let _ = backward.add(*m); }
        for k in keys {
            prop_assert_eq!(forward.owner(k), backward.owner(k));
        }
    }

    /// Lamping & Veach §2: growing from n to n+1 buckets moves a key only to bucket n.
    #[test]
    fn jump_hash_moves_keys_only_to_the_new_bucket(key in any::<u64>(), n in 1u32..500) {
        let a = jump_hash(key, n);
        let b = jump_hash(key, n + 1);
        prop_assert!(a < n);
        prop_assert!(b == a || b == n);
    }

    /// Rendezvous: removing a node moves only its keys; adding one takes keys only for it.
    #[test]
    fn rendezvous_moves_only_the_changed_nodes_keys(
        nodes in prop::collection::btree_set(any::<u64>(), 2..20),
        extra in any::<u64>(),
        key in any::<u64>(),
    ) {
        prop_assume!(!nodes.contains(&extra));
        let list: Vec<u64> = nodes.iter().copied().collect();
        let owner = rendezvous(key, &list).unwrap();
        let mut without = list.clone();
        without.retain(|&n| n != list[0]);
        let after_remove = rendezvous(key, &without).unwrap();
        prop_assert!(after_remove == owner || owner == list[0]);
        let mut with = list.clone();
        with.push(extra);
        let after_add = rendezvous(key, &with).unwrap();
        prop_assert!(after_add == owner || after_add == extra);
        let weighted: Vec<(u64, f64)> = list.iter().map(|&n| (n, 1.0)).collect();
        prop_assert!(rendezvous_weighted(key, &weighted).is_some());
    }
}

#[test]
fn weights_give_proportional_shares() {
    let mut ring = Ring::new(200);
    ring.add_with(1u32, NodeSpec::default()).unwrap();
    ring.add_with(2u32, NodeSpec::default().with_weight(3.0))
        .unwrap();
    let share = ring.ownership();
    let heavy = share[&2];
    assert!((0.68..0.82).contains(&heavy), "weight 3 of 4 owns {heavy}");
    assert_eq!(
        ring.add_with(3, NodeSpec::default().with_weight(0.0)),
        Err(RingError::BadWeight(0.0))
    );
    assert!(matches!(ring.add(1), Err(RingError::AlreadyMember(_))));
    assert!(matches!(ring.remove(&9), Err(RingError::NotMember(_))));
}

#[test]
fn virtual_nodes_even_out_the_load() {
    // Chord §6.2: with more points per node, the most loaded node comes closer to the mean.
    let spread = |vnodes: u32| {
        let ring = Ring::with_members(vnodes, 0u32..100);
        let shares = ring.ownership();
        shares.values().cloned().fold(0.0, f64::max) * 100.0
    };
    let (one, many) = (spread(1), spread(256));
    assert!(many < 1.5, "max/mean with 256 vnodes is {many}");
    assert!(one > many, "1 vnode: {one}, 256 vnodes: {many}");
}

#[test]
fn weighted_rendezvous_follows_weights() {
    let nodes = [(1u64, 1.0), (2, 3.0), (3, 0.0)];
    let mut wins = [0u32; 4];
    for k in 0..20_000u64 {
        wins[rendezvous_weighted(k, &nodes).unwrap() as usize] += 1;
    }
    assert_eq!(wins[3], 0, "a zero weight never wins");
    let share = f64::from(wins[2]) / 20_000.0;
    assert!((0.72..0.78).contains(&share), "weight 3 of 4 won {share}");
}

#[test]
fn jump_hash_is_even() {
    let mut counts = [0u32; 10];
    for k in 0..100_000u64 {
        counts[jump_hash(hash_u64(k), 10) as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| (9_400..10_600).contains(&c)),
        "{counts:?}"
    );
    assert_eq!(jump_hash(5, 0), 0);
}

#[test]
fn a_single_point_owns_the_whole_ring() {
    let ring = Ring::with_members(1, [7u32]);
    let ranges = ring.ranges_of(&7);
    assert_eq!(ranges.len(), 1);
    assert!(ranges[0].is_full());
    assert!(ranges[0].contains(0) && ranges[0].contains(u64::MAX));
    assert_eq!(ring.owner(12345), Some(&7));
    let empty: Ring<u32> = Ring::new(4);
    assert_eq!(empty.owner(1), None);
    assert!(empty.preference_list(1, 3).is_empty());
}

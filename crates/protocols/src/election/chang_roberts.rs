//! # Chang–Roberts: extrema-finding on a unidirectional ring
//!
//! Algorithm (Chang & Roberts, "An Improved Algorithm for Decentralized Extrema-Finding in
//! Circular Configurations of Processes", CACM 22(5), 1979): any node may start an
//! election by marking itself a participant and sending `Election(own id)` to its
//! successor. A node receiving `Election(j)`:
//!
//! - forwards it if `j` is larger than its own id;
//! - if `j` is smaller, replaces it with `Election(own id)` unless it is already a
//!   participant, in which case it swallows the message;
//! - if `j` is its own id, the message went all the way round: it is the largest id, so it
//!   becomes leader and sends `Elected(own id)` round the ring.
//!
//! Messages: with all nodes initiating, N(N+1)/2 `Election` messages in the worst case
//! (ids decreasing along the ring), about N·H_N on average over ring orders, 2N−1 in the
//! best case (ids increasing), plus N `Elected` messages.
//!
//! Fault and timing model: asynchronous, reliable channels (FIFO not needed), no crashes,
//! a fixed ring. A crash breaks the ring; a real system must repair the ring (skip the
//! dead successor) and re-run the election, which is out of scope here.
//!
//! Once a node knows the leader it swallows every `Election` carrying a smaller id: such
//! a message is a straggler from the decided election (on a reordering network it can
//! arrive after `Elected`), and re-starting would cost another round.
//!
//! Invariants: only the largest id is ever elected; once every `Elected` has gone round,
//! every node believes in it.
//!
//! Differences from the chapter: the chapter's ring algorithm carries a candidate list
//! (see [`super::candidate_ring`], kept as the naive baseline); Chang–Roberts carries one
//! id and swallows smaller ones, which is what brings the average to O(N log N).

use super::ElectionCounters;
use serde::{Deserialize, Serialize};
use synod_core::{Actor, Ctx, Endpoint, NodeId};

/// Messages of Chang–Roberts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangRobertsMsg {
    /// The largest id seen so far by this message.
    Election(NodeId),
    /// The election is over; this is the leader.
    Elected(NodeId),
}

/// Timers of Chang–Roberts (none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangRobertsTimer {}

/// A node of a Chang–Roberts ring.
#[derive(Debug)]
pub struct ChangRoberts {
    ring: RingNode,
}

/// What a node of either ring election keeps: where its messages go, whether it starts an
/// election, and what it knows of the current one.
#[derive(Debug)]
pub(super) struct RingNode {
    pub(super) successor: NodeId,
    pub(super) initiate: bool,
    pub(super) participant: bool,
    pub(super) leader: Option<NodeId>,
    pub(super) counters: ElectionCounters,
}

impl RingNode {
    pub(super) fn new(me: NodeId, ring: &[NodeId], initiate: bool) -> Self {
        RingNode {
            successor: successor(ring, me),
            initiate,
            participant: false,
            leader: None,
            counters: ElectionCounters::default(),
        }
    }

    /// Every message of a ring election goes to the successor, and is counted.
    pub(super) fn send<M, T>(&mut self, ctx: &mut Ctx<'_, M, T>, msg: M) {
        self.counters.messages_sent += 1;
        ctx.send(self.successor, msg);
    }
}

/// `LeaderElection` for a ring election whose state is a [`RingNode`] in field `ring`.
macro_rules! ring_election_face {
    ($actor:ty) => {
        impl $crate::election::LeaderElection for $actor {
            fn leader(&self) -> Option<NodeId> {
                self.ring.leader
            }
            fn electing(&self) -> bool {
                self.ring.participant
            }
            fn counters(&self) -> $crate::election::ElectionCounters {
                self.ring.counters
            }
        }
    };
}
pub(super) use ring_election_face;

/// The successor of `me` in `ring` (the order messages travel), or `me` if it is absent.
pub fn successor(ring: &[NodeId], me: NodeId) -> NodeId {
    ring.iter()
        .position(|&n| n == me)
        .map_or(me, |i| ring[(i + 1) % ring.len()])
}

impl ChangRoberts {
    /// Node `me` on `ring` (the order messages travel). If `initiate`, it starts an
    /// election when it starts.
    pub fn new(me: NodeId, ring: &[NodeId], initiate: bool) -> Self {
        ChangRoberts {
            ring: RingNode::new(me, ring, initiate),
        }
    }

    /// Start an election (Chang & Roberts: any node, at any time before it is decided).
    pub fn start_election(&mut self, ctx: &mut Ctx<'_, ChangRobertsMsg, ChangRobertsTimer>) {
        if self.ring.participant {
            return;
        }
        self.ring.participant = true;
        self.ring.counters.elections_started += 1;
        self.ring.send(ctx, ChangRobertsMsg::Election(ctx.me()));
    }
}

ring_election_face!(ChangRoberts);

impl Actor for ChangRoberts {
    type Msg = ChangRobertsMsg;
    type Timer = ChangRobertsTimer;

    fn on_start(&mut self, ctx: &mut Ctx<'_, ChangRobertsMsg, ChangRobertsTimer>) {
        if self.ring.initiate {
            self.start_election(ctx);
        }
    }

    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, ChangRobertsMsg, ChangRobertsTimer>,
        from: Endpoint,
        msg: ChangRobertsMsg,
    ) {
        if !matches!(from, Endpoint::Node(_)) {
            return;
        }
        let me = ctx.me();
        match msg {
            // A straggler from a decided election: `j` lost to the known leader.
            ChangRobertsMsg::Election(j) if self.ring.leader.is_some_and(|leader| j < leader) => {}
            ChangRobertsMsg::Election(j) if j > me => {
                self.ring.participant = true;
                self.ring.send(ctx, ChangRobertsMsg::Election(j));
            }
            ChangRobertsMsg::Election(j) if j < me => {
                if !self.ring.participant {
                    self.ring.participant = true;
                    self.ring.send(ctx, ChangRobertsMsg::Election(me));
                }
            }
            ChangRobertsMsg::Election(_) => {
                // Our own id came back: nothing larger is on the ring.
                self.ring.participant = false;
                self.ring.leader = Some(me);
                self.ring.send(ctx, ChangRobertsMsg::Elected(me));
            }
            ChangRobertsMsg::Elected(leader) => {
                if leader != me {
                    self.ring.participant = false;
                    self.ring.leader = Some(leader);
                    self.ring.send(ctx, ChangRobertsMsg::Elected(leader));
                }
            }
        }
    }

    fn on_timer(
        &mut self,
        _ctx: &mut Ctx<'_, ChangRobertsMsg, ChangRobertsTimer>,
        timer: ChangRobertsTimer,
    ) {
        match timer {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::{ring_suite, run_ring, total_messages};
    use super::super::LeaderElection;
    use super::*;
    use synod_core::testing::{sent, TestNode};

    fn node(me: u32) -> TestNode<ChangRoberts> {
        let ring: Vec<NodeId> = (0..5).map(NodeId).collect();
        TestNode::new(NodeId(me), ChangRoberts::new(NodeId(me), &ring, false), 1)
    }

    /// Chang–Roberts: a larger id is forwarded, a smaller one is replaced by a
    /// non-participant and swallowed by a participant.
    #[test]
    fn chang_roberts_forwards_larger_and_swallows_smaller_ids() {
        let mut n = node(2);
        n.start();
        assert_eq!(
            sent(&n.deliver(NodeId(1), ChangRobertsMsg::Election(NodeId(4)))),
            vec![(NodeId(3), ChangRobertsMsg::Election(NodeId(4)))]
        );
        let mut n = node(2);
        n.start();
        assert_eq!(
            sent(&n.deliver(NodeId(1), ChangRobertsMsg::Election(NodeId(1)))),
            vec![(NodeId(3), ChangRobertsMsg::Election(NodeId(2)))]
        );
        assert!(sent(&n.deliver(NodeId(1), ChangRobertsMsg::Election(NodeId(0)))).is_empty());
    }

    /// A node whose own id comes back is the maximum and announces itself.
    #[test]
    fn chang_roberts_elects_the_node_whose_id_returns() {
        let mut n = node(4);
        n.start();
        assert_eq!(
            sent(&n.deliver(NodeId(3), ChangRobertsMsg::Election(NodeId(4)))),
            vec![(NodeId(0), ChangRobertsMsg::Elected(NodeId(4)))]
        );
        assert_eq!(n.actor.leader(), Some(NodeId(4)));
    }

    #[test]
    fn chang_roberts_elects_the_highest_id_on_any_ring() {
        ring_suite("chang_roberts", |me, ring, initiate| {
            ChangRoberts::new(me, ring, initiate)
        });
    }

    /// All nodes initiate: N(N+1)/2 election messages when ids decrease along the ring,
    /// 2N−1 when they increase, plus N `Elected` messages in both cases.
    #[test]
    fn chang_roberts_worst_case_is_quadratic_and_best_case_linear() {
        for n in [4u32, 8, 16, 32] {
            let decreasing: Vec<NodeId> = (0..n).rev().map(NodeId).collect();
            let sim = run_ring(3, decreasing, vec![true; n as usize], |me, ring, i| {
                ChangRoberts::new(me, ring, i)
            })
            .expect("run");
            assert_eq!(
                total_messages(&sim),
                u64::from(n * (n + 1) / 2 + n),
                "worst, N = {n}"
            );
            let increasing: Vec<NodeId> = (0..n).map(NodeId).collect();
            let sim = run_ring(3, increasing, vec![true; n as usize], |me, ring, i| {
                ChangRoberts::new(me, ring, i)
            })
            .expect("run");
            assert_eq!(
                total_messages(&sim),
                u64::from(2 * n - 1 + n),
                "best, N = {n}"
            );
        }
    }

    /// Chang & Roberts' average: over random ring orders with every node initiating, the
    /// expected number of `Election` messages is N·H_N (H_N the N-th harmonic number).
    #[test]
    fn chang_roberts_average_is_n_times_harmonic_n() {
        use rand::seq::SliceRandom;
        let n = 16u32;
        let rings = 60u64;
        let mut total = 0u64;
        for seed in 0..rings {
            let mut ring: Vec<NodeId> = (0..n).map(NodeId).collect();
            ring.shuffle(&mut synod_sim::stream_rng(seed, 9));
            let sim = run_ring(seed, ring, vec![true; n as usize], |me, ring, i| {
                ChangRoberts::new(me, ring, i)
            })
            .expect("run");
            // Subtract the N `Elected` messages.
            total += total_messages(&sim) - u64::from(n);
        }
        let average = total as f64 / rings as f64;
        let harmonic: f64 = (1..=n).map(|k| 1.0 / f64::from(k)).sum();
        let expected = f64::from(n) * harmonic;
        assert!(
            (average - expected).abs() < 0.15 * expected,
            "average {average}, N·H_N = {expected}"
        );
    }
}

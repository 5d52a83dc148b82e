//! # The chapter's candidate-list ring election (naive baseline)
//!
//! Algorithm (Le Lann, "Distributed Systems — Towards a Formal Approach", IFIP 1977; the
//! ring algorithm of the chapter's `RingElection`): an initiator sends a message holding
//! the list `[own id]` round the ring; every node appends its id and forwards it. When the
//! message returns to its initiator, the list holds every node, and the initiator picks
//! the largest id and sends `Coordinator(leader)` round the ring. Every initiator's
//! message goes all the way round, so with all N nodes initiating it costs 2N² messages
//! and messages of O(N) size: the baseline Chang–Roberts improves on.
//!
//! Fault and timing model: asynchronous, reliable channels, no crashes, a fixed ring.
//!
//! Invariants: every completed list holds every node, so every initiator announces the
//! same leader, the largest id.
//!
//! Differences from the chapter: in the chapter a node appends itself only if it is not
//! yet a participant. With two initiators, a node already taking part in one election is
//! missing from the other's list, so two initiators can announce *different* leaders (for
//! example, the largest node appended itself only to the first message it saw). Here every
//! node appends itself to every list, which makes the announcements agree. A list longer
//! than the ring, or one that already names this node, is malformed and dropped.

use super::chang_roberts::{ring_election_face, RingNode};
use serde::{Deserialize, Serialize};
use synod_core::{Actor, Ctx, Endpoint, NodeId};

/// Messages of the candidate-list ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CandidateRingMsg {
    /// An election started by `origin`, with every node it has passed so far.
    Election {
        /// The initiator.
        origin: NodeId,
        /// Ids appended so far, starting with the initiator's.
        candidates: Vec<NodeId>,
    },
    /// `origin`'s election finished with this leader.
    Coordinator {
        /// The initiator that announces.
        origin: NodeId,
        /// The largest id on the ring.
        leader: NodeId,
    },
}

/// Timers of the candidate-list ring (none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CandidateRingTimer {}

/// A node of the candidate-list ring.
#[derive(Debug)]
pub struct CandidateRing {
    ring: RingNode,
    ring_size: usize,
}

impl CandidateRing {
    /// Node `me` on `ring` (the order messages travel). If `initiate`, it starts an
    /// election when it starts.
    pub fn new(me: NodeId, ring: &[NodeId], initiate: bool) -> Self {
        CandidateRing {
            ring: RingNode::new(me, ring, initiate),
            ring_size: ring.len(),
        }
    }

    /// Start an election.
    pub fn start_election(&mut self, ctx: &mut Ctx<'_, CandidateRingMsg, CandidateRingTimer>) {
        self.ring.participant = true;
        self.ring.counters.elections_started += 1;
        let me = ctx.me();
        self.ring.send(
            ctx,
            CandidateRingMsg::Election {
                origin: me,
                candidates: vec![me],
            },
        );
    }
}

ring_election_face!(CandidateRing);

impl Actor for CandidateRing {
    type Msg = CandidateRingMsg;
    type Timer = CandidateRingTimer;

    fn on_start(&mut self, ctx: &mut Ctx<'_, CandidateRingMsg, CandidateRingTimer>) {
        if self.ring.initiate {
            self.start_election(ctx);
        }
    }

    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, CandidateRingMsg, CandidateRingTimer>,
        from: Endpoint,
        msg: CandidateRingMsg,
    ) {
        if !matches!(from, Endpoint::Node(_)) {
            return;
        }
        let me = ctx.me();
        match msg {
            CandidateRingMsg::Election { origin, candidates } if origin == me => {
                let Some(&leader) = candidates.iter().max() else {
                    return;
                };
                self.ring.participant = false;
                self.ring.leader = Some(leader);
                self.ring
                    .send(ctx, CandidateRingMsg::Coordinator { origin: me, leader });
            }
            CandidateRingMsg::Election {
                origin,
                mut candidates,
            } => {
                if candidates.len() >= self.ring_size || candidates.contains(&me) {
                    return;
                }
                self.ring.participant = true;
                candidates.push(me);
                self.ring
                    .send(ctx, CandidateRingMsg::Election { origin, candidates });
            }
            CandidateRingMsg::Coordinator { origin, leader } => {
                if origin != me {
                    self.ring.participant = false;
                    self.ring.leader = Some(leader);
                    self.ring
                        .send(ctx, CandidateRingMsg::Coordinator { origin, leader });
                }
            }
        }
    }

    fn on_timer(
        &mut self,
        _ctx: &mut Ctx<'_, CandidateRingMsg, CandidateRingTimer>,
        timer: CandidateRingTimer,
    ) {
        match timer {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::{ring_suite, run_ring, total_messages};
    use super::*;
    use synod_core::testing::{sent, TestNode};

    /// Every node appends itself to every list (the fix to the chapter's participant
    /// check), so every list that returns names every node.
    #[test]
    fn candidate_ring_appends_every_node_even_when_participating() {
        let ring: Vec<NodeId> = (0..4).map(NodeId).collect();
        let mut n = TestNode::new(NodeId(2), CandidateRing::new(NodeId(2), &ring, true), 1);
        n.start();
        let out = sent(&n.deliver(
            NodeId(1),
            CandidateRingMsg::Election {
                origin: NodeId(0),
                candidates: vec![NodeId(0), NodeId(1)],
            },
        ));
        assert_eq!(
            out,
            vec![(
                NodeId(3),
                CandidateRingMsg::Election {
                    origin: NodeId(0),
                    candidates: vec![NodeId(0), NodeId(1), NodeId(2)]
                }
            )]
        );
    }

    #[test]
    fn candidate_ring_elects_the_highest_id_on_any_ring() {
        ring_suite("candidate_ring", |me, ring, initiate| {
            CandidateRing::new(me, ring, initiate)
        });
    }

    /// Every initiator's list and announcement go all the way round: 2N per initiator.
    #[test]
    fn candidate_ring_costs_two_n_messages_per_initiator() {
        for n in [4u32, 8, 16] {
            let ring: Vec<NodeId> = (0..n).map(NodeId).collect();
            let sim = run_ring(3, ring, vec![true; n as usize], |me, ring, i| {
                CandidateRing::new(me, ring, i)
            })
            .expect("run");
            assert_eq!(total_messages(&sim), u64::from(2 * n * n), "N = {n}");
        }
    }
}

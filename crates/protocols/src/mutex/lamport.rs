//! # Lamport's mutual exclusion: a replicated request queue ordered by timestamps
//!
//! Algorithm (Lamport, "Time, Clocks, and the Ordering of Events in a Distributed
//! System", CACM 21(7), 1978, the mutual-exclusion example of §3, rules 1–5):
//!
//! 1. To request, a node stamps `Request(T)` with its clock, puts it on its own request
//!    queue and sends it to every other node.
//! 2. A node receiving `Request(T)` puts it on its queue and sends back a timestamped
//!    `Ack`.
//! 3. To release, a node removes its request from its queue and sends a timestamped
//!    `Release` to every other node.
//! 4. A node receiving `Release` removes that node's request from its queue.
//! 5. A node enters when (i) its request is first in its queue under the total order `⇒`
//!    and (ii) it has received from every other node a message stamped later than its
//!    request.
//!
//! 3(N−1) messages per entry; synchronization delay one message.
//!
//! Fault and timing model: the paper's. Channels are reliable and **FIFO** (rule 5(ii)
//! is unsound without FIFO: a later-stamped ack could overtake an earlier request), no
//! crashes. FIFO is provided here by numbering messages per link and delivering them in
//! order ([`FifoLinks`]), so the actor is safe on a reordering network too. A crash blocks every other node forever (each waits for the crashed node's
//! message); the paper leaves failures to a separate mechanism.
//!
//! Invariant: mutual exclusion. Every node's queue holds the same requests in the same
//! total order once messages settle, and rule 5(ii) guarantees that an entering node has
//! seen every request that could precede its own.
//!
//! Differences from the chapter: the chapter has no sketch of this algorithm. The paper's
//! optimisation of omitting an ack when a later message was already sent is not applied,
//! so the message count matches the textbook 3(N−1).

use super::{client_face, ClientMsg, ClientQueue, FifoLinks, MutexCounters};
use crate::clocks::{LamportClock, LamportTimestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use synod_core::{Actor, Ctx, Endpoint, NodeId};

/// Messages of Lamport's algorithm. Every message carries its sender's timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LamportMsg {
    /// Between a client and its node.
    Client(ClientMsg),
    /// Rule 1: a request stamped so.
    Request(LamportTimestamp),
    /// Rule 2: acknowledgement, stamped with the acknowledger's clock.
    Ack(LamportTimestamp),
    /// Rule 3: the sender released `request`; `stamp` is the release event's time.
    Release {
        /// The request being withdrawn.
        request: LamportTimestamp,
        /// The release event's timestamp.
        stamp: LamportTimestamp,
    },
    /// Node → node: one of the messages above, numbered for FIFO delivery per link.
    Sequenced {
        /// Position among the messages from the sender to the receiver, from 0.
        seq: u64,
        /// The message.
        #[serde(deserialize_with = "synod_core::codec::nested")]
        msg: Box<LamportMsg>,
    },
}

/// Timers of Lamport's algorithm (none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LamportTimer {}

/// A node of Lamport's algorithm.
#[derive(Debug)]
pub struct LamportMutex {
    peers: Vec<NodeId>,
    clock: LamportClock,
    clients: ClientQueue,
    queue: BTreeSet<LamportTimestamp>,
    latest: BTreeMap<NodeId, LamportTimestamp>,
    request: Option<LamportTimestamp>,
    in_critical_section: bool,
    counters: MutexCounters,
    links: FifoLinks<LamportMsg>,
}

impl LamportMutex {
    /// Node `me` among `nodes` (which may include `me`).
    pub fn new(me: NodeId, nodes: impl IntoIterator<Item = NodeId>) -> Self {
        LamportMutex {
            peers: nodes.into_iter().filter(|&n| n != me).collect(),
            clock: LamportClock::new(me),
            clients: ClientQueue::default(),
            queue: BTreeSet::new(),
            latest: BTreeMap::new(),
            request: None,
            in_critical_section: false,
            counters: MutexCounters::default(),
            links: FifoLinks::default(),
        }
    }

    /// This node's copy of the request queue, in `⇒` order.
    pub fn queue(&self) -> impl Iterator<Item = LamportTimestamp> + '_ {
        self.queue.iter().copied()
    }

    /// The timestamp of this node's outstanding request.
    pub fn request(&self) -> Option<LamportTimestamp> {
        self.request
    }

    fn broadcast(&mut self, ctx: &mut Ctx<'_, LamportMsg, LamportTimer>, msg: LamportMsg) {
        for peer in self.peers.clone() {
            self.send(ctx, peer, msg.clone());
        }
    }

    fn send(&mut self, ctx: &mut Ctx<'_, LamportMsg, LamportTimer>, to: NodeId, msg: LamportMsg) {
        self.counters.messages_sent += 1;
        let seq = self.links.next_seq(to);
        ctx.send(
            to,
            LamportMsg::Sequenced {
                seq,
                msg: Box::new(msg),
            },
        );
    }

    fn heard(&mut self, node: NodeId, stamp: LamportTimestamp) {
        self.clock.observe(stamp);
        let latest = self.latest.entry(node).or_insert(stamp);
        *latest = (*latest).max(stamp);
    }

    fn maybe_enter(&mut self, ctx: &mut Ctx<'_, LamportMsg, LamportTimer>) {
        let Some(mine) = self.request else { return };
        if self.in_critical_section {
            return;
        }
        let first = self.queue.first() == Some(&mine);
        let heard_later = self
            .peers
            .iter()
            .all(|p| self.latest.get(p).is_some_and(|&t| t > mine));
        if first && heard_later {
            if let Some(client) = self.clients.enter() {
                self.in_critical_section = true;
                self.counters.entries += 1;
                ctx.reply(client, LamportMsg::Client(ClientMsg::Granted));
            }
        }
    }

    fn start_request(&mut self, ctx: &mut Ctx<'_, LamportMsg, LamportTimer>) {
        let stamp = self.clock.tick();
        self.request = Some(stamp);
        self.queue.insert(stamp);
        self.broadcast(ctx, LamportMsg::Request(stamp));
        self.maybe_enter(ctx);
    }
}

client_face!(LamportMutex, LamportMsg);

impl Actor for LamportMutex {
    type Msg = LamportMsg;
    type Timer = LamportTimer;

    fn on_start(&mut self, _ctx: &mut Ctx<'_, LamportMsg, LamportTimer>) {}

    // The arms' conditions mutate state (client queues, custody), which reads better in
    // the arm's body than in a match guard.
    #[allow(clippy::collapsible_match)]
    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, LamportMsg, LamportTimer>,
        from: Endpoint,
        msg: LamportMsg,
    ) {
        match (from, msg) {
            (Endpoint::Client(client), LamportMsg::Client(ClientMsg::Acquire)) => {
                if self.clients.push(client) {
                    self.start_request(ctx);
                }
            }
            (Endpoint::Client(client), LamportMsg::Client(ClientMsg::Release)) => {
                if self.in_critical_section && self.clients.release(client) {
                    self.in_critical_section = false;
                    if let Some(request) = self.request.take() {
                        self.queue.remove(&request);
                        let stamp = self.clock.tick();
                        self.broadcast(ctx, LamportMsg::Release { request, stamp });
                    }
                    if self.clients.has_waiting() {
                        self.start_request(ctx);
                    }
                }
            }
            (Endpoint::Node(node), LamportMsg::Sequenced { seq, msg }) => {
                for msg in self.links.accept(node, seq, *msg) {
                    // One level only: a nested wrapper is malformed.
                    if !matches!(msg, LamportMsg::Sequenced { .. } | LamportMsg::Client(_)) {
                        self.on_message(ctx, Endpoint::Node(node), msg);
                    }
                }
            }
            (Endpoint::Node(node), LamportMsg::Request(stamp)) if stamp.node == node => {
                self.heard(node, stamp);
                self.queue.insert(stamp);
                let ack = self.clock.tick();
                self.send(ctx, node, LamportMsg::Ack(ack));
                self.maybe_enter(ctx);
            }
            (Endpoint::Node(node), LamportMsg::Ack(stamp)) if stamp.node == node => {
                self.heard(node, stamp);
                self.maybe_enter(ctx);
            }
            (Endpoint::Node(node), LamportMsg::Release { request, stamp })
                if stamp.node == node && request.node == node =>
            {
                self.heard(node, stamp);
                self.queue.remove(&request);
                self.maybe_enter(ctx);
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, _ctx: &mut Ctx<'_, LamportMsg, LamportTimer>, timer: LamportTimer) {
        match timer {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::{
        fifo_lan, messages_per_entry, reordering_lan, replay, run_mutex, Load,
    };
    use super::*;
    use crate::mutex::MutualExclusion;
    use synod_core::testing::TestNode;
    use synod_core::ClientId;
    use synod_sim::assert_seeds;

    /// A peer that wraps envelopes in envelopes gets a decode error, not an aborted
    /// process (the driver drops and counts the message).
    #[test]
    fn envelopes_nested_beyond_the_bound_do_not_decode() {
        // Sequenced is variant 4, then seq 0; the innermost message is an Ack at (0, 0).
        let levels = 100_000;
        let mut bytes = [4u8, 0].repeat(levels);
        bytes.extend([2, 0, 0]);
        assert!(synod_core::codec::decode::<LamportMsg>(&bytes).is_err());
        let one = LamportMsg::Sequenced {
            seq: 7,
            msg: Box::new(LamportMsg::Ack(LamportTimestamp::default())),
        };
        let bytes = synod_core::codec::encode(&one);
        assert_eq!(synod_core::codec::decode::<LamportMsg>(&bytes), Ok(one));
    }

    /// The messages sent, without their FIFO wrappers.
    fn sent(effects: &[synod_core::Effect<LamportMsg, LamportTimer>]) -> Vec<(NodeId, LamportMsg)> {
        synod_core::testing::sent(effects)
            .into_iter()
            .map(|(to, msg)| match msg {
                LamportMsg::Sequenced { msg, .. } => (to, *msg),
                other => (to, other),
            })
            .collect()
    }

    fn node(me: u32, n: u32) -> TestNode<LamportMutex> {
        let mut t = TestNode::new(
            NodeId(me),
            LamportMutex::new(NodeId(me), (0..n).map(NodeId)),
            1,
        );
        t.start();
        t
    }

    fn stamp(time: u64, node: u32) -> LamportTimestamp {
        LamportTimestamp {
            time,
            node: NodeId(node),
        }
    }

    /// Rule 2: every request is queued and acknowledged with a later timestamp.
    #[test]
    fn lamport_queues_and_acknowledges_every_request() {
        let mut n = node(0, 3);
        let out = sent(&n.deliver(NodeId(1), LamportMsg::Request(stamp(4, 1))));
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], (NodeId(1), LamportMsg::Ack(t)) if t > stamp(4, 1)));
        assert_eq!(n.actor.queue().collect::<Vec<_>>(), vec![stamp(4, 1)]);
    }

    /// Rule 5: a node whose request is not first in its queue does not enter, even with
    /// later-stamped messages from everyone; it enters once the earlier request is released.
    #[test]
    fn lamport_enters_only_at_the_head_of_the_queue_after_hearing_later_from_all() {
        let mut n = node(0, 3);
        n.deliver(NodeId(1), LamportMsg::Request(stamp(1, 1)));
        n.deliver(ClientId(0), LamportMutex::acquire_request());
        let mine = n.actor.request().expect("requesting");
        assert!(mine > stamp(1, 1));
        n.deliver(NodeId(1), LamportMsg::Ack(stamp(mine.time + 1, 1)));
        assert!(!n.actor.in_critical_section(), "node 2 has not answered");
        n.deliver(NodeId(2), LamportMsg::Ack(stamp(mine.time + 1, 2)));
        assert!(
            !n.actor.in_critical_section(),
            "node 1's request is first (rule 5(i))"
        );
        n.deliver(
            NodeId(1),
            LamportMsg::Release {
                request: stamp(1, 1),
                stamp: stamp(mine.time + 2, 1),
            },
        );
        assert!(n.actor.in_critical_section());
        let out = sent(&n.deliver(ClientId(0), LamportMutex::release_request()));
        assert_eq!(out.len(), 2, "rule 3: release goes to every other node");
        assert_eq!(n.actor.queue().count(), 0);
    }

    fn factory(n: u32) -> impl FnMut(NodeId) -> LamportMutex {
        move |me| LamportMutex::new(me, (0..n).map(NodeId))
    }

    /// Safety and liveness under contention on a reordering network (FIFO restored per
    /// link by [`FifoLinks`]).
    #[test]
    fn lamport_keeps_mutual_exclusion_and_grants_every_request() {
        assert_seeds(
            0..100,
            |seed| {
                let n = 2 + (seed % 5) as u32;
                run_mutex(seed, n, 4, Load::Heavy, reordering_lan(), factory(n)).map(|_| ())
            },
            replay("lamport"),
        );
    }

    /// Light load: exactly 3(N−1) messages per entry.
    #[test]
    fn lamport_uses_three_n_minus_one_messages_per_entry() {
        for n in [3u32, 5, 9] {
            let sim = run_mutex(7, n, 2, Load::Sequential, fifo_lan(), factory(n)).expect("run");
            assert_eq!(messages_per_entry(&sim), f64::from(3 * (n - 1)), "N = {n}");
        }
    }
}

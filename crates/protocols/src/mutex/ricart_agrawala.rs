//! # Ricart–Agrawala: permission from every other node, with Lamport timestamps
//!
//! Algorithm (Ricart & Agrawala, "An Optimal Algorithm for Mutual Exclusion in Computer
//! Networks", CACM 24(1), 1981, §2): a node that wants the section stamps a `Request` with
//! its Lamport clock and sends it to the N−1 others. A node receiving a request replies at
//! once unless it is in the section or is itself requesting with a smaller (earlier)
//! timestamp, `(time, node)` ordered totally; then it defers the reply until it leaves.
//! A node enters once it holds N−1 replies. 2(N−1) messages per entry, synchronization
//! delay one message.
//!
//! Fault and timing model: asynchronous, reliable channels (no loss; FIFO is *not*
//! needed), no crashes. A crashed node never replies, so every other requester blocks;
//! the remedy the literature gives is a failure detector that excludes the crashed node
//! from the set of nodes to wait for (and a rejoin protocol). That is documented, not
//! implemented: with crashes this actor stays safe but may block.
//!
//! Invariant: mutual exclusion. Two concurrent requesters both see each other's request;
//! exactly one of them (the smaller timestamp) defers, so they cannot both hold N−1
//! replies.
//!
//! Differences from the chapter's sketch: the chapter never advances its clock on receipt
//! (rule IR2), so timestamps do not respect causality, and it compares `request_timestamp
//! == 0` as "not requesting"; here [`LamportClock`] does both rules and the requesting
//! state is explicit.

use super::{ClientMsg, ClientQueue, MutexCounters, MutualExclusion};
use crate::clocks::{LamportClock, LamportTimestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use synod_core::{Actor, Ctx, Endpoint, NodeId};

/// Messages of Ricart–Agrawala.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RicartAgrawalaMsg {
    /// Between a client and its node.
    Client(ClientMsg),
    /// "I want the section; my request is stamped so."
    Request(LamportTimestamp),
    /// Permission for the request stamped so.
    Reply(LamportTimestamp),
}

/// Timers of Ricart–Agrawala (none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RicartAgrawalaTimer {}

/// A node of Ricart–Agrawala.
#[derive(Debug)]
pub struct RicartAgrawala {
    peers: Vec<NodeId>,
    clock: LamportClock,
    clients: ClientQueue,
    request: Option<LamportTimestamp>,
    replies: BTreeSet<NodeId>,
    deferred: BTreeSet<(NodeId, LamportTimestamp)>,
    in_critical_section: bool,
    counters: MutexCounters,
}

impl RicartAgrawala {
    /// Node `me` among `nodes` (which may include `me`).
    pub fn new(me: NodeId, nodes: impl IntoIterator<Item = NodeId>) -> Self {
        RicartAgrawala {
            peers: nodes.into_iter().filter(|&n| n != me).collect(),
            clock: LamportClock::new(me),
            clients: ClientQueue::default(),
            request: None,
            replies: BTreeSet::new(),
            deferred: BTreeSet::new(),
            in_critical_section: false,
            counters: MutexCounters::default(),
        }
    }

    /// The timestamp of this node's outstanding request.
    pub fn request(&self) -> Option<LamportTimestamp> {
        self.request
    }

    /// Nodes whose replies this node is deferring.
    pub fn deferred(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.deferred.iter().map(|(n, _)| *n)
    }

    fn start_request(&mut self, ctx: &mut Ctx<'_, RicartAgrawalaMsg, RicartAgrawalaTimer>) {
        let stamp = self.clock.tick();
        self.request = Some(stamp);
        self.replies.clear();
        self.counters.messages_sent += self.peers.len() as u64;
        ctx.send_all(self.peers.clone(), RicartAgrawalaMsg::Request(stamp));
        self.maybe_enter(ctx);
    }

    fn maybe_enter(&mut self, ctx: &mut Ctx<'_, RicartAgrawalaMsg, RicartAgrawalaTimer>) {
        if self.request.is_some()
            && !self.in_critical_section
            && self.replies.len() == self.peers.len()
        {
            if let Some(client) = self.clients.enter() {
                self.in_critical_section = true;
                self.counters.entries += 1;
                ctx.reply(client, RicartAgrawalaMsg::Client(ClientMsg::Granted));
            }
        }
    }
}

impl MutualExclusion for RicartAgrawala {
    fn acquire_request() -> RicartAgrawalaMsg {
        RicartAgrawalaMsg::Client(ClientMsg::Acquire)
    }
    fn release_request() -> RicartAgrawalaMsg {
        RicartAgrawalaMsg::Client(ClientMsg::Release)
    }
    fn is_granted(msg: &RicartAgrawalaMsg) -> bool {
        *msg == RicartAgrawalaMsg::Client(ClientMsg::Granted)
    }
    fn in_critical_section(&self) -> bool {
        self.in_critical_section
    }
    fn counters(&self) -> MutexCounters {
        self.counters
    }
}

impl Actor for RicartAgrawala {
    type Msg = RicartAgrawalaMsg;
    type Timer = RicartAgrawalaTimer;

    fn on_start(&mut self, _ctx: &mut Ctx<'_, RicartAgrawalaMsg, RicartAgrawalaTimer>) {}

    // The arms' conditions mutate state (client queues, custody), which reads better in
    // the arm's body than in a match guard.
    #[allow(clippy::collapsible_match)]
    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, RicartAgrawalaMsg, RicartAgrawalaTimer>,
        from: Endpoint,
        msg: RicartAgrawalaMsg,
    ) {
        match (from, msg) {
            (Endpoint::Client(client), RicartAgrawalaMsg::Client(ClientMsg::Acquire)) => {
                if self.clients.push(client) {
                    self.start_request(ctx);
                }
            }
            (Endpoint::Client(client), RicartAgrawalaMsg::Client(ClientMsg::Release)) => {
                if self.in_critical_section && self.clients.release(client) {
                    self.in_critical_section = false;
                    self.request = None;
                    // §2: on exit, send every deferred reply.
                    for (node, stamp) in std::mem::take(&mut self.deferred) {
                        self.counters.messages_sent += 1;
                        ctx.send(node, RicartAgrawalaMsg::Reply(stamp));
                    }
                    if self.clients.has_waiting() {
                        self.start_request(ctx);
                    }
                }
            }
            (Endpoint::Node(node), RicartAgrawalaMsg::Request(stamp)) if stamp.node == node => {
                self.clock.observe(stamp);
                // Defer while inside, or while our own pending request is earlier (§2).
                let defer =
                    self.in_critical_section || self.request.is_some_and(|mine| mine < stamp);
                if defer {
                    self.deferred.insert((node, stamp));
                } else {
                    self.counters.messages_sent += 1;
                    ctx.send(node, RicartAgrawalaMsg::Reply(stamp));
                }
            }
            (Endpoint::Node(node), RicartAgrawalaMsg::Reply(stamp)) => {
                // A reply counts only for the request it answers.
                if self.request == Some(stamp) {
                    self.replies.insert(node);
                    self.maybe_enter(ctx);
                }
            }
            _ => {}
        }
    }

    fn on_timer(
        &mut self,
        _ctx: &mut Ctx<'_, RicartAgrawalaMsg, RicartAgrawalaTimer>,
        timer: RicartAgrawalaTimer,
    ) {
        match timer {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::{fifo_lan, messages_per_entry, replay, run_mutex, Load};
    use super::*;
    use synod_core::testing::{sent, TestNode};
    use synod_core::ClientId;
    use synod_sim::{assert_seeds, NetConfig};

    fn node(me: u32, n: u32) -> TestNode<RicartAgrawala> {
        let mut t = TestNode::new(
            NodeId(me),
            RicartAgrawala::new(NodeId(me), (0..n).map(NodeId)),
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

    /// §2: a requesting node defers its reply to a request with a later timestamp.
    #[test]
    fn ricart_agrawala_defers_reply_to_later_timestamp() {
        let mut n = node(0, 3);
        let out = n.deliver(ClientId(0), RicartAgrawala::acquire_request());
        assert_eq!(sent(&out).len(), 2, "request goes to the N−1 others");
        let mine = n.actor.request().expect("requesting");
        let later = stamp(mine.time + 5, 1);
        assert!(sent(&n.deliver(NodeId(1), RicartAgrawalaMsg::Request(later))).is_empty());
        assert_eq!(n.actor.deferred().collect::<Vec<_>>(), vec![NodeId(1)]);
    }

    /// §2: a requesting node replies at once to an earlier request, ties broken by node id.
    #[test]
    fn ricart_agrawala_replies_at_once_to_earlier_timestamp() {
        let mut n = node(2, 3);
        n.deliver(ClientId(2), RicartAgrawala::acquire_request());
        let mine = n.actor.request().expect("requesting");
        let tie = stamp(mine.time, 1);
        assert_eq!(
            sent(&n.deliver(NodeId(1), RicartAgrawalaMsg::Request(tie))),
            vec![(NodeId(1), RicartAgrawalaMsg::Reply(tie))]
        );
    }

    /// A node enters after N−1 replies and sends its deferred replies on exit.
    #[test]
    fn ricart_agrawala_enters_after_all_replies_and_releases_deferred() {
        let mut n = node(0, 3);
        n.deliver(ClientId(0), RicartAgrawala::acquire_request());
        let mine = n.actor.request().expect("requesting");
        n.deliver(NodeId(1), RicartAgrawalaMsg::Reply(mine));
        assert!(!n.actor.in_critical_section());
        // A stale reply for another request does not count.
        n.deliver(NodeId(2), RicartAgrawalaMsg::Reply(stamp(99, 0)));
        assert!(!n.actor.in_critical_section());
        n.deliver(NodeId(2), RicartAgrawalaMsg::Reply(mine));
        assert!(n.actor.in_critical_section());
        let other = stamp(1, 2);
        assert!(sent(&n.deliver(NodeId(2), RicartAgrawalaMsg::Request(other))).is_empty());
        let out = n.deliver(ClientId(0), RicartAgrawala::release_request());
        assert_eq!(
            sent(&out),
            vec![(NodeId(2), RicartAgrawalaMsg::Reply(other))]
        );
    }

    fn factory(n: u32) -> impl FnMut(NodeId) -> RicartAgrawala {
        move |me| RicartAgrawala::new(me, (0..n).map(NodeId))
    }

    /// Safety and liveness under contention on a reordering network (no FIFO needed).
    #[test]
    fn ricart_agrawala_keeps_mutual_exclusion_and_grants_every_request() {
        assert_seeds(
            0..100,
            |seed| {
                let n = 3 + (seed % 4) as u32;
                let mut net = NetConfig::lan();
                net.reorder = 0.2;
                run_mutex(seed, n, 4, Load::Heavy, net, factory(n)).map(|_| ())
            },
            replay("ricart_agrawala"),
        );
    }

    /// Light load: exactly 2(N−1) messages per entry (§3).
    #[test]
    fn ricart_agrawala_uses_two_n_minus_one_messages_per_entry() {
        for n in [3u32, 5, 9] {
            let sim = run_mutex(7, n, 2, Load::Sequential, fifo_lan(), factory(n)).expect("run");
            assert_eq!(messages_per_entry(&sim), f64::from(2 * (n - 1)), "N = {n}");
        }
    }

    /// The documented crash behaviour: without a failure detector a crashed node never
    /// replies, so every request blocks, but mutual exclusion still holds.
    #[test]
    fn ricart_agrawala_blocks_but_stays_safe_when_a_node_crashes() {
        use super::super::harness::{mutual_exclusion, MutexWorkload};
        use synod_sim::{Sim, SimConfig};
        let mut sim = Sim::new(SimConfig::new(3, 4), factory(4));
        sim.crash(NodeId(3));
        sim.set_workload(MutexWorkload::<RicartAgrawala>::new(Load::Heavy, 3, 2));
        sim.invariant("mutual exclusion", mutual_exclusion::<RicartAgrawala>);
        sim.run_for(std::time::Duration::from_secs(2))
            .expect("safe");
        let entries: u64 = sim.actors().map(|(_, a)| a.counters().entries).sum();
        assert_eq!(
            entries, 0,
            "nobody can collect a reply from the crashed node"
        );
    }

    /// The same seed gives the same run, event for event.
    #[test]
    fn ricart_agrawala_runs_are_deterministic() {
        use super::super::harness::MutexWorkload;
        use synod_sim::{Sim, SimConfig};
        let hash = |seed| {
            let mut cfg = SimConfig::new(seed, 5);
            cfg.net.reorder = 0.2;
            let mut sim = Sim::new(cfg, factory(5));
            sim.trace_hash_only();
            sim.set_workload(MutexWorkload::<RicartAgrawala>::new(Load::Heavy, 5, 5));
            sim.run_for(std::time::Duration::from_secs(1))
                .expect("runs");
            sim.trace_hash()
        };
        assert_eq!(hash(11), hash(11));
        assert_ne!(hash(11), hash(12));
    }
}

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
//! needed), no crashes. A crashed node never replies, so every other requester blocks
//! ([`RicartAgrawala::new`]: safe, but stuck after a crash).
//!
//! ## Crashes: a failure detector ([`RicartAgrawala::with_failure_detector`])
//!
//! The paper assumes nodes do not fail. The usual remedy is to exclude a crashed node
//! from the set waited for, with a timeout-based failure detector (in the sense of
//! Chandra & Toueg, "Unreliable Failure Detectors for Reliable Distributed Systems",
//! JACM 43(2), 1996, which is *perfect* in a synchronous model):
//!
//! - every node sends `Alive` to every other every `heartbeat_interval`; any message
//!   counts as a sign of life;
//! - a node silent for `suspect_after` is *suspected*: a requester no longer waits for its
//!   reply (a crashed node cannot be in the section: it lost its state with the crash);
//! - rejoin: a node that (re)starts announces `Rejoin`. A requester that hears `Rejoin`
//!   (or anything from a suspected node) forgets any reply the node gave before its crash
//!   and sends it the outstanding `Request` again, so the node's fresh incarnation takes
//!   part in the comparison of timestamps as if it had never left.
//!
//! Safety then rests on the detector never suspecting a live node, i.e. on message delay
//! plus a heartbeat interval staying below `suspect_after` (the synchronous model). A pause
//! or partition longer than that can let two nodes in at once: that is the price of
//! progress with crashes, and why the suites test crashes on a network with bounded
//! delay only. Heartbeats are not counted in [`MutexCounters::messages_sent`], so the
//! 2(N−1) per entry still holds.
//!
//! Invariant: mutual exclusion. Two concurrent requesters both see each other's request;
//! exactly one of them (the smaller timestamp) defers, so they cannot both hold N−1
//! replies.
//!
//! Differences from the chapter's sketch: the chapter never advances its clock on receipt
//! (rule IR2), so timestamps do not respect causality, and it compares `request_timestamp
//! == 0` as "not requesting"; here [`LamportClock`] does both rules and the requesting
//! state is explicit.

use super::{client_face, ClientMsg, ClientQueue, MutexCounters};
use crate::clocks::{LamportClock, LamportTimestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use synod_core::{Actor, Ctx, Endpoint, Instant, NodeId};

/// Messages of Ricart–Agrawala.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RicartAgrawalaMsg {
    /// Between a client and its node.
    Client(ClientMsg),
    /// "I want the section; my request is stamped so."
    Request(LamportTimestamp),
    /// Permission for the request stamped so.
    Reply(LamportTimestamp),
    /// Failure detector heartbeat.
    Alive,
    /// "I have (re)started with no memory of earlier requests."
    Rejoin,
}

/// Timers of Ricart–Agrawala (only with a failure detector).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RicartAgrawalaTimer {
    /// Send `Alive` to every other node.
    Heartbeat,
    /// Suspect the nodes silent for too long.
    Suspect,
}

/// A timeout-based failure detector's timing. Sound only when message delay plus
/// `heartbeat_interval` stays below `suspect_after` (a synchronous network).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureDetectorConfig {
    /// How often a node sends `Alive`.
    pub heartbeat_interval: Duration,
    /// How long a node may stay silent before it is suspected.
    pub suspect_after: Duration,
}

impl Default for FailureDetectorConfig {
    fn default() -> Self {
        FailureDetectorConfig {
            heartbeat_interval: Duration::from_millis(10),
            suspect_after: Duration::from_millis(50),
        }
    }
}

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
    detector: Option<FailureDetectorConfig>,
    last_heard: BTreeMap<NodeId, Instant>,
    suspected: BTreeSet<NodeId>,
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
            detector: None,
            last_heard: BTreeMap::new(),
            suspected: BTreeSet::new(),
        }
    }

    /// Node `me` among `nodes`, excluding crashed nodes with a timeout-based failure
    /// detector (see the module docs for when that is safe).
    pub fn with_failure_detector(
        me: NodeId,
        nodes: impl IntoIterator<Item = NodeId>,
        detector: FailureDetectorConfig,
    ) -> Self {
        RicartAgrawala {
            detector: Some(detector),
            ..RicartAgrawala::new(me, nodes)
        }
    }

    /// Nodes the failure detector suspects of having crashed.
    pub fn suspected(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.suspected.iter().copied()
    }

    /// A sign of life from `node`: it is no longer suspected. If it was, or if it says it
    /// restarted, it knows nothing of our outstanding request: send it again, and forget
    /// a reply its earlier incarnation gave.
    fn heard_from(
        &mut self,
        ctx: &mut Ctx<'_, RicartAgrawalaMsg, RicartAgrawalaTimer>,
        node: NodeId,
        restarted: bool,
    ) {
        if self.detector.is_none() || !self.peers.contains(&node) {
            return;
        }
        self.last_heard.insert(node, ctx.now());
        let was_suspected = self.suspected.remove(&node);
        // Deferred replies to its earlier incarnation stay: a `Rejoin` can overtake the
        // new incarnation's first request, and a stale reply is ignored anyway.
        if (was_suspected || restarted) && !self.in_critical_section {
            if let Some(stamp) = self.request {
                self.replies.remove(&node);
                self.counters.messages_sent += 1;
                ctx.send(node, RicartAgrawalaMsg::Request(stamp));
            }
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
            && self
                .peers
                .iter()
                .all(|p| self.replies.contains(p) || self.suspected.contains(p))
        {
            if let Some(client) = self.clients.enter() {
                self.in_critical_section = true;
                self.counters.entries += 1;
                ctx.reply(client, RicartAgrawalaMsg::Client(ClientMsg::Granted));
            }
        }
    }
}

client_face!(RicartAgrawala, RicartAgrawalaMsg);

impl Actor for RicartAgrawala {
    type Msg = RicartAgrawalaMsg;
    type Timer = RicartAgrawalaTimer;

    fn on_start(&mut self, ctx: &mut Ctx<'_, RicartAgrawalaMsg, RicartAgrawalaTimer>) {
        if let Some(detector) = self.detector {
            let now = ctx.now();
            for &peer in &self.peers {
                self.last_heard.insert(peer, now);
            }
            // After a crash, peers may hold our earlier incarnation's reply or wait for
            // a reply we deferred and forgot: tell them to start over with us.
            ctx.send_all(self.peers.clone(), RicartAgrawalaMsg::Rejoin);
            ctx.set_timer(RicartAgrawalaTimer::Heartbeat, detector.heartbeat_interval);
            ctx.set_timer(RicartAgrawalaTimer::Suspect, detector.heartbeat_interval);
        }
    }

    // The arms' conditions mutate state (client queues, custody), which reads better in
    // the arm's body than in a match guard.
    #[allow(clippy::collapsible_match)]
    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, RicartAgrawalaMsg, RicartAgrawalaTimer>,
        from: Endpoint,
        msg: RicartAgrawalaMsg,
    ) {
        if let Endpoint::Node(node) = from {
            self.heard_from(ctx, node, msg == RicartAgrawalaMsg::Rejoin);
        }
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
        ctx: &mut Ctx<'_, RicartAgrawalaMsg, RicartAgrawalaTimer>,
        timer: RicartAgrawalaTimer,
    ) {
        let Some(detector) = self.detector else {
            return;
        };
        match timer {
            RicartAgrawalaTimer::Heartbeat => {
                ctx.send_all(self.peers.clone(), RicartAgrawalaMsg::Alive);
                ctx.set_timer(RicartAgrawalaTimer::Heartbeat, detector.heartbeat_interval);
            }
            RicartAgrawalaTimer::Suspect => {
                let now = ctx.now();
                for &peer in &self.peers {
                    let heard = self.last_heard.get(&peer).copied().unwrap_or(now);
                    if now.saturating_duration_since(heard) > detector.suspect_after {
                        self.suspected.insert(peer);
                    }
                }
                self.maybe_enter(ctx);
                ctx.set_timer(RicartAgrawalaTimer::Suspect, detector.heartbeat_interval);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::{fifo_lan, messages_per_entry, replay, run_mutex, Load};
    use super::*;
    use crate::mutex::MutualExclusion;
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

    /// With the failure detector a crashed node is excluded: the others keep entering
    /// while it is down, and once it restarts it rejoins and enters too. Mutual exclusion
    /// holds after every event, including around the rejoin.
    #[test]
    fn ricart_agrawala_with_a_failure_detector_excludes_a_crashed_node_and_readmits_it() {
        use super::super::harness::run_crash_and_rejoin;
        assert_seeds(
            0..60,
            |seed| {
                let n = 3 + (seed % 4) as u32;
                let victim = NodeId((seed / 4 % u64::from(n)) as u32);
                let crash_at = std::time::Duration::from_micros(seed * 397 % 30_000);
                run_crash_and_rejoin(seed, n, 5, victim, crash_at, NetConfig::lan(), move |me| {
                    RicartAgrawala::with_failure_detector(
                        me,
                        (0..n).map(NodeId),
                        FailureDetectorConfig::default(),
                    )
                })
                .map(|_| ())
            },
            replay("ricart_agrawala"),
        );
    }

    /// Random crashes and restarts (any number of nodes at once) with the detector:
    /// safety after every event, then every request is granted once the faults stop.
    #[test]
    fn ricart_agrawala_with_a_failure_detector_survives_random_crashes() {
        use super::super::harness::{every_request_granted, mutual_exclusion, MutexWorkload};
        use synod_sim::{FaultConfig, Sim, SimConfig};
        assert_seeds(
            0..40,
            |seed| {
                let n = 3 + (seed % 4) as u32;
                let mut cfg = SimConfig::new(seed, n);
                cfg.faults = FaultConfig {
                    crash: 1,
                    partition: 0,
                    pause: 0,
                    clog: 0,
                    mean_interval: std::time::Duration::from_millis(100),
                    min_duration: std::time::Duration::from_millis(20),
                    max_duration: std::time::Duration::from_millis(300),
                    ..FaultConfig::chaos()
                };
                let mut sim = Sim::new(cfg, move |me| {
                    RicartAgrawala::with_failure_detector(
                        me,
                        (0..n).map(NodeId),
                        FailureDetectorConfig::default(),
                    )
                });
                sim.set_workload(
                    MutexWorkload::<RicartAgrawala>::new(Load::Heavy, n, 20)
                        .with_retry(std::time::Duration::from_millis(300)),
                );
                sim.invariant("mutual exclusion", mutual_exclusion::<RicartAgrawala>);
                sim.run_liveness(
                    std::time::Duration::from_secs(1),
                    std::time::Duration::from_secs(10),
                    every_request_granted::<RicartAgrawala>,
                )
                .map(|_| ())
                .map_err(|f| f.to_string())
            },
            replay("ricart_agrawala"),
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

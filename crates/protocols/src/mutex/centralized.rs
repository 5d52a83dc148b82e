//! # Centralized mutual exclusion: one coordinator with a FIFO queue
//!
//! Algorithm: a node that wants the critical section sends `Request` to the coordinator.
//! The coordinator grants (`Grant`) if the section is free and otherwise appends the
//! requester to a FIFO queue; on `Release` it grants to the head of the queue. Three
//! messages per entry: request, grant, release (Tanenbaum & van Steen, *Distributed
//! Systems*, §6.3.2 in the 3rd edition).
//!
//! Fault and timing model ([`Centralized::new`]): asynchronous, reliable channels (no
//! loss; channels need not be FIFO: a node's next request may overtake its release, and
//! the coordinator queues it behind the release), no crashes. A crashed coordinator
//! stops the whole system.
//!
//! ## Coordinator crashes ([`Centralized::with_recovery`])
//!
//! The coordinator is then not fixed but elected: every node runs the bully algorithm
//! ([`crate::election::bully::Bully`], unchanged, embedded: its messages and timers travel
//! inside this actor's) and takes the bully leader, the highest live id, as coordinator.
//! When a node becomes leader it knows nothing of the lock, so it rebuilds the queue by
//! asking (Tanenbaum & van Steen §6.3.2 name election plus state recovery as the remedy):
//!
//! 1. it sends `StateQuery` to every other node and grants nothing until every node has
//!    answered `StateReport { holding, wanting }` or `rebuild_timeout` has passed (a node
//!    that does not answer by then has crashed: the synchronous model of the bully
//!    algorithm);
//! 2. the node reporting `holding` is the holder; those reporting `wanting` are queued
//!    (in id order: arrival order at the dead coordinator is lost with it);
//! 3. a node also reports, unasked, whenever it adopts a new leader, so a restarted node
//!    that held the lock before its crash frees it;
//! 4. a grant that reaches a node that no longer wants the section (from a duplicate
//!    report) is handed straight back with `Release`.
//!
//! This needs FIFO channels (TCP gives them): a node's report must not overtake its
//! later release, and the leader's `Coordinator` must reach a node before its
//! `StateQuery`. Like the bully algorithm it assumes delays below the timeouts; under a
//! partition each side elects its own coordinator and mutual exclusion can fail.
//!
//! Invariants: the coordinator grants to at most one node at a time; grants follow request
//! arrival order (FIFO fairness, no starvation).
//!
//! Differences from the chapter's sketch: the chapter's coordinator grants to itself by a
//! return value and references an undefined `requester`; here the coordinator is also an
//! ordinary node that sends itself messages (not counted as network messages), and a
//! release from a node that is not the holder is ignored instead of freeing the lock.

use super::{client_face, ClientMsg, ClientQueue, MutexCounters};
use crate::election::bully::{Bully, BullyConfig, BullyMsg, BullyTimer};
use crate::election::LeaderElection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;
use synod_core::{Actor, Ctx, Effect, Endpoint, MemStorage, NodeId};

/// Messages of the centralized algorithm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CentralizedMsg {
    /// Between a client and its node.
    Client(ClientMsg),
    /// Node → coordinator: I want the critical section.
    Request,
    /// Coordinator → node: you may enter.
    Grant,
    /// Node → coordinator: I left.
    Release,
    /// The embedded bully election ([`Centralized::with_recovery`]).
    Election(BullyMsg),
    /// New coordinator → node: do you hold or want the lock?
    StateQuery,
    /// Node → coordinator: what this node holds and wants.
    StateReport {
        /// The node is in the critical section.
        holding: bool,
        /// The node is waiting for the critical section.
        wanting: bool,
        /// The node's first report since it (re)started: it holds no grant from before.
        fresh: bool,
    },
}

/// Timers of the centralized algorithm (only with recovery).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CentralizedTimer {
    /// A timer of the embedded bully election.
    Election(BullyTimer),
    /// Stop waiting for state reports: the silent nodes have crashed.
    Rebuild,
}

/// Timing of coordinator recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// The bully election's timeouts.
    pub election: BullyConfig,
    /// How long a new coordinator waits for state reports.
    pub rebuild_timeout: Duration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            election: BullyConfig::default(),
            rebuild_timeout: Duration::from_millis(50),
        }
    }
}

/// Coordinator recovery state.
#[derive(Debug)]
struct Recovery {
    bully: Bully,
    nodes: Vec<NodeId>,
    config: RecoveryConfig,
    /// While rebuilding: the nodes whose report is still missing.
    awaiting: Option<BTreeSet<NodeId>>,
}

/// A node of the centralized algorithm; the coordinator is one of them.
#[derive(Debug)]
pub struct Centralized {
    coordinator: NodeId,
    clients: ClientQueue,
    in_critical_section: bool,
    // Coordinator state.
    holder: Option<NodeId>,
    queue: VecDeque<NodeId>,
    counters: MutexCounters,
    /// This node has asked for the section and not yet entered.
    wanting: bool,
    /// No state report sent since this node started.
    fresh: bool,
    recovery: Option<Recovery>,
}

impl Centralized {
    /// A node whose coordinator is `coordinator`.
    pub fn new(coordinator: NodeId) -> Self {
        Centralized {
            coordinator,
            clients: ClientQueue::default(),
            in_critical_section: false,
            holder: None,
            queue: VecDeque::new(),
            counters: MutexCounters::default(),
            wanting: false,
            fresh: true,
            recovery: None,
        }
    }

    /// A node among `nodes` whose coordinator is elected (the highest live id), and
    /// re-elected with a rebuilt queue when it crashes (see the module docs).
    pub fn with_recovery(nodes: impl IntoIterator<Item = NodeId>, config: RecoveryConfig) -> Self {
        let nodes: Vec<NodeId> = nodes.into_iter().collect();
        Centralized {
            recovery: Some(Recovery {
                bully: Bully::new(nodes.clone(), config.election),
                nodes,
                config,
                awaiting: None,
            }),
            ..Centralized::new(NodeId(0))
        }
    }

    /// The coordinator this node currently uses, if it knows one.
    pub fn coordinator(&self) -> Option<NodeId> {
        match &self.recovery {
            None => Some(self.coordinator),
            Some(r) => r.bully.leader(),
        }
    }

    /// Whether this node is a coordinator still collecting state reports.
    pub fn rebuilding(&self) -> bool {
        self.recovery.as_ref().is_some_and(|r| r.awaiting.is_some())
    }

    fn is_coordinator(&self, me: NodeId) -> bool {
        self.coordinator() == Some(me)
    }

    /// Run one step of the embedded bully election and carry its effects out as this
    /// actor's; then react if the leader changed.
    fn step_election(
        &mut self,
        ctx: &mut Ctx<'_, CentralizedMsg, CentralizedTimer>,
        step: impl FnOnce(&mut Bully, &mut Ctx<'_, BullyMsg, BullyTimer>),
    ) {
        let Some(recovery) = self.recovery.as_mut() else {
            return;
        };
        let before = recovery.bully.leader();
        let (me, now) = (ctx.me(), ctx.now());
        let mut effects = Vec::new();
        // The bully keeps no durable state: a scratch store is enough.
        let mut scratch = MemStorage::new();
        {
            let mut inner = Ctx::new(me, now, ctx.rng(), &mut scratch, &mut effects);
            step(&mut recovery.bully, &mut inner);
        }
        for effect in effects {
            match effect {
                Effect::Send { to, msg } | Effect::SendUnsynced { to, msg } => {
                    ctx.send(to, CentralizedMsg::Election(msg))
                }
                Effect::SetTimer { key, after } => {
                    ctx.set_timer(CentralizedTimer::Election(key), after)
                }
                Effect::CancelTimer { key } => ctx.cancel_timer(CentralizedTimer::Election(key)),
                // The bully election neither replies nor runs background work.
                Effect::Reply { .. } | Effect::Background(_) => {}
            }
        }
        let after = recovery.bully.leader();
        if after != before {
            self.on_new_leader(ctx, after);
        }
    }

    fn on_new_leader(
        &mut self,
        ctx: &mut Ctx<'_, CentralizedMsg, CentralizedTimer>,
        leader: Option<NodeId>,
    ) {
        let me = ctx.me();
        // Whatever this node knew as coordinator is stale now.
        self.holder = None;
        self.queue.clear();
        let Some(recovery) = self.recovery.as_mut() else {
            return;
        };
        recovery.awaiting = None;
        match leader {
            Some(leader) if leader == me => {
                if self.in_critical_section {
                    self.holder = Some(me);
                } else if self.wanting {
                    self.queue.push_back(me);
                }
                let others: BTreeSet<NodeId> = recovery
                    .nodes
                    .iter()
                    .copied()
                    .filter(|&n| n != me)
                    .collect();
                ctx.send_all(others.clone(), CentralizedMsg::StateQuery);
                ctx.set_timer(CentralizedTimer::Rebuild, recovery.config.rebuild_timeout);
                recovery.awaiting = Some(others);
                self.finish_rebuild_if_complete(ctx);
            }
            Some(leader) => {
                ctx.cancel_timer(CentralizedTimer::Rebuild);
                let report = self.report();
                ctx.send(leader, report);
            }
            None => ctx.cancel_timer(CentralizedTimer::Rebuild),
        }
    }

    fn report(&mut self) -> CentralizedMsg {
        let fresh = std::mem::replace(&mut self.fresh, false);
        CentralizedMsg::StateReport {
            holding: self.in_critical_section,
            wanting: self.wanting && !self.in_critical_section,
            fresh,
        }
    }

    fn finish_rebuild_if_complete(&mut self, ctx: &mut Ctx<'_, CentralizedMsg, CentralizedTimer>) {
        if let Some(recovery) = self.recovery.as_mut() {
            if recovery.awaiting.as_ref().is_some_and(BTreeSet::is_empty) {
                recovery.awaiting = None;
                ctx.cancel_timer(CentralizedTimer::Rebuild);
            }
        }
        self.grant_next(ctx);
    }

    /// Coordinator: if the lock is free (and the queue rebuilt), grant it to the head.
    fn grant_next(&mut self, ctx: &mut Ctx<'_, CentralizedMsg, CentralizedTimer>) {
        if self.holder.is_none() && !self.rebuilding() && self.is_coordinator(ctx.me()) {
            self.holder = self.queue.pop_front();
            if let Some(next) = self.holder {
                self.send(ctx, next, CentralizedMsg::Grant);
            }
        }
    }

    fn request(&mut self, ctx: &mut Ctx<'_, CentralizedMsg, CentralizedTimer>) {
        self.wanting = true;
        // With no coordinator known, the report to the next one carries the request.
        if let Some(coordinator) = self.coordinator() {
            self.send(ctx, coordinator, CentralizedMsg::Request);
        }
    }

    /// The node the coordinator has granted the section to (meaningful on the coordinator).
    pub fn holder(&self) -> Option<NodeId> {
        self.holder
    }

    /// Nodes waiting at the coordinator, in grant order.
    pub fn queued(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.queue.iter().copied()
    }

    fn send(
        &mut self,
        ctx: &mut Ctx<'_, CentralizedMsg, CentralizedTimer>,
        to: NodeId,
        msg: CentralizedMsg,
    ) {
        if to != ctx.me() {
            self.counters.messages_sent += 1;
        }
        ctx.send(to, msg);
    }
}

client_face!(Centralized, CentralizedMsg);

impl Actor for Centralized {
    type Msg = CentralizedMsg;
    type Timer = CentralizedTimer;

    fn on_start(&mut self, ctx: &mut Ctx<'_, CentralizedMsg, CentralizedTimer>) {
        self.step_election(ctx, |bully, inner| bully.on_start(inner));
    }

    // The arms' conditions mutate state (client queues, custody), which reads better in
    // the arm's body than in a match guard.
    #[allow(clippy::collapsible_match)]
    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, CentralizedMsg, CentralizedTimer>,
        from: Endpoint,
        msg: CentralizedMsg,
    ) {
        let me = ctx.me();
        match (from, msg) {
            (Endpoint::Client(client), CentralizedMsg::Client(ClientMsg::Acquire)) => {
                if self.clients.push(client) {
                    self.request(ctx);
                }
            }
            (Endpoint::Client(client), CentralizedMsg::Client(ClientMsg::Release)) => {
                if self.in_critical_section && self.clients.release(client) {
                    self.in_critical_section = false;
                    self.wanting = false;
                    if let Some(coordinator) = self.coordinator() {
                        self.send(ctx, coordinator, CentralizedMsg::Release);
                    }
                    if self.clients.has_waiting() {
                        self.request(ctx);
                    }
                }
            }
            (Endpoint::Node(node), CentralizedMsg::Request) if self.is_coordinator(me) => {
                // A request from the holder itself is its *next* request, which
                // overtook its release on a reordering network.
                if self.holder.is_some() || self.rebuilding() {
                    if !self.queue.contains(&node) {
                        self.queue.push_back(node);
                    }
                } else {
                    self.holder = Some(node);
                    self.send(ctx, node, CentralizedMsg::Grant);
                }
            }
            (Endpoint::Node(node), CentralizedMsg::Release) if self.is_coordinator(me) => {
                if self.holder == Some(node) {
                    self.holder = None;
                    self.grant_next(ctx);
                }
            }
            (Endpoint::Node(node), CentralizedMsg::Grant) if self.coordinator() == Some(node) => {
                if !self.in_critical_section {
                    if let Some(client) = self.clients.enter() {
                        self.in_critical_section = true;
                        self.counters.entries += 1;
                        ctx.reply(client, CentralizedMsg::Client(ClientMsg::Granted));
                    } else if self.recovery.is_some() {
                        // A grant for a request this node no longer has (a duplicate
                        // report after recovery): hand it straight back.
                        self.send(ctx, node, CentralizedMsg::Release);
                    }
                }
            }
            (Endpoint::Node(node), CentralizedMsg::Election(msg)) => {
                self.step_election(ctx, |bully, inner| {
                    bully.on_message(inner, Endpoint::Node(node), msg)
                });
            }
            (Endpoint::Node(node), CentralizedMsg::StateQuery)
                if self.recovery.is_some() && self.coordinator() == Some(node) =>
            {
                let report = self.report();
                ctx.send(node, report);
            }
            (
                Endpoint::Node(node),
                CentralizedMsg::StateReport {
                    holding,
                    wanting,
                    fresh,
                },
            ) if self.is_coordinator(me) => {
                if holding {
                    self.holder = Some(node);
                    self.queue.retain(|&n| n != node);
                } else {
                    if fresh && self.holder == Some(node) {
                        // It crashed holding (or being granted) the lock: free it. A
                        // report that is not fresh may precede a grant in flight.
                        self.holder = None;
                    }
                    if wanting && self.holder != Some(node) && !self.queue.contains(&node) {
                        self.queue.push_back(node);
                    }
                }
                if let Some(awaiting) = self.recovery.as_mut().and_then(|r| r.awaiting.as_mut()) {
                    awaiting.remove(&node);
                }
                self.finish_rebuild_if_complete(ctx);
            }
            _ => {}
        }
    }

    fn on_timer(
        &mut self,
        ctx: &mut Ctx<'_, CentralizedMsg, CentralizedTimer>,
        timer: CentralizedTimer,
    ) {
        match timer {
            CentralizedTimer::Election(key) => {
                self.step_election(ctx, |bully, inner| bully.on_timer(inner, key))
            }
            CentralizedTimer::Rebuild => {
                // The nodes that did not answer have crashed (synchronous model).
                if let Some(awaiting) = self.recovery.as_mut().and_then(|r| r.awaiting.as_mut()) {
                    awaiting.clear();
                }
                self.finish_rebuild_if_complete(ctx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::{replay, run_mutex, Load};
    use super::*;
    use crate::mutex::MutualExclusion;
    use synod_core::testing::{sent, TestNode};
    use synod_core::ClientId;
    use synod_sim::{assert_seeds, NetConfig};

    fn coordinator() -> TestNode<Centralized> {
        let mut node = TestNode::new(NodeId(0), Centralized::new(NodeId(0)), 1);
        node.start();
        node
    }

    /// The coordinator grants to one node at a time and queues the rest in arrival order.
    #[test]
    fn coordinator_grants_to_one_at_a_time_in_fifo_order() {
        let mut c = coordinator();
        assert_eq!(
            sent(&c.deliver(NodeId(2), CentralizedMsg::Request)),
            vec![(NodeId(2), CentralizedMsg::Grant)]
        );
        assert!(sent(&c.deliver(NodeId(1), CentralizedMsg::Request)).is_empty());
        assert!(sent(&c.deliver(NodeId(3), CentralizedMsg::Request)).is_empty());
        assert_eq!(
            c.actor.queued().collect::<Vec<_>>(),
            vec![NodeId(1), NodeId(3)]
        );
        assert_eq!(
            sent(&c.deliver(NodeId(2), CentralizedMsg::Release)),
            vec![(NodeId(1), CentralizedMsg::Grant)]
        );
        assert_eq!(c.actor.holder(), Some(NodeId(1)));
    }

    #[test]
    fn a_release_from_a_node_that_does_not_hold_the_lock_is_ignored() {
        let mut c = coordinator();
        c.deliver(NodeId(2), CentralizedMsg::Request);
        assert!(sent(&c.deliver(NodeId(1), CentralizedMsg::Release)).is_empty());
        assert_eq!(c.actor.holder(), Some(NodeId(2)));
    }

    #[test]
    fn a_node_enters_only_on_the_coordinators_grant() {
        let mut n = TestNode::new(NodeId(1), Centralized::new(NodeId(0)), 1);
        n.start();
        let out = n.deliver(ClientId(5), Centralized::acquire_request());
        assert_eq!(sent(&out), vec![(NodeId(0), CentralizedMsg::Request)]);
        assert!(!n.actor.in_critical_section());
        n.deliver(NodeId(3), CentralizedMsg::Grant);
        assert!(
            !n.actor.in_critical_section(),
            "only the coordinator grants"
        );
        n.deliver(NodeId(0), CentralizedMsg::Grant);
        assert!(n.actor.in_critical_section());
        let out = n.deliver(ClientId(5), Centralized::release_request());
        assert_eq!(sent(&out), vec![(NodeId(0), CentralizedMsg::Release)]);
        assert!(!n.actor.in_critical_section());
    }

    fn factory() -> impl FnMut(NodeId) -> Centralized {
        |_| Centralized::new(NodeId(0))
    }

    /// Safety and liveness under contention on a reordering network.
    #[test]
    fn centralized_keeps_mutual_exclusion_and_grants_every_request() {
        assert_seeds(
            0..100,
            |seed| {
                let n = 2 + (seed % 6) as u32;
                let mut net = NetConfig::lan();
                net.reorder = 0.2;
                run_mutex(seed, n, 4, Load::Heavy, net, factory()).map(|_| ())
            },
            replay("centralized"),
        );
    }

    fn recovering(n: u32) -> impl FnMut(NodeId) -> Centralized {
        move |_| Centralized::with_recovery((0..n).map(NodeId), RecoveryConfig::default())
    }

    /// With recovery and no crash: the highest id coordinates, and it is still three
    /// messages per entry (plus the election's own messages, not counted).
    #[test]
    fn centralized_with_recovery_elects_the_highest_id_and_grants_every_request() {
        use super::super::harness::fifo_lan;
        assert_seeds(
            0..40,
            |seed| {
                let n = 2 + (seed % 5) as u32;
                let sim = run_mutex(seed, n, 4, Load::Heavy, fifo_lan(), recovering(n))?;
                for (id, a) in sim.actors() {
                    if a.coordinator() != Some(NodeId(n - 1)) {
                        return Err(format!("{id} follows {:?}", a.coordinator()));
                    }
                }
                Ok(())
            },
            replay("centralized"),
        );
    }

    /// The coordinator crashes at a random moment (perhaps while it, or a node it
    /// granted, is inside): the survivors elect the next highest id, which rebuilds the
    /// queue from their reports, and they all keep entering; when the old coordinator
    /// restarts it takes over (bully) and rebuilds again. Mutual exclusion is checked
    /// after every event.
    #[test]
    fn centralized_elects_a_new_coordinator_when_the_coordinator_crashes() {
        use super::super::harness::{fifo_lan, run_crash_and_rejoin};
        assert_seeds(
            0..60,
            |seed| {
                let n = 3 + (seed % 4) as u32;
                let crash_at = std::time::Duration::from_micros(100_000 + seed * 397 % 40_000);
                let sim = run_crash_and_rejoin(
                    seed,
                    n,
                    6,
                    NodeId(n - 1),
                    crash_at,
                    fifo_lan(),
                    recovering(n),
                )?;
                for (id, a) in sim.actors() {
                    if a.coordinator() != Some(NodeId(n - 1)) {
                        return Err(format!(
                            "{id} follows {:?} after the restart",
                            a.coordinator()
                        ));
                    }
                }
                Ok(())
            },
            replay("centralized"),
        );
    }

    /// A node that crashes holding the lock frees it when it restarts (its first report
    /// is fresh), so the others are not blocked for good.
    #[test]
    fn centralized_a_restarted_holder_frees_the_lock() {
        let mut c = TestNode::new(
            NodeId(2),
            Centralized::with_recovery((0..3).map(NodeId), RecoveryConfig::default()),
            1,
        );
        c.start();
        assert_eq!(c.actor.coordinator(), Some(NodeId(2)));
        c.deliver(
            NodeId(0),
            CentralizedMsg::StateReport {
                holding: false,
                wanting: false,
                fresh: true,
            },
        );
        c.deliver(
            NodeId(1),
            CentralizedMsg::StateReport {
                holding: true,
                wanting: false,
                fresh: true,
            },
        );
        assert!(!c.actor.rebuilding());
        assert_eq!(c.actor.holder(), Some(NodeId(1)));
        c.deliver(NodeId(0), CentralizedMsg::Request);
        // Node 1 restarts: a fresh report that it holds nothing frees the lock.
        let out = c.deliver(
            NodeId(1),
            CentralizedMsg::StateReport {
                holding: false,
                wanting: false,
                fresh: true,
            },
        );
        assert_eq!(sent(&out), vec![(NodeId(0), CentralizedMsg::Grant)]);
        // A report that is not fresh never frees: a grant may be in flight to it.
        let out = c.deliver(
            NodeId(0),
            CentralizedMsg::StateReport {
                holding: false,
                wanting: true,
                fresh: false,
            },
        );
        assert!(sent(&out).is_empty());
        assert_eq!(c.actor.holder(), Some(NodeId(0)));
    }

    /// Three messages per entry (request, grant, release) for every node but the
    /// coordinator, whose own requests are local calls.
    #[test]
    fn centralized_uses_three_messages_per_entry() {
        for n in [3u32, 5, 9] {
            for load in [Load::Sequential, Load::Heavy] {
                let sim = run_mutex(7, n, 3, load, NetConfig::lan(), factory()).expect("run");
                let messages: u64 = sim.actors().map(|(_, a)| a.counters().messages_sent).sum();
                let remote_entries: u64 = sim
                    .actors()
                    .filter(|(id, _)| *id != NodeId(0))
                    .map(|(_, a)| a.counters().entries)
                    .sum();
                assert_eq!(messages, 3 * remote_entries, "N = {n}, {load:?}");
            }
        }
    }
}

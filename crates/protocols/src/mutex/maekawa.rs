//! # Maekawa: permission from a √N quorum, with deadlock avoidance
//!
//! Algorithm (Maekawa, "A √N Algorithm for Mutual Exclusion in Decentralized Systems",
//! ACM TOCS 3(2), 1985, §3–§4): each node `i` has a quorum `S_i`, and every two quorums
//! intersect. A node enters once every member of its quorum has *locked* for it; a member
//! (an *arbiter*) locks for one request at a time, so two nodes cannot both hold all their
//! locks. Requests are stamped with Lamport timestamps; a smaller stamp has priority.
//!
//! Quorums here are grid quorums: nodes are laid out row by row on a ⌈√N⌉-wide grid and
//! `S_i` is node `i`'s row plus its column. Any two such sets intersect, even with a
//! partial last row, and K = |S_i| ≤ 2⌈√N⌉−1 (Maekawa's finite projective planes give
//! K ≈ √N but exist only for some N).
//!
//! Deadlock avoidance (Maekawa §4): an arbiter that is locked for request `L` and receives
//! request `R`:
//!
//! - if `R` is behind `L` or behind a request already waiting, replies `Failed`;
//! - otherwise (R precedes everything) sends `Inquire` to `L`'s node, once per lock.
//!
//! A requester receiving `Inquire` gives the lock back (`Relinquish`) if it knows it
//! cannot succeed yet, i.e. it has received a `Failed`; if not, it remembers the inquiry
//! and relinquishes as soon as a `Failed` arrives, or ignores it by entering (its
//! `Release` frees the lock). On `Relinquish` the arbiter re-queues `L` and locks for the
//! head of its queue.
//!
//! **Sanders' correction** (Sanders, "The Information Structure of Distributed Mutual
//! Exclusion Algorithms", ACM TOCS 5(3), 1987): Maekawa's rules can deadlock because a
//! request that was at the head of an arbiter's queue (so got no `Failed`) can later be
//! overtaken by a higher-priority arrival and still never learn that it is behind; its
//! node then sits on other arbiters' locks and defers their inquiries forever. The fix
//! kept here: every waiting request except the one that precedes everything is told
//! `Failed`, so when a higher-priority request arrives the arbiter also sends `Failed` to
//! the request it displaces. Likewise a node that relinquishes a lock counts itself as
//! failed at that arbiter.
//!
//! Messages per entry: 3(K−1) under light load (request, locked, release), up to about
//! 5(K−1)–6(K−1) under contention (plus failed, inquire, relinquish and the re-lock).
//!
//! Fault and timing model: reliable channels, no crashes; a crashed arbiter blocks every
//! quorum it is in. The algorithm needs **FIFO** channels (an `Inquire` must not overtake
//! the `Locked` it refers to, nor a `Request` the `Release` before it), so messages
//! between nodes are numbered and delivered in order per link ([`FifoLinks`]): the actor
//! is safe on a reordering network too.
//!
//! Invariant: mutual exclusion (an arbiter is locked for at most one request, and quorums
//! intersect); freedom from deadlock under Sanders' correction.
//!
//! Differences from the chapter: the chapter has no sketch of Maekawa's algorithm.

use super::{client_face, ClientMsg, ClientQueue, FifoLinks, MutexCounters};
use crate::clocks::{LamportClock, LamportTimestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use synod_core::{Actor, Ctx, Endpoint, NodeId};

/// Messages of Maekawa's algorithm. Each names the request it is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaekawaMsg {
    /// Between a client and its node.
    Client(ClientMsg),
    /// Requester → arbiter: please lock for this request.
    Request(LamportTimestamp),
    /// Arbiter → requester: locked for this request.
    Locked(LamportTimestamp),
    /// Arbiter → requester: a higher-priority request holds or precedes this one.
    Failed(LamportTimestamp),
    /// Arbiter → lock holder: a higher-priority request wants the lock back.
    Inquire(LamportTimestamp),
    /// Requester → arbiter: the lock for this request is given back.
    Relinquish(LamportTimestamp),
    /// Requester → arbiter: this request left the critical section.
    Release(LamportTimestamp),
    /// Node → node: one of the messages above, numbered for FIFO delivery per link.
    Sequenced {
        /// Position among the messages from the sender to the receiver, from 0.
        seq: u64,
        /// The message.
        #[serde(deserialize_with = "synod_core::codec::nested")]
        msg: Box<MaekawaMsg>,
    },
}

/// Timers of Maekawa's algorithm (none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MaekawaTimer {}

/// Node `me`'s grid quorum among `nodes` nodes: its row and its column on a ⌈√N⌉-wide
/// grid, including `me`.
pub fn grid_quorum(me: NodeId, nodes: u32) -> Vec<NodeId> {
    let mut side = 1u32;
    while side * side < nodes {
        side += 1;
    }
    let (row, column) = (me.0 / side, me.0 % side);
    (0..nodes)
        .filter(|&n| n / side == row || n % side == column)
        .map(NodeId)
        .collect()
}

/// A node of Maekawa's algorithm: a requester and an arbiter at once.
#[derive(Debug)]
pub struct Maekawa {
    quorum: Vec<NodeId>,
    clock: LamportClock,
    clients: ClientQueue,
    in_critical_section: bool,
    counters: MutexCounters,
    links: FifoLinks<MaekawaMsg>,
    // Requester state.
    request: Option<LamportTimestamp>,
    grants: BTreeSet<NodeId>,
    failed_from: BTreeSet<NodeId>,
    inquiries: BTreeSet<NodeId>,
    // Arbiter state.
    locked: Option<LamportTimestamp>,
    waiting: BTreeSet<LamportTimestamp>,
    told_failed: BTreeSet<LamportTimestamp>,
    inquired: bool,
}

impl Maekawa {
    /// Node `me` with quorum `quorum` (which must include `me` and intersect every other
    /// node's quorum; see [`grid_quorum`]).
    pub fn new(me: NodeId, quorum: Vec<NodeId>) -> Self {
        Maekawa {
            quorum,
            clock: LamportClock::new(me),
            clients: ClientQueue::default(),
            in_critical_section: false,
            counters: MutexCounters::default(),
            links: FifoLinks::default(),
            request: None,
            grants: BTreeSet::new(),
            failed_from: BTreeSet::new(),
            inquiries: BTreeSet::new(),
            locked: None,
            waiting: BTreeSet::new(),
            told_failed: BTreeSet::new(),
            inquired: false,
        }
    }

    /// Node `me` of `nodes` with its [`grid_quorum`].
    pub fn with_grid(me: NodeId, nodes: u32) -> Self {
        Maekawa::new(me, grid_quorum(me, nodes))
    }

    /// The request this node, as an arbiter, is locked for.
    pub fn locked_for(&self) -> Option<LamportTimestamp> {
        self.locked
    }

    /// The requests waiting at this arbiter, in priority order.
    pub fn waiting(&self) -> impl Iterator<Item = LamportTimestamp> + '_ {
        self.waiting.iter().copied()
    }

    /// This node's quorum.
    pub fn quorum(&self) -> &[NodeId] {
        &self.quorum
    }

    fn send(&mut self, ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>, to: NodeId, msg: MaekawaMsg) {
        if to == ctx.me() {
            ctx.send(to, msg);
            return;
        }
        self.counters.messages_sent += 1;
        let seq = self.links.next_seq(to);
        ctx.send(
            to,
            MaekawaMsg::Sequenced {
                seq,
                msg: Box::new(msg),
            },
        );
    }

    fn multicast(&mut self, ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>, msg: MaekawaMsg) {
        for member in self.quorum.clone() {
            self.send(ctx, member, msg.clone());
        }
    }

    fn start_request(&mut self, ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>) {
        let stamp = self.clock.tick();
        self.request = Some(stamp);
        self.grants.clear();
        self.failed_from.clear();
        self.inquiries.clear();
        self.multicast(ctx, MaekawaMsg::Request(stamp));
    }

    // ---- arbiter -------------------------------------------------------------------

    fn lock_next(&mut self, ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>) {
        self.locked = self.waiting.pop_first();
        self.inquired = false;
        if let Some(next) = self.locked {
            self.told_failed.remove(&next);
            self.send(ctx, next.node, MaekawaMsg::Locked(next));
        }
    }

    fn fail(&mut self, ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>, request: LamportTimestamp) {
        if self.told_failed.insert(request) {
            self.send(ctx, request.node, MaekawaMsg::Failed(request));
        }
    }

    fn on_request(
        &mut self,
        ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>,
        request: LamportTimestamp,
    ) {
        self.clock.observe(request);
        let Some(lock) = self.locked else {
            self.locked = Some(request);
            self.send(ctx, request.node, MaekawaMsg::Locked(request));
            return;
        };
        if lock == request || !self.waiting.insert(request) {
            return; // duplicate
        }
        let ahead_waiting = self.waiting.first().is_some_and(|&first| first < request);
        if request > lock || ahead_waiting {
            self.fail(ctx, request);
        } else {
            // Sanders 1987: the displaced head must learn it is behind.
            let displaced: Vec<LamportTimestamp> = self
                .waiting
                .iter()
                .copied()
                .filter(|&w| w != request)
                .collect();
            for w in displaced {
                self.fail(ctx, w);
            }
            if !self.inquired {
                self.inquired = true;
                self.send(ctx, lock.node, MaekawaMsg::Inquire(lock));
            }
        }
    }

    fn on_relinquish(
        &mut self,
        ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>,
        request: LamportTimestamp,
    ) {
        if self.locked != Some(request) {
            return;
        }
        // The relinquisher knows it is behind: it is a failed waiter now.
        self.waiting.insert(request);
        self.told_failed.insert(request);
        self.lock_next(ctx);
    }

    fn on_release(
        &mut self,
        ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>,
        request: LamportTimestamp,
    ) {
        if self.locked == Some(request) {
            self.lock_next(ctx);
        } else {
            self.waiting.remove(&request);
            self.told_failed.remove(&request);
        }
    }

    // ---- requester -----------------------------------------------------------------

    fn relinquish(
        &mut self,
        ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>,
        arbiter: NodeId,
        request: LamportTimestamp,
    ) {
        self.grants.remove(&arbiter);
        self.failed_from.insert(arbiter);
        self.send(ctx, arbiter, MaekawaMsg::Relinquish(request));
    }

    fn on_locked(
        &mut self,
        ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>,
        arbiter: NodeId,
        request: LamportTimestamp,
    ) {
        if self.request != Some(request) {
            return;
        }
        self.grants.insert(arbiter);
        self.failed_from.remove(&arbiter);
        if self.in_critical_section || !self.quorum.iter().all(|m| self.grants.contains(m)) {
            return;
        }
        if let Some(client) = self.clients.enter() {
            self.in_critical_section = true;
            self.inquiries.clear();
            self.counters.entries += 1;
            ctx.reply(client, MaekawaMsg::Client(ClientMsg::Granted));
        }
    }

    fn on_failed(
        &mut self,
        ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>,
        arbiter: NodeId,
        request: LamportTimestamp,
    ) {
        if self.request != Some(request) || self.in_critical_section {
            return;
        }
        self.failed_from.insert(arbiter);
        for inquirer in std::mem::take(&mut self.inquiries) {
            if self.grants.contains(&inquirer) {
                self.relinquish(ctx, inquirer, request);
            }
        }
    }

    fn on_inquire(
        &mut self,
        ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>,
        arbiter: NodeId,
        request: LamportTimestamp,
    ) {
        if self.request != Some(request)
            || self.in_critical_section
            || !self.grants.contains(&arbiter)
        {
            return; // stale, or inside: the release will free the lock
        }
        if self.failed_from.is_empty() {
            self.inquiries.insert(arbiter);
        } else {
            self.relinquish(ctx, arbiter, request);
        }
    }
}

client_face!(Maekawa, MaekawaMsg);

impl Actor for Maekawa {
    type Msg = MaekawaMsg;
    type Timer = MaekawaTimer;

    fn on_start(&mut self, _ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>) {}

    // The arms' conditions mutate state (client queues, custody), which reads better in
    // the arm's body than in a match guard.
    #[allow(clippy::collapsible_match)]
    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>,
        from: Endpoint,
        msg: MaekawaMsg,
    ) {
        match (from, msg) {
            (Endpoint::Client(client), MaekawaMsg::Client(ClientMsg::Acquire)) => {
                if self.clients.push(client) {
                    self.start_request(ctx);
                }
            }
            (Endpoint::Client(client), MaekawaMsg::Client(ClientMsg::Release)) => {
                if self.in_critical_section && self.clients.release(client) {
                    self.in_critical_section = false;
                    if let Some(request) = self.request.take() {
                        self.grants.clear();
                        self.multicast(ctx, MaekawaMsg::Release(request));
                    }
                    if self.clients.has_waiting() {
                        self.start_request(ctx);
                    }
                }
            }
            (Endpoint::Node(node), MaekawaMsg::Sequenced { seq, msg }) => {
                for msg in self.links.accept(node, seq, *msg) {
                    // One level only: a nested wrapper is malformed.
                    if !matches!(msg, MaekawaMsg::Sequenced { .. } | MaekawaMsg::Client(_)) {
                        self.on_message(ctx, Endpoint::Node(node), msg);
                    }
                }
            }
            (Endpoint::Node(node), msg) => match msg {
                MaekawaMsg::Request(r) if r.node == node => self.on_request(ctx, r),
                MaekawaMsg::Relinquish(r) if r.node == node => self.on_relinquish(ctx, r),
                MaekawaMsg::Release(r) if r.node == node => self.on_release(ctx, r),
                MaekawaMsg::Locked(r) => self.on_locked(ctx, node, r),
                MaekawaMsg::Failed(r) => self.on_failed(ctx, node, r),
                MaekawaMsg::Inquire(r) => self.on_inquire(ctx, node, r),
                _ => {}
            },
            _ => {}
        }
    }

    fn on_timer(&mut self, _ctx: &mut Ctx<'_, MaekawaMsg, MaekawaTimer>, timer: MaekawaTimer) {
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

    /// The messages sent, without their FIFO wrappers.
    fn sent(effects: &[synod_core::Effect<MaekawaMsg, MaekawaTimer>]) -> Vec<(NodeId, MaekawaMsg)> {
        synod_core::testing::sent(effects)
            .into_iter()
            .map(|(to, msg)| match msg {
                MaekawaMsg::Sequenced { msg, .. } => (to, *msg),
                other => (to, other),
            })
            .collect()
    }

    fn stamp(time: u64, node: u32) -> LamportTimestamp {
        LamportTimestamp {
            time,
            node: NodeId(node),
        }
    }

    fn arbiter() -> TestNode<Maekawa> {
        let mut t = TestNode::new(NodeId(0), Maekawa::with_grid(NodeId(0), 9), 1);
        t.start();
        t
    }

    #[test]
    fn grid_quorums_pairwise_intersect() {
        for n in 1..=30u32 {
            for a in 0..n {
                let qa = grid_quorum(NodeId(a), n);
                assert!(qa.contains(&NodeId(a)));
                for b in 0..n {
                    let qb = grid_quorum(NodeId(b), n);
                    assert!(
                        qa.iter().any(|x| qb.contains(x)),
                        "N={n}: S_{a} ∩ S_{b} = ∅"
                    );
                }
            }
        }
        assert_eq!(grid_quorum(NodeId(4), 9).len(), 5, "K = 2√N − 1");
    }

    /// §3: an arbiter locks for one request at a time; a later request gets Failed.
    #[test]
    fn maekawa_grants_to_one_at_a_time() {
        let mut a = arbiter();
        let first = stamp(3, 1);
        assert_eq!(
            sent(&a.deliver(NodeId(1), MaekawaMsg::Request(first))),
            vec![(NodeId(1), MaekawaMsg::Locked(first))]
        );
        let later = stamp(5, 2);
        assert_eq!(
            sent(&a.deliver(NodeId(2), MaekawaMsg::Request(later))),
            vec![(NodeId(2), MaekawaMsg::Failed(later))]
        );
        assert_eq!(a.actor.locked_for(), Some(first));
        assert_eq!(
            sent(&a.deliver(NodeId(1), MaekawaMsg::Release(first))),
            vec![(NodeId(2), MaekawaMsg::Locked(later))]
        );
    }

    /// §4: a higher-priority request makes the arbiter inquire the holder, once; on
    /// Relinquish the lock passes to the higher-priority request.
    #[test]
    fn maekawa_inquires_once_and_relocks_on_relinquish() {
        let mut a = arbiter();
        let holder = stamp(5, 1);
        a.deliver(NodeId(1), MaekawaMsg::Request(holder));
        let urgent = stamp(2, 2);
        assert_eq!(
            sent(&a.deliver(NodeId(2), MaekawaMsg::Request(urgent))),
            vec![(NodeId(1), MaekawaMsg::Inquire(holder))]
        );
        // Sanders 1987: an even more urgent request displaces the head, which is told Failed;
        // no second inquiry.
        let more_urgent = stamp(1, 3);
        assert_eq!(
            sent(&a.deliver(NodeId(3), MaekawaMsg::Request(more_urgent))),
            vec![(NodeId(2), MaekawaMsg::Failed(urgent))]
        );
        assert_eq!(
            sent(&a.deliver(NodeId(1), MaekawaMsg::Relinquish(holder))),
            vec![(NodeId(3), MaekawaMsg::Locked(more_urgent))]
        );
        assert_eq!(a.actor.waiting().collect::<Vec<_>>(), vec![urgent, holder]);
    }

    /// §4: a requester defers an inquiry until it has been told Failed, then relinquishes.
    #[test]
    fn maekawa_relinquishes_only_after_failed() {
        let mut n = TestNode::new(NodeId(0), Maekawa::with_grid(NodeId(0), 4), 1);
        n.start();
        n.deliver(ClientId(0), Maekawa::acquire_request());
        let mine = stamp(1, 0);
        n.deliver(NodeId(1), MaekawaMsg::Locked(mine));
        assert!(sent(&n.deliver(NodeId(1), MaekawaMsg::Inquire(mine))).is_empty());
        assert_eq!(
            sent(&n.deliver(NodeId(2), MaekawaMsg::Failed(mine))),
            vec![(NodeId(1), MaekawaMsg::Relinquish(mine))]
        );
    }

    /// A requester in the critical section ignores an inquiry: its release frees the lock.
    #[test]
    fn maekawa_ignores_inquiry_inside_the_critical_section() {
        let mut n = TestNode::new(NodeId(0), Maekawa::with_grid(NodeId(0), 4), 1);
        n.start();
        n.deliver(ClientId(0), Maekawa::acquire_request());
        let mine = stamp(1, 0);
        for m in [0, 1, 2] {
            n.deliver(NodeId(m), MaekawaMsg::Locked(mine));
        }
        assert!(n.actor.in_critical_section());
        assert!(sent(&n.deliver(NodeId(1), MaekawaMsg::Inquire(mine))).is_empty());
    }

    fn factory(n: u32) -> impl FnMut(NodeId) -> Maekawa {
        move |me| Maekawa::with_grid(me, n)
    }

    /// Safety and liveness (no deadlock) under heavy contention on a reordering network
    /// (FIFO restored per link by [`FifoLinks`]).
    #[test]
    fn maekawa_keeps_mutual_exclusion_without_deadlock() {
        assert_seeds(
            0..100,
            |seed| {
                let n = [3u32, 4, 5, 7, 9, 12, 16][(seed % 7) as usize];
                run_mutex(seed, n, 4, Load::Heavy, reordering_lan(), factory(n)).map(|_| ())
            },
            replay("maekawa"),
        );
    }

    /// Light load: exactly 3(K−1) messages per entry; heavy load stays within 6(K−1).
    #[test]
    fn maekawa_uses_three_to_six_k_minus_one_messages_per_entry() {
        for n in [4u32, 9, 16, 25] {
            let k = grid_quorum(NodeId(0), n).len() as f64;
            let light = run_mutex(7, n, 2, Load::Sequential, fifo_lan(), factory(n)).expect("run");
            assert_eq!(messages_per_entry(&light), 3.0 * (k - 1.0), "N = {n}");
            let heavy = run_mutex(7, n, 3, Load::Heavy, fifo_lan(), factory(n)).expect("run");
            let per_entry = messages_per_entry(&heavy);
            assert!(
                per_entry >= 3.0 * (k - 1.0) && per_entry <= 6.0 * (k - 1.0),
                "N = {n}: {per_entry} messages per entry, K = {k}"
            );
        }
    }
}

//! The Chord actor: routing state, iterative lookups, ring maintenance and key storage.

use super::msg::{
    ChordId, ChordMsg, Item, OwnerReply, OwnerRequest, Peer, Route, RpcId, StepAnswer, Version,
};
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use synod_core::{Actor, ClientId, Ctx, Endpoint, NodeId, StorageExt};

/// Bits in an identifier: the number of fingers.
pub const ID_BITS: u32 = 64;

const INCARNATION_KEY: &[u8] = b"chord/incarnation";
const CREATED_KEY: &[u8] = b"chord/created";

/// Timer keys.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChordTimer {
    /// Try to join (again).
    Join,
    /// Run stabilize.
    Stabilize,
    /// Refresh one finger.
    FixFingers,
    /// Ping the predecessor.
    CheckPredecessor,
    /// Push this node's keys to its replicas.
    Replicate,
    /// A request with this id got no answer in time.
    Rpc(RpcId),
}

/// Tunables. [`ChordConfig::new`] gives defaults for a LAN.
#[derive(Clone, Debug)]
pub struct ChordConfig {
    /// Nodes to join through; any one that is on the ring will do.
    pub seeds: Vec<NodeId>,
    /// Whether this node starts a new ring on its very first start instead of joining.
    /// Exactly one node of a cluster sets it. After a restart it joins like the others.
    pub create: bool,
    /// Length r of the successor list (ToN §IV-E: r = Ω(log N) survives the failure of
    /// half the nodes with high probability).
    pub successor_list: usize,
    /// Successors that hold a copy of each key (0: no replication).
    pub replicas: usize,
    /// Mean period of stabilize; each wait is drawn uniformly from 0.5× to 1.5× the mean.
    pub stabilize_interval: Duration,
    /// Mean period of fix_fingers (one finger per run).
    pub fix_fingers_interval: Duration,
    /// Mean period of check_predecessor.
    pub check_predecessor_interval: Duration,
    /// Mean period of the replica push.
    pub replicate_interval: Duration,
    /// How long to wait for an answer before sending a request again.
    pub rpc_timeout: Duration,
    /// Times a request is sent again before its peer counts as dead (and one timeout is
    /// counted). The paper's simulator loses no messages: its experiments use 0.
    pub rpc_retries: u32,
    /// Wait this long after starting before the first join attempt.
    pub join_delay: Duration,
    /// Take a new identifier at every restart (an experiment's "new node"); otherwise the
    /// identifier is fixed by the node id.
    pub fresh_id_on_restart: bool,
    /// Candidates a node returns when asked for the next routing step.
    pub candidates: usize,
    /// A lookup that needs more steps (hops, timeouts and redirects) than this fails.
    pub max_steps: u32,
}

impl ChordConfig {
    /// Defaults for a LAN: r = 8, 2 replicas, stabilize every second, 250 ms timeouts.
    pub fn new(seeds: Vec<NodeId>, create: bool) -> Self {
        ChordConfig {
            seeds,
            create,
            successor_list: 8,
            replicas: 2,
            stabilize_interval: Duration::from_secs(1),
            fix_fingers_interval: Duration::from_millis(500),
            check_predecessor_interval: Duration::from_secs(1),
            replicate_interval: Duration::from_secs(2),
            rpc_timeout: Duration::from_millis(250),
            rpc_retries: 2,
            join_delay: Duration::ZERO,
            fresh_id_on_restart: false,
            candidates: 8,
            max_steps: 128,
        }
    }
}

/// What a client asked for.
#[derive(Clone, Debug)]
enum ClientOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Get { key: Vec<u8> },
    Locate,
}

#[derive(Clone, Debug)]
enum Purpose {
    Join,
    Finger(u32),
    Client { client: ClientId, op: ClientOp },
}

#[derive(Debug)]
struct Lookup {
    target: ChordId,
    purpose: Purpose,
    /// Nodes preceding the target, keyed by their distance to it: the first is closest.
    candidates: BTreeMap<u64, Peer>,
    asked: BTreeSet<NodeId>,
    dead: BTreeSet<NodeId>,
    /// Owner phase: the nodes to try as the target's owner, in order, with `force`.
    owners: Option<VecDeque<(Peer, bool)>>,
    route: Route,
    steps: u32,
}

#[derive(Debug)]
struct Outstanding {
    pending: Pending,
    to: NodeId,
    msg: ChordMsg,
    tries: u32,
}

#[derive(Debug)]
enum Pending {
    Query { lookup: u64, peer: Peer },
    Owner { lookup: u64, peer: Peer },
    Stabilize { peer: Peer },
    CheckPredecessor { peer: Peer },
}

/// Counters for experiments. Volatile: a crash resets them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChordCounters {
    /// Lookups this node started that completed.
    pub lookups_completed: u64,
    /// Lookups this node started that failed.
    pub lookups_failed: u64,
    /// Messages this node sent.
    pub messages_sent: u64,
}

/// One Chord node. See the module header for the protocol.
#[derive(Debug)]
pub struct Chord {
    config: ChordConfig,
    me: Peer,
    joined: bool,
    left: bool,
    predecessor: Option<Peer>,
    successors: Vec<Peer>,
    fingers: Vec<Option<Peer>>,
    next_finger: u32,
    finger_lookup: Option<u64>,
    items: BTreeMap<(ChordId, Vec<u8>), Item>,
    lookups: BTreeMap<u64, Lookup>,
    pending: BTreeMap<RpcId, Outstanding>,
    next_rpc: u64,
    join_attempts: u32,
    counters: ChordCounters,
    #[cfg(test)]
    pub(crate) broken_skip_migration: bool,
}

type Cx<'a, 'b> = &'a mut Ctx<'b, ChordMsg, ChordTimer>;

impl Chord {
    /// A node that will start with `config`. Its identifier is fixed in `on_start`.
    pub fn new(config: ChordConfig) -> Self {
        Chord {
            config,
            me: Peer {
                node: NodeId(0),
                id: ChordId(0),
            },
            joined: false,
            left: false,
            predecessor: None,
            successors: Vec::new(),
            fingers: vec![None; ID_BITS as usize],
            next_finger: 0,
            finger_lookup: None,
            items: BTreeMap::new(),
            lookups: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_rpc: 0,
            join_attempts: 0,
            counters: ChordCounters::default(),
            #[cfg(test)]
            broken_skip_migration: false,
        }
    }

    // ---- getters -------------------------------------------------------------------

    /// This node's address and identifier.
    pub fn peer(&self) -> Peer {
        self.me
    }

    /// Whether the node is on the ring (created it or finished joining, and has not left).
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// Whether the node left the ring gracefully.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// The predecessor, if known.
    pub fn predecessor(&self) -> Option<Peer> {
        self.predecessor
    }

    /// The successor list, nearest first (empty: alone on the ring).
    pub fn successors(&self) -> &[Peer] {
        &self.successors
    }

    /// Finger `i` (the first node at or after `id + 2^i`), if known and not the successor.
    pub fn finger(&self, i: u32) -> Option<Peer> {
        self.fingers.get(i as usize).copied().flatten()
    }

    /// Every key this node holds (as owner or replica).
    pub fn items(&self) -> impl Iterator<Item = (&[u8], &Item)> {
        self.items.iter().map(|((_, k), v)| (k.as_slice(), v))
    }

    /// The item under `key`, if held here.
    pub fn item(&self, key: &[u8]) -> Option<&Item> {
        self.items.get(&(ChordId::of_key(key), key.to_vec()))
    }

    /// Counters for experiments.
    pub fn counters(&self) -> ChordCounters {
        self.counters
    }

    /// The configuration.
    pub fn config(&self) -> &ChordConfig {
        &self.config
    }

    /// The first successor, or this node when it is alone.
    fn successor(&self) -> Peer {
        self.successors.first().copied().unwrap_or(self.me)
    }

    // ---- helpers -------------------------------------------------------------------

    fn send(&mut self, ctx: Cx<'_, '_>, to: NodeId, msg: ChordMsg) {
        self.counters.messages_sent += 1;
        ctx.send(to, msg);
    }

    fn jitter(ctx: Cx<'_, '_>, mean: Duration) -> Duration {
        let nanos = mean.as_nanos().min(u128::from(u64::MAX)) as u64;
        if nanos < 2 {
            return mean;
        }
        Duration::from_nanos(ctx.rng().gen_range(nanos / 2..=nanos + nanos / 2))
    }

    /// Send a request built by `make` to `to` and wait for its answer; it is sent again
    /// up to `rpc_retries` times (a lost message is not a dead node) before it times out.
    fn call(
        &mut self,
        ctx: Cx<'_, '_>,
        to: NodeId,
        pending: Pending,
        make: impl FnOnce(RpcId) -> ChordMsg,
    ) {
        self.next_rpc = self.next_rpc.wrapping_add(1);
        let id = RpcId(self.next_rpc);
        let msg = make(id);
        self.send(ctx, to, msg.clone());
        self.pending.insert(
            id,
            Outstanding {
                pending,
                to,
                msg,
                tries: 0,
            },
        );
        ctx.set_timer(ChordTimer::Rpc(id), self.config.rpc_timeout);
    }

    fn take_rpc(&mut self, ctx: Cx<'_, '_>, rpc: RpcId) -> Option<Pending> {
        let p = self.pending.remove(&rpc)?;
        ctx.cancel_timer(ChordTimer::Rpc(rpc));
        Some(p.pending)
    }

    /// Forget a node found dead: it leaves the successor list and the finger table.
    fn forget(&mut self, node: NodeId) {
        self.successors.retain(|p| p.node != node);
        for f in &mut self.fingers {
            if f.is_some_and(|p| p.node == node) {
                *f = None;
            }
        }
        if self.predecessor.is_some_and(|p| p.node == node) {
            self.predecessor = None;
        }
    }

    /// Fingers and successors in `(me, target)`, closest to the target first (ToN Fig. 5,
    /// closest_preceding_node, extended to the successor list as in §IV-E).
    fn closest_preceding(&self, target: ChordId, limit: usize) -> Vec<Peer> {
        let mut out: Vec<Peer> = Vec::with_capacity(self.successors.len() + 16);
        let mut last: Option<NodeId> = None;
        for p in self.fingers.iter().flatten().chain(self.successors.iter()) {
            // Consecutive fingers often name the same node: skip the repeats cheaply.
            if last == Some(p.node) {
                continue;
            }
            last = Some(p.node);
            if p.node != self.me.node && p.id.in_open(self.me.id, target) {
                out.push(*p);
            }
        }
        out.sort_unstable_by_key(|p| (p.id.distance_to(target), p.node));
        out.dedup_by_key(|p| p.node);
        out.truncate(limit);
        out
    }

    /// The successor list, if it reaches `target`: its first live entry at or after the
    /// target owns it. Using the whole list, not only the first successor, lets a lookup
    /// step over failed successors (ToN §IV-E).
    fn successors_covering(&self, target: ChordId) -> Option<Vec<Peer>> {
        if self.successors.is_empty() {
            return Some(vec![self.me]);
        }
        self.successors
            .iter()
            .any(|s| target.in_half_open(self.me.id, s.id))
            .then(|| self.successors.clone())
    }

    /// Whether this node owns `target` by its own view: `target ∈ (predecessor, me]`.
    fn owns(&self, target: ChordId) -> bool {
        match self.predecessor {
            Some(p) => target.in_half_open(p.id, self.me.id),
            None => self.successors.is_empty(),
        }
    }

    fn set_successors(&mut self, list: impl IntoIterator<Item = Peer>) {
        let mut seen = BTreeSet::new();
        let me = self.me.node;
        let r = self.config.successor_list.max(1);
        self.successors = list
            .into_iter()
            .filter(|p| p.node != me && seen.insert(p.node))
            .take(r)
            .collect();
    }

    fn merge_item(&mut self, ctx: Cx<'_, '_>, key: Vec<u8>, item: Item) -> bool {
        let slot = (ChordId::of_key(&key), key);
        let newer = self
            .items
            .get(&slot)
            .is_none_or(|old| item.version > old.version);
        if newer {
            ctx.storage().append_value(&(&slot.1, &item));
            self.items.insert(slot, item);
        }
        newer
    }

    /// Items whose key id lies in `(from, to]`.
    fn items_in(&self, from: ChordId, to: ChordId) -> Vec<(Vec<u8>, Item)> {
        self.items
            .iter()
            .filter(|((id, _), _)| id.in_half_open(from, to))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }

    /// XOR over `(key, version)` of the items in `(from, to]`: equal sets, equal digests.
    fn digest(&self, from: ChordId, to: ChordId) -> u64 {
        self.items
            .iter()
            .filter(|((id, _), _)| id.in_half_open(from, to))
            .fold(0, |acc, ((id, _), item)| {
                acc ^ crate::hashing::mix64(
                    id.0 ^ item.version.stamp.rotate_left(21) ^ u64::from(item.version.node.0),
                )
            })
    }

    /// Keys this node owns, by its own view.
    fn primary_items(&self) -> Vec<(Vec<u8>, Item)> {
        match self.predecessor {
            Some(p) => self.items_in(p.id, self.me.id),
            None if self.successors.is_empty() => self.items_in(self.me.id, self.me.id),
            None => Vec::new(),
        }
    }

    fn push_replicas(&mut self, ctx: Cx<'_, '_>, items: Vec<(Vec<u8>, Item)>) {
        if items.is_empty() {
            return;
        }
        let targets: Vec<NodeId> = self
            .successors
            .iter()
            .take(self.config.replicas)
            .map(|p| p.node)
            .collect();
        for to in targets {
            self.send(
                ctx,
                to,
                ChordMsg::Replicate {
                    items: items.clone(),
                },
            );
        }
    }

    fn start_timers(&mut self, ctx: Cx<'_, '_>) {
        let c = self.config.clone();
        let d = Self::jitter(ctx, c.stabilize_interval);
        ctx.set_timer(ChordTimer::Stabilize, d);
        let d = Self::jitter(ctx, c.fix_fingers_interval);
        ctx.set_timer(ChordTimer::FixFingers, d);
        let d = Self::jitter(ctx, c.check_predecessor_interval);
        ctx.set_timer(ChordTimer::CheckPredecessor, d);
        let d = Self::jitter(ctx, c.replicate_interval);
        ctx.set_timer(ChordTimer::Replicate, d);
    }

    // ---- lookups -------------------------------------------------------------------

    fn start_lookup(&mut self, ctx: Cx<'_, '_>, target: ChordId, purpose: Purpose) {
        self.next_rpc = self.next_rpc.wrapping_add(1);
        let id = self.next_rpc;
        let mut lookup = Lookup {
            target,
            purpose,
            candidates: BTreeMap::new(),
            asked: BTreeSet::new(),
            dead: BTreeSet::new(),
            owners: None,
            route: Route::default(),
            steps: 0,
        };
        if let Purpose::Join = lookup.purpose {
            let seeds: Vec<NodeId> = self
                .config
                .seeds
                .iter()
                .copied()
                .filter(|&n| n != self.me.node)
                .collect();
            let Some(&seed) = seeds.choose(ctx.rng()) else {
                return;
            };
            // The seed's identifier is unknown; distance 0 makes it the first to ask.
            lookup.candidates.insert(
                0,
                Peer {
                    node: seed,
                    id: target,
                },
            );
        } else if self.owns(target) {
            lookup.owners = Some(VecDeque::from([(self.me, false)]));
        } else if let Some(list) = self.successors_covering(target) {
            split_successors(&mut lookup, self.me, list);
        } else {
            for p in self.closest_preceding(target, usize::MAX) {
                lookup.candidates.insert(p.id.distance_to(target), p);
            }
        }
        if let (Some(owners), Purpose::Finger(_)) = (&lookup.owners, &lookup.purpose) {
            let first = owners.front().map_or(self.me, |o| o.0);
            self.lookups.insert(id, lookup);
            self.finish_lookup(ctx, id, Ok((first, OwnerReply::Probed)));
            return;
        }
        self.lookups.insert(id, lookup);
        self.advance(ctx, id);
    }

    /// Take the lookup's next step: ask the closest untried candidate, or the next owner.
    fn advance(&mut self, ctx: Cx<'_, '_>, id: u64) {
        loop {
            let me = self.me;
            let max_steps = self.config.max_steps;
            let Some(l) = self.lookups.get_mut(&id) else {
                return;
            };
            l.steps += 1;
            if l.steps > max_steps {
                self.finish_lookup(ctx, id, Err("too many steps".into()));
                return;
            }
            let target = l.target;
            if let Some(owners) = &mut l.owners {
                let next = loop {
                    match owners.pop_front() {
                        Some((p, force)) if !l.dead.contains(&p.node) => break Some((p, force)),
                        Some(_) => continue,
                        None => break None,
                    }
                };
                let Some((owner, force)) = next else {
                    // Every owner this answer named is dead: a live node closer to the
                    // target, if one is known, has a successor list that reaches further.
                    let more = l
                        .candidates
                        .values()
                        .any(|p| !l.asked.contains(&p.node) && !l.dead.contains(&p.node));
                    if more {
                        l.owners = None;
                        continue;
                    }
                    self.finish_lookup(ctx, id, Err("every candidate owner is dead".into()));
                    return;
                };
                let request = match &l.purpose {
                    Purpose::Client { op, .. } => match op {
                        ClientOp::Put { key, value } => OwnerRequest::Store {
                            key: key.clone(),
                            item: Item {
                                value: value.clone(),
                                version: Version {
                                    stamp: ctx.now().as_nanos(),
                                    node: me.node,
                                },
                            },
                        },
                        ClientOp::Get { key } => OwnerRequest::Fetch { key: key.clone() },
                        ClientOp::Locate => OwnerRequest::Probe,
                    },
                    _ => OwnerRequest::Probe,
                };
                if owner.node == me.node {
                    let reply = self.serve_owner(ctx, target, force, request);
                    match reply {
                        Some(reply) => {
                            if self.on_owner_reply(ctx, id, owner, reply) {
                                return;
                            }
                            continue;
                        }
                        None => {
                            if let Some(l) = self.lookups.get_mut(&id) {
                                l.dead.insert(me.node);
                            }
                            continue;
                        }
                    }
                }
                self.call(
                    ctx,
                    owner.node,
                    Pending::Owner {
                        lookup: id,
                        peer: owner,
                    },
                    |rpc| ChordMsg::OwnerOp {
                        rpc,
                        to: Some(owner.id),
                        target,
                        force,
                        request,
                    },
                );
                return;
            }
            let next = l
                .candidates
                .values()
                .find(|p| !l.asked.contains(&p.node) && !l.dead.contains(&p.node))
                .copied();
            let Some(peer) = next else {
                self.finish_lookup(ctx, id, Err("no route to the target".into()));
                return;
            };
            l.asked.insert(peer.node);
            // A seed's identifier is not known before it answers.
            let to = (!matches!(l.purpose, Purpose::Join)).then_some(peer.id);
            self.call(ctx, peer.node, Pending::Query { lookup: id, peer }, |rpc| {
                ChordMsg::FindSuccessor { rpc, to, target }
            });
            return;
        }
    }

    fn on_step(&mut self, ctx: Cx<'_, '_>, id: u64, from: Peer, answer: StepAnswer) {
        let me = self.me.node;
        let max = self.config.candidates.max(1) * 2;
        let Some(l) = self.lookups.get_mut(&id) else {
            return;
        };
        l.route.hops += 1;
        match answer {
            StepAnswer::Done { mut successors } => {
                successors.truncate(self.config.successor_list.max(1) + 1);
                match l.purpose {
                    Purpose::Join | Purpose::Finger(_) => {
                        let target = l.target;
                        let first = successors
                            .iter()
                            .find(|p| p.node != me && target.in_half_open(from.id, p.id))
                            .copied();
                        match first {
                            Some(p) => self.finish_lookup(ctx, id, Ok((p, OwnerReply::Probed))),
                            None => self.finish_lookup(ctx, id, Err("no successor".into())),
                        }
                        return;
                    }
                    Purpose::Client { .. } => split_successors(l, from, successors),
                }
            }
            StepAnswer::Closer { candidates } => {
                for c in candidates.into_iter().take(max) {
                    if c.node != me && c.id.in_open(from.id, l.target) {
                        l.candidates.insert(c.id.distance_to(l.target), c);
                    }
                }
            }
        }
        self.advance(ctx, id);
    }

    /// Returns true when the lookup is finished or waiting on a message.
    fn on_owner_reply(&mut self, ctx: Cx<'_, '_>, id: u64, owner: Peer, reply: OwnerReply) -> bool {
        let Some(l) = self.lookups.get_mut(&id) else {
            return true;
        };
        match reply {
            OwnerReply::NotResponsible { predecessor } => {
                let owners = l.owners.get_or_insert_with(VecDeque::new);
                if l.dead.contains(&predecessor.node) || predecessor.node == owner.node {
                    owners.push_front((owner, true));
                } else {
                    owners.push_front((owner, false));
                    owners.push_front((predecessor, false));
                }
                false
            }
            reply => {
                self.finish_lookup(ctx, id, Ok((owner, reply)));
                true
            }
        }
    }

    fn on_lookup_timeout(&mut self, ctx: Cx<'_, '_>, id: u64, peer: Peer) {
        let Some(l) = self.lookups.get_mut(&id) else {
            return;
        };
        l.route.timeouts += 1;
        l.dead.insert(peer.node);
        self.forget(peer.node);
        self.advance(ctx, id);
    }

    fn finish_lookup(
        &mut self,
        ctx: Cx<'_, '_>,
        id: u64,
        outcome: Result<(Peer, OwnerReply), String>,
    ) {
        let Some(l) = self.lookups.remove(&id) else {
            return;
        };
        match &outcome {
            Ok(_) => self.counters.lookups_completed += 1,
            Err(_) => self.counters.lookups_failed += 1,
        }
        let route = l.route;
        match (l.purpose, outcome) {
            (Purpose::Join, Ok((successor, _))) => self.complete_join(ctx, successor),
            (Purpose::Join, Err(_)) => {
                let d = Self::jitter(ctx, self.config.rpc_timeout);
                ctx.set_timer(ChordTimer::Join, d);
            }
            (Purpose::Finger(i), outcome) => {
                self.finger_lookup = None;
                if let Ok((s, _)) = outcome {
                    self.set_finger(i, s);
                }
            }
            (Purpose::Client { client, op }, Ok((owner, reply))) => {
                let msg = match (op, reply) {
                    (ClientOp::Put { key, .. }, OwnerReply::Stored) => {
                        ChordMsg::PutOk { key, owner, route }
                    }
                    (ClientOp::Get { key }, OwnerReply::Fetched(item)) => ChordMsg::GetOk {
                        key,
                        value: item.map(|i| i.value),
                        owner,
                        route,
                    },
                    (ClientOp::Locate, OwnerReply::Probed) => ChordMsg::Located {
                        target: l.target,
                        owner,
                        route,
                    },
                    (_, reply) => ChordMsg::Failed {
                        reason: format!("the owner answered {reply:?}"),
                        route,
                    },
                };
                ctx.reply(client, msg);
            }
            (Purpose::Client { client, .. }, Err(reason)) => {
                ctx.reply(client, ChordMsg::Failed { reason, route });
            }
        }
    }

    fn set_finger(&mut self, i: u32, s: Peer) {
        if s.node == self.me.node {
            return;
        }
        // Every later finger whose start still precedes s has s as its successor too.
        let mut j = i;
        while j < ID_BITS && self.me.id.finger_start(j).in_half_open(self.me.id, s.id) {
            self.fingers[j as usize] = Some(s);
            j += 1;
        }
        self.next_finger = j % ID_BITS;
    }

    // ---- owner side ----------------------------------------------------------------

    /// Serve a request as the owner of `target`. `None`: not on the ring, no answer.
    fn serve_owner(
        &mut self,
        ctx: Cx<'_, '_>,
        target: ChordId,
        force: bool,
        request: OwnerRequest,
    ) -> Option<OwnerReply> {
        if !self.joined {
            return None;
        }
        if !force && !self.owns(target) {
            if let Some(p) = self.predecessor {
                return Some(OwnerReply::NotResponsible { predecessor: p });
            }
        }
        Some(match request {
            OwnerRequest::Store { key, item } => {
                if self.merge_item(ctx, key.clone(), item.clone()) {
                    self.push_replicas(ctx, vec![(key, item)]);
                }
                OwnerReply::Stored
            }
            OwnerRequest::Fetch { key } => {
                OwnerReply::Fetched(self.items.get(&(ChordId::of_key(&key), key)).cloned())
            }
            OwnerRequest::Probe => OwnerReply::Probed,
        })
    }

    // ---- joining -------------------------------------------------------------------

    fn complete_join(&mut self, ctx: Cx<'_, '_>, successor: Peer) {
        if self.joined || self.left {
            return;
        }
        self.joined = true;
        self.predecessor = None;
        self.set_successors([successor]);
        self.start_timers(ctx);
        // Stabilize at once, so the successor learns of us and hands over our keys.
        self.stabilize(ctx);
    }

    fn create_ring(&mut self, ctx: Cx<'_, '_>) {
        self.joined = true;
        self.predecessor = None;
        self.successors.clear();
        self.start_timers(ctx);
    }

    // ---- maintenance ---------------------------------------------------------------

    fn stabilize(&mut self, ctx: Cx<'_, '_>) {
        if self.successors.is_empty() {
            // Alone: a node that notified us is our successor too (ToN Fig. 6).
            if let Some(p) = self.predecessor {
                self.set_successors([p]);
            } else {
                return;
            }
        }
        let s = self.successor();
        self.call(ctx, s.node, Pending::Stabilize { peer: s }, |rpc| {
            ChordMsg::GetPredecessor { rpc, to: s.id }
        });
    }

    fn on_predecessor(
        &mut self,
        ctx: Cx<'_, '_>,
        s: Peer,
        predecessor: Option<Peer>,
        successors: Vec<Peer>,
    ) {
        let mut list = Vec::with_capacity(self.config.successor_list + 1);
        if let Some(x) = predecessor {
            if x.node != self.me.node && x.id.in_open(self.me.id, s.id) {
                list.push(x);
            }
        }
        list.push(s);
        // The successor's list wraps around to this node in a small ring: what follows
        // this node there is stale, so cut it off (otherwise a dead node's entry would
        // circulate for ever in a ring smaller than r).
        let me = self.me.node;
        list.extend(
            successors
                .into_iter()
                .take(self.config.successor_list)
                .take_while(|p| p.node != me),
        );
        self.set_successors(list);
        let first = self.successor();
        if first.node != self.me.node {
            let me = self.me;
            self.send(ctx, first.node, ChordMsg::Notify { candidate: me });
        }
    }

    fn on_notify(&mut self, ctx: Cx<'_, '_>, c: Peer) {
        if c.node == self.me.node {
            return;
        }
        let accept = match self.predecessor {
            None => true,
            Some(p) => p.node == c.node || c.id.in_open(p.id, self.me.id),
        };
        if !accept {
            return;
        }
        let old = self.predecessor.map_or(self.me.id, |p| p.id);
        let changed = self.predecessor.map(|p| p.node) != Some(c.node);
        self.predecessor = Some(c);
        if self.successors.is_empty() {
            self.set_successors([c]);
        }
        if changed {
            // Migration on join (Chord §4.4): keys in (old predecessor, c] now belong to c.
            // They stay here too, as c's first replica.
            #[cfg(test)]
            if self.broken_skip_migration {
                return;
            }
            let items = self.items_in(old, c.id);
            if !items.is_empty() {
                self.send(ctx, c.node, ChordMsg::Replicate { items });
            }
        }
    }

    fn fix_fingers(&mut self, ctx: Cx<'_, '_>) {
        if self.finger_lookup.is_some() || self.successors.is_empty() {
            return;
        }
        let succ = self.successor();
        // Fingers that start before the successor are the successor: skip them.
        let mut tries = 0;
        while tries < ID_BITS
            && self
                .me
                .id
                .finger_start(self.next_finger)
                .in_half_open(self.me.id, succ.id)
        {
            self.fingers[self.next_finger as usize] = None;
            self.next_finger = (self.next_finger + 1) % ID_BITS;
            tries += 1;
        }
        if tries == ID_BITS {
            return;
        }
        let i = self.next_finger;
        self.next_finger = (i + 1) % ID_BITS;
        self.finger_lookup = Some(self.next_rpc.wrapping_add(1));
        self.start_lookup(ctx, self.me.id.finger_start(i), Purpose::Finger(i));
    }

    fn leave(&mut self, ctx: Cx<'_, '_>) {
        if self.joined {
            let me = self.me;
            let items = self.primary_items();
            if let Some(s) = self.successors.first().copied() {
                let predecessor = self.predecessor;
                self.send(
                    ctx,
                    s.node,
                    ChordMsg::Handoff {
                        leaving: me,
                        items,
                        predecessor,
                    },
                );
            }
            if let Some(p) = self.predecessor {
                let successors = self.successors.clone();
                self.send(
                    ctx,
                    p.node,
                    ChordMsg::SuccessorLeaving {
                        leaving: me,
                        successors,
                    },
                );
            }
        }
        self.joined = false;
        self.left = true;
        self.lookups.clear();
        self.pending.clear();
        for t in [
            ChordTimer::Join,
            ChordTimer::Stabilize,
            ChordTimer::FixFingers,
            ChordTimer::CheckPredecessor,
            ChordTimer::Replicate,
        ] {
            ctx.cancel_timer(t);
        }
    }

    fn on_client(&mut self, ctx: Cx<'_, '_>, client: ClientId, msg: ChordMsg) {
        let fail = |reason: &str| ChordMsg::Failed {
            reason: reason.to_string(),
            route: Route::default(),
        };
        if let ChordMsg::Leave = msg {
            self.leave(ctx);
            ctx.reply(client, ChordMsg::LeftRing);
            return;
        }
        if !self.joined {
            ctx.reply(client, fail("this node is not on the ring"));
            return;
        }
        let (target, op) = match msg {
            ChordMsg::Put { key, value } => (ChordId::of_key(&key), ClientOp::Put { key, value }),
            ChordMsg::Get { key } => (ChordId::of_key(&key), ClientOp::Get { key }),
            ChordMsg::Locate { target } => (target, ClientOp::Locate),
            other => {
                ctx.reply(
                    client,
                    fail(&format!("not a client request: {}", variant_name(&other))),
                );
                return;
            }
        };
        self.start_lookup(ctx, target, Purpose::Client { client, op });
    }
}

/// Split a successor list from `from` that reaches the lookup's target: entries before the
/// target become routing candidates (their own lists reach further), the rest are the
/// owners to try, in order.
fn split_successors(l: &mut Lookup, from: Peer, successors: Vec<Peer>) {
    let mut owners = VecDeque::new();
    for p in successors {
        if l.dead.contains(&p.node) {
            continue;
        }
        if p.id.in_open(from.id, l.target) {
            l.candidates.insert(p.id.distance_to(l.target), p);
        } else {
            owners.push_back((p, false));
        }
    }
    l.owners = Some(owners);
}

fn variant_name(msg: &ChordMsg) -> String {
    let text = format!("{msg:?}");
    text.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_string()
}

impl Actor for Chord {
    type Msg = ChordMsg;
    type Timer = ChordTimer;

    fn on_start(&mut self, ctx: &mut Ctx<'_, ChordMsg, ChordTimer>) {
        let node = ctx.me();
        self.next_rpc = ctx.rng().gen();
        let mut incarnation: u64 = ctx
            .storage()
            .get_value(INCARNATION_KEY)
            .ok()
            .flatten()
            .unwrap_or(0);
        if self.config.fresh_id_on_restart {
            incarnation += 1;
            ctx.storage().put_value(INCARNATION_KEY, &incarnation);
        }
        self.me = Peer {
            node,
            id: ChordId::of_node(
                node,
                if self.config.fresh_id_on_restart {
                    incarnation
                } else {
                    0
                },
            ),
        };
        // Keys survive a restart: replay the item log (a record that fails to decode is
        // skipped; its key is still held by the replicas).
        let (first, end) = ctx.storage().log_bounds();
        let mut i = first;
        while i < end {
            if let Ok(Some((key, item))) = ctx.storage().read_value::<(Vec<u8>, Item)>(i) {
                let slot = (ChordId::of_key(&key), key);
                let newer = self
                    .items
                    .get(&slot)
                    .is_none_or(|old| item.version > old.version);
                if newer {
                    self.items.insert(slot, item);
                }
            }
            i = i.next();
        }
        let created = ctx.storage().get(CREATED_KEY).is_some();
        if self.config.create && !created {
            ctx.storage().put(CREATED_KEY, b"1");
            self.create_ring(ctx);
        } else {
            let d = self.config.join_delay;
            ctx.set_timer(ChordTimer::Join, d);
        }
    }

    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, ChordMsg, ChordTimer>,
        from: Endpoint,
        msg: ChordMsg,
    ) {
        let from = match from {
            Endpoint::Client(client) => {
                if self.left {
                    if let ChordMsg::Leave = msg {
                        ctx.reply(client, ChordMsg::LeftRing);
                    } else {
                        ctx.reply(
                            client,
                            ChordMsg::Failed {
                                reason: "this node has left the ring".into(),
                                route: Route::default(),
                            },
                        );
                    }
                    return;
                }
                self.on_client(ctx, client, msg);
                return;
            }
            Endpoint::Node(n) => n,
        };
        if self.left {
            return;
        }
        match msg {
            ChordMsg::FindSuccessor { rpc, to, target } => {
                if !self.joined || to.is_some_and(|id| id != self.me.id) {
                    return;
                }
                let answer = if let Some(successors) = self.successors_covering(target) {
                    StepAnswer::Done { successors }
                } else {
                    StepAnswer::Closer {
                        candidates: self.closest_preceding(target, self.config.candidates),
                    }
                };
                let responder = self.me;
                self.send(
                    ctx,
                    from,
                    ChordMsg::Step {
                        rpc,
                        responder,
                        answer,
                    },
                );
            }
            ChordMsg::Step {
                rpc,
                responder,
                answer,
            } => {
                if let Some(Pending::Query { lookup, peer }) = self.take_rpc(ctx, rpc) {
                    if responder.node == peer.node {
                        self.on_step(ctx, lookup, responder, answer);
                    }
                }
            }
            ChordMsg::OwnerOp {
                rpc,
                to,
                target,
                force,
                request,
            } => {
                if to.is_some_and(|id| id != self.me.id) {
                    return;
                }
                if let Some(reply) = self.serve_owner(ctx, target, force, request) {
                    self.send(ctx, from, ChordMsg::OwnerDone { rpc, reply });
                }
            }
            ChordMsg::OwnerDone { rpc, reply } => {
                if let Some(Pending::Owner { lookup, peer }) = self.take_rpc(ctx, rpc) {
                    if !self.on_owner_reply(ctx, lookup, peer, reply) {
                        self.advance(ctx, lookup);
                    }
                }
            }
            ChordMsg::GetPredecessor { rpc, to } => {
                if !self.joined || to != self.me.id {
                    return;
                }
                let (predecessor, successors) = (self.predecessor, self.successors.clone());
                self.send(
                    ctx,
                    from,
                    ChordMsg::Predecessor {
                        rpc,
                        predecessor,
                        successors,
                    },
                );
            }
            ChordMsg::Predecessor {
                rpc,
                predecessor,
                successors,
            } => {
                if let Some(Pending::Stabilize { peer }) = self.take_rpc(ctx, rpc) {
                    if self.joined {
                        self.on_predecessor(ctx, peer, predecessor, successors);
                    }
                }
            }
            ChordMsg::Notify { candidate } => {
                if self.joined && candidate.node == from {
                    self.on_notify(ctx, candidate);
                }
            }
            ChordMsg::Ping { rpc, to } => {
                if self.joined && to == self.me.id {
                    self.send(ctx, from, ChordMsg::Pong { rpc });
                }
            }
            ChordMsg::Pong { rpc } => {
                self.take_rpc(ctx, rpc);
            }
            ChordMsg::Replicate { items } => {
                for (key, item) in items {
                    self.merge_item(ctx, key, item);
                }
            }
            ChordMsg::SyncRange {
                from: lo,
                to,
                digest,
            } => {
                #[cfg(test)]
                if self.broken_skip_migration {
                    return;
                }
                if self.joined && self.digest(lo, to) != digest {
                    let items = self.items_in(lo, to);
                    if !items.is_empty() {
                        self.send(ctx, from, ChordMsg::Replicate { items });
                    }
                }
            }
            ChordMsg::Handoff {
                leaving,
                items,
                predecessor,
            } => {
                let mut fresh = Vec::new();
                for (key, item) in items {
                    if self.merge_item(ctx, key.clone(), item.clone()) {
                        fresh.push((key, item));
                    }
                }
                self.forget(leaving.node);
                if self.predecessor.is_none() {
                    self.predecessor = predecessor.filter(|p| p.node != self.me.node);
                }
                self.push_replicas(ctx, fresh);
            }
            ChordMsg::SuccessorLeaving {
                leaving,
                successors,
            } => {
                let was_first = self.successors.first().map(|p| p.node) == Some(leaving.node);
                let mut list: Vec<Peer> = self.successors.clone();
                if was_first {
                    list = successors.into_iter().chain(list).collect();
                }
                list.retain(|p| p.node != leaving.node);
                self.forget(leaving.node);
                self.set_successors(list);
            }
            // Client-facing messages from a node are not requests; ignore them.
            ChordMsg::Put { .. }
            | ChordMsg::Get { .. }
            | ChordMsg::Locate { .. }
            | ChordMsg::Leave
            | ChordMsg::PutOk { .. }
            | ChordMsg::GetOk { .. }
            | ChordMsg::Located { .. }
            | ChordMsg::LeftRing
            | ChordMsg::Failed { .. } => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, ChordMsg, ChordTimer>, timer: ChordTimer) {
        if self.left {
            return;
        }
        let c = self.config.clone();
        match timer {
            ChordTimer::Join => {
                if !self.joined {
                    self.join_attempts += 1;
                    let target = self.me.id;
                    self.start_lookup(ctx, target, Purpose::Join);
                    if self.config.seeds.iter().all(|&n| n == self.me.node) {
                        // Nobody to join through: try again later (a misconfiguration).
                        ctx.set_timer(ChordTimer::Join, c.rpc_timeout);
                    }
                }
            }
            ChordTimer::Stabilize => {
                if self.joined {
                    self.stabilize(ctx);
                    let d = Self::jitter(ctx, c.stabilize_interval);
                    ctx.set_timer(ChordTimer::Stabilize, d);
                }
            }
            ChordTimer::FixFingers => {
                if self.joined {
                    self.fix_fingers(ctx);
                    let d = Self::jitter(ctx, c.fix_fingers_interval);
                    ctx.set_timer(ChordTimer::FixFingers, d);
                }
            }
            ChordTimer::CheckPredecessor => {
                if self.joined {
                    if let Some(p) = self.predecessor {
                        self.call(ctx, p.node, Pending::CheckPredecessor { peer: p }, |rpc| {
                            ChordMsg::Ping { rpc, to: p.id }
                        });
                    }
                    let d = Self::jitter(ctx, c.check_predecessor_interval);
                    ctx.set_timer(ChordTimer::CheckPredecessor, d);
                }
            }
            ChordTimer::Replicate => {
                if self.joined {
                    let items = self.primary_items();
                    self.push_replicas(ctx, items);
                    // Anti-entropy: keys of this node's range may still sit further along
                    // the ring, at an old owner from before several joins, or a migration
                    // may have been lost. Ask every successor in the list; only one whose
                    // keys in the range differ answers.
                    if let Some(p) = self.predecessor {
                        let (from, to) = (p.id, self.me.id);
                        let digest = self.digest(from, to);
                        let targets: Vec<NodeId> = self.successors.iter().map(|s| s.node).collect();
                        for s in targets {
                            self.send(ctx, s, ChordMsg::SyncRange { from, to, digest });
                        }
                    }
                    let d = Self::jitter(ctx, c.replicate_interval);
                    ctx.set_timer(ChordTimer::Replicate, d);
                }
            }
            ChordTimer::Rpc(rpc) => match self.pending.remove(&rpc).and_then(|mut o| {
                if o.tries < c.rpc_retries {
                    o.tries += 1;
                    self.counters.messages_sent += 1;
                    ctx.send(o.to, o.msg.clone());
                    ctx.set_timer(ChordTimer::Rpc(rpc), c.rpc_timeout);
                    self.pending.insert(rpc, o);
                    None
                } else {
                    Some(o.pending)
                }
            }) {
                Some(Pending::Query { lookup, peer }) | Some(Pending::Owner { lookup, peer }) => {
                    self.on_lookup_timeout(ctx, lookup, peer)
                }
                Some(Pending::Stabilize { peer }) => {
                    // The successor is dead: the next one in the list takes over (ToN §IV-E).
                    self.forget(peer.node);
                    if self.successors.is_empty() {
                        let fallback = self
                            .fingers
                            .iter()
                            .flatten()
                            .next()
                            .copied()
                            .or(self.predecessor);
                        match fallback {
                            Some(f) => self.set_successors([f]),
                            None => {
                                // Every node this one knew is gone: join again.
                                self.joined = false;
                                ctx.set_timer(ChordTimer::Join, c.rpc_timeout);
                                return;
                            }
                        }
                    }
                    if self.joined {
                        self.stabilize(ctx);
                    }
                }
                Some(Pending::CheckPredecessor { peer })
                    if self.predecessor.is_some_and(|p| p.node == peer.node) =>
                {
                    self.predecessor = None;
                }
                Some(Pending::CheckPredecessor { .. }) => {}
                None => {}
            },
        }
    }
}

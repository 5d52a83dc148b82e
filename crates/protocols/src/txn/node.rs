//! The multi-Raft node: one actor per node that hosts a Raft group per range.
//!
//! Each group is an unchanged [`Raft`] over a [`RangeSm`]. The node hands each group a
//! [`Ctx`] of its own: a storage namespace (`g/<id>/`, with the group's log kept as keys
//! of the node's key-value space), its own random stream, and an effect list that the
//! node then re-addresses (messages wrapped in [`TxnMsg::Raft`], timers in
//! [`TxnTimer::Raft`]). One node crash therefore takes every replica on it down at once,
//! as on a real machine.

use super::lease::Lessor;
use super::msg::{
    RangeCommand, RangeDescriptor, RangeId, RangeRaftMsg, RangeResult, Route, TxnMsg,
};
use super::range::{RangeSm, RangeState};
use crate::mvcc::LeaseId;
use crate::raft::{Raft, RaftConfig, RaftMsg, RaftTimer, Role, SessionId, SEED_INDEX};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Duration;
use synod_core::{
    codec, Actor, ActorRng, ClientId, Ctx, Effect, Endpoint, LogIndex, NodeId, Storage, StorageExt,
};

/// How a multi-Raft node is set up. Every node needs the same values.
#[derive(Clone, Debug)]
pub struct TxnConfig {
    /// Raft timing and the voters; every range is replicated on all of them.
    pub raft: RaftConfig,
    /// A range with more distinct keys than this splits at its median key.
    pub split_max_keys: usize,
    /// How often leaders look for ranges to split.
    pub split_check_interval: Duration,
    /// How often the meta group's leader looks for expired leases.
    pub lease_check_interval: Duration,
    /// Test-only planted bug (see `RangeSm::lost_updates`).
    #[cfg(test)]
    pub(crate) lost_updates: bool,
    /// Test-only planted bug (see `RangeSm::close_over_intents`).
    #[cfg(test)]
    pub(crate) close_over_intents: bool,
}

impl TxnConfig {
    /// Ranges on every node of `nodes`, split past `split_max_keys` keys.
    pub fn new(nodes: u32, split_max_keys: usize) -> Self {
        let mut raft = RaftConfig::new((0..nodes).map(NodeId).collect());
        // Every range snapshots and compacts its log (§7). A split travels in snapshots:
        // a range born from a split starts from a seeded snapshot, and a replica that
        // learns of it from its parent's snapshot waits for the range's own (see
        // `TxnNode::ensure_children`).
        raft.snapshot_threshold = DEFAULT_SNAPSHOT_THRESHOLD;
        TxnConfig {
            raft,
            split_max_keys,
            split_check_interval: Duration::from_millis(50),
            lease_check_interval: Duration::from_millis(100),
            #[cfg(test)]
            lost_updates: false,
            #[cfg(test)]
            close_over_intents: false,
        }
    }
}

/// The node's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TxnTimer {
    /// A timer of one group's Raft.
    Raft(RangeId, RaftTimer),
    /// Look for ranges to split.
    SplitCheck,
    /// The meta group's leader: match lease deadlines to the lease table, list expired.
    LeaseCheck,
}

/// Entries a range applies past its last snapshot before it takes the next one.
pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = 1024;

/// The pseudo-client id under which the node proposes splits; its replies are dropped.
const SPLIT_CLIENT: ClientId = ClientId(u64::MAX);
const GROUPS_KEY: &[u8] = b"txn/groups";

struct Group {
    raft: Raft<RangeSm>,
    rng: ActorRng,
}

/// A node hosting one Raft replica per range (see the module header of [`super`]).
pub struct TxnNode {
    pub(crate) config: TxnConfig,
    groups: BTreeMap<RangeId, Group>,
    split_session: SessionId,
    split_seq: u64,
    /// Ranges this node learned of from a parent's snapshot (hosted uninitialized).
    children_from_snapshots: u64,
    /// In `on_start`, before every listed group runs: a parent's children may simply
    /// not be started yet.
    starting: bool,
    lessor: Lessor,
}

type NodeCtx<'a> = Ctx<'a, TxnMsg, TxnTimer>;

impl TxnNode {
    /// A node that will host the ranges it finds in storage (or the initial two).
    pub fn new(config: TxnConfig) -> Self {
        TxnNode {
            config,
            groups: BTreeMap::new(),
            split_session: SessionId(0),
            split_seq: 0,
            children_from_snapshots: 0,
            starting: false,
            lessor: Lessor::default(),
        }
    }

    /// Leases whose deadline passed on this node, the meta group's leader, at its last
    /// check (empty on other nodes). A coordinator on this node revokes them.
    pub fn expired_leases(&self) -> Vec<LeaseId> {
        self.lessor.expired().to_vec()
    }

    /// The meta group's term if this node leads it.
    fn meta_leader_term(&self) -> Option<u64> {
        let raft = &self.groups.get(&RangeId::META)?.raft;
        (raft.role() == Role::Leader).then(|| raft.current_term().0)
    }

    /// The Raft replicas this node hosts.
    pub fn groups(&self) -> impl Iterator<Item = (RangeId, &Raft<RangeSm>)> {
        self.groups.iter().map(|(id, g)| (*id, &g.raft))
    }

    /// How many ranges this node learned of from a parent's snapshot rather than by
    /// applying the split (since it was built; a restart does not reset it).
    pub fn children_from_snapshots(&self) -> u64 {
        self.children_from_snapshots
    }

    /// One hosted replica.
    pub fn group(&self, id: RangeId) -> Option<&Raft<RangeSm>> {
        self.groups.get(&id).map(|g| &g.raft)
    }

    fn init_key(id: RangeId) -> Vec<u8> {
        format!("txn/init/{:016x}", id.0).into_bytes()
    }

    /// Host a new range: write its initial state, then the group list (in that order, so
    /// a crash that keeps a prefix of the writes never lists a range without a state).
    /// Only the two initial ranges start from an empty log; see [`Self::create_child`].
    fn create_group(&mut self, ctx: &mut NodeCtx<'_>, state: RangeState) {
        let id = state.desc.id;
        if self.groups.contains_key(&id) {
            return;
        }
        ctx.storage().put_value(&Self::init_key(id), &state);
        self.list_group(ctx, id);
        self.start_group(ctx, id, state);
    }

    fn list_group(&mut self, ctx: &mut NodeCtx<'_>, id: RangeId) {
        let mut ids: Vec<RangeId> = self.groups.keys().copied().collect();
        ids.push(id);
        ids.sort();
        ids.dedup();
        ctx.storage().put_value(GROUPS_KEY, &ids);
    }

    /// Host a range born from a split. With `state` (this replica applied the split) the
    /// state is stored as the group's seeded Raft snapshot, so the range's leader can send
    /// it to replicas that never applied the split. Without (this replica learned of the
    /// range from its parent's snapshot) the group starts uninitialized: no state, no
    /// keys served, no elections, until the range's leader installs a snapshot.
    fn create_child(&mut self, ctx: &mut NodeCtx<'_>, id: RangeId, state: Option<RangeState>) {
        let hosted = self.groups.get(&id).map(|g| initialized(id, &g.raft));
        match (hosted, &state) {
            (Some(true), _) | (Some(false), None) => return,
            _ => {}
        }
        ctx.storage()
            .put_value(&Self::init_key(id), &uninitialized_state(id));
        if let Some(state) = state {
            let mut storage = GroupStorage::new(ctx.storage(), id);
            Raft::<RangeSm>::seed_snapshot(&self.config.raft, &mut storage, codec::encode(&state));
        }
        if hosted.is_none() {
            self.list_group(ctx, id);
        }
        self.start_group(ctx, id, uninitialized_state(id));
    }

    /// The ranges split off `id` that this node does not host yet, hosted uninitialized.
    /// A replica that installs a snapshot taken after a split never applies the split
    /// entry; the parent's descriptor tells which children exist (the split at depth `d`
    /// created `id | 1 << d`).
    fn ensure_children(&mut self, ctx: &mut NodeCtx<'_>, id: RangeId) {
        let Some(group) = self.groups.get(&id) else {
            return;
        };
        let desc = &group.raft.state_machine().state().desc;
        if !desc.serves_keys {
            return;
        }
        let missing: Vec<RangeId> = (birth_depth(id)..desc.depth.min(63))
            .map(|d| RangeId(id.0 | (1 << d)))
            .filter(|child| !self.groups.contains_key(child))
            .collect();
        for child in missing {
            self.children_from_snapshots += 1;
            self.create_child(ctx, child, None);
        }
    }

    fn start_group(&mut self, ctx: &mut NodeCtx<'_>, id: RangeId, state: RangeState) {
        let rng = ActorRng::seed_from_u64(ctx.rng().gen());
        #[allow(unused_mut)]
        let mut sm = RangeSm::new(state);
        #[cfg(test)]
        {
            sm.lost_updates = self.config.lost_updates;
            sm.close_over_intents = self.config.close_over_intents;
        }
        let raft = Raft::new(self.config.raft.clone(), sm);
        self.groups.insert(id, Group { raft, rng });
        self.with_group(ctx, id, |raft, sub| raft.on_start(sub));
    }

    /// Run `f` on group `id` with a context of its own, then re-address its effects and
    /// host the ranges its splits produced.
    fn with_group(
        &mut self,
        ctx: &mut NodeCtx<'_>,
        id: RangeId,
        f: impl FnOnce(&mut Raft<RangeSm>, &mut Ctx<'_, RangeRaftMsg, RaftTimer>),
    ) {
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        let mut effects = Vec::new();
        let (me, now) = (ctx.me(), ctx.now());
        {
            let mut storage = GroupStorage::new(ctx.storage(), id);
            let mut sub = Ctx::new(me, now, &mut group.rng, &mut storage, &mut effects);
            f(&mut group.raft, &mut sub);
        }
        let children = group.raft.state_machine().take_children();
        let renewals = group.raft.state_machine().take_renewals();
        if id == RangeId::META {
            self.lessor.set_leader(self.meta_leader_term());
            for (lease, ttl) in renewals {
                self.lessor.renew(now.0, lease, ttl);
            }
        }
        let mut finished = Vec::new();
        for mut effect in effects {
            // The remaining TTL is the leader's to tell (etcd's lessor on the primary).
            if let Effect::Reply {
                msg: RaftMsg::ClientReply { output, .. },
                ..
            } = &mut effect
            {
                if let RangeResult::Lease(Some(info)) = &mut output.result {
                    if let Some(left) = self.lessor.remaining(now.0, info.id) {
                        info.remaining = left;
                    }
                }
            }
            match effect {
                Effect::Send { to, msg } => ctx.send(to, TxnMsg::Raft { range: id, msg }),
                Effect::SendUnsynced { to, msg } => {
                    ctx.send_unsynced(to, TxnMsg::Raft { range: id, msg })
                }
                Effect::Reply { to, msg } => {
                    if to != SPLIT_CLIENT {
                        ctx.reply(to, TxnMsg::Reply { range: id, msg })
                    }
                }
                Effect::SetTimer { key, after } => ctx.set_timer(TxnTimer::Raft(id, key), after),
                Effect::CancelTimer { key } => ctx.cancel_timer(TxnTimer::Raft(id, key)),
                // A range's snapshot is small (ranges split by size), and the driver's
                // background writer would not apply the group's storage prefix: build and
                // store it here, then hand Raft its completion as the driver would.
                Effect::Background(task) => {
                    let mut storage = GroupStorage::new(ctx.storage(), id);
                    if let Some(msg) = task.run(|blob, bytes| storage.put_blob(blob, bytes)) {
                        finished.push(msg);
                    }
                }
            }
        }
        for child in children {
            self.create_child(ctx, child.desc.id, Some(child));
        }
        if !self.starting {
            self.ensure_children(ctx, id);
        }
        self.deliver_background(ctx, id, finished);
    }

    /// Hand group `id` the completions of its background work, as a driver would. Not
    /// generic, so `with_group` calling it does not instantiate itself without end.
    fn deliver_background(&mut self, ctx: &mut NodeCtx<'_>, id: RangeId, msgs: Vec<RangeRaftMsg>) {
        let me = Endpoint::Node(ctx.me());
        for msg in msgs {
            self.with_group(ctx, id, |raft, sub| raft.on_message(sub, me, msg));
        }
    }

    /// The local range that serves `route`, by this node's applied descriptors.
    fn route(&self, route: &Route) -> Option<RangeId> {
        match route {
            Route::Meta => Some(RangeId::META),
            Route::Key(key) => self
                .groups
                .iter()
                .find(|(_, g)| g.raft.state_machine().state().desc.contains(key))
                .map(|(id, _)| *id),
        }
    }

    fn on_split_check(&mut self, ctx: &mut NodeCtx<'_>) {
        ctx.set_timer(TxnTimer::SplitCheck, self.config.split_check_interval);
        let max = self.config.split_max_keys;
        let proposals: Vec<(RangeId, RangeCommand)> = self
            .groups
            .iter()
            .filter(|(_, g)| g.raft.role() == Role::Leader)
            .filter_map(|(id, g)| {
                let sm = g.raft.state_machine();
                sm.split_point(max).map(|split_key| {
                    let generation = sm.state().desc.generation;
                    (
                        *id,
                        RangeCommand::Split {
                            generation,
                            split_key,
                        },
                    )
                })
            })
            .collect();
        for (id, command) in proposals {
            self.split_seq += 1;
            let msg = RaftMsg::ClientWrite {
                session: self.split_session,
                seq: self.split_seq,
                command,
            };
            self.with_group(ctx, id, |raft, sub| {
                raft.on_message(sub, Endpoint::Client(SPLIT_CLIENT), msg)
            });
        }
    }
}

impl Actor for TxnNode {
    type Msg = TxnMsg;
    type Timer = TxnTimer;

    fn on_start(&mut self, ctx: &mut NodeCtx<'_>) {
        self.groups.clear();
        // A fresh session per incarnation: split proposals need no exactly-once (a
        // split names the generation it splits), only increasing sequence numbers.
        self.split_session = SessionId(ctx.rng().gen());
        self.split_seq = 0;
        let ids: Option<Vec<RangeId>> = ctx.storage().get_value(GROUPS_KEY).ok().flatten();
        self.starting = true;
        match ids {
            None => {
                self.create_group(ctx, RangeSm::meta());
                self.create_group(ctx, RangeSm::root());
            }
            Some(ids) => {
                for id in ids {
                    let state: Option<RangeState> =
                        ctx.storage().get_value(&Self::init_key(id)).ok().flatten();
                    // A listed range always has its state (it is written first); a
                    // missing one would be corruption, and the range is skipped.
                    if let Some(state) = state {
                        self.start_group(ctx, id, state);
                    }
                }
                // A parent's snapshot may be past a split whose child was not listed yet.
                self.starting = false;
                let ids: Vec<RangeId> = self.groups.keys().copied().collect();
                for id in ids {
                    self.ensure_children(ctx, id);
                }
            }
        }
        self.starting = false;
        ctx.set_timer(TxnTimer::SplitCheck, self.config.split_check_interval);
        self.lessor = Lessor::default();
        ctx.set_timer(TxnTimer::LeaseCheck, self.config.lease_check_interval);
    }

    fn on_message(&mut self, ctx: &mut NodeCtx<'_>, from: Endpoint, msg: TxnMsg) {
        match (from, msg) {
            (Endpoint::Node(_), TxnMsg::Raft { range, msg }) => {
                // A group this node does not host yet (its split has not applied here):
                // drop, Raft retries.
                self.with_group(ctx, range, |raft, sub| raft.on_message(sub, from, msg));
            }
            (Endpoint::Client(client), TxnMsg::Request { route, msg }) => {
                match self.route(&route) {
                    Some(range) => {
                        self.with_group(ctx, range, |raft, sub| raft.on_message(sub, from, msg))
                    }
                    None => {
                        if let RaftMsg::ClientWrite { seq, .. } = msg {
                            let msg = RaftMsg::NotLeader {
                                seq,
                                leader_hint: None,
                            };
                            let range = RangeId::META;
                            ctx.reply(client, TxnMsg::Reply { range, msg });
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut NodeCtx<'_>, timer: TxnTimer) {
        match timer {
            TxnTimer::Raft(range, RaftTimer::Election)
                if self
                    .groups
                    .get(&range)
                    .is_some_and(|g| !initialized(range, &g.raft)) =>
            {
                // An uninitialized replica has an empty log: were it elected (by other
                // uninitialized replicas) it would overwrite the range's seeded state.
                // It waits for its leader's snapshot, whose heartbeats re-arm the timer.
            }
            TxnTimer::Raft(range, timer) => {
                self.with_group(ctx, range, |raft, sub| raft.on_timer(sub, timer))
            }
            TxnTimer::SplitCheck => self.on_split_check(ctx),
            TxnTimer::LeaseCheck => {
                ctx.set_timer(TxnTimer::LeaseCheck, self.config.lease_check_interval);
                self.lessor.set_leader(self.meta_leader_term());
                if let Some(meta) = self.groups.get(&RangeId::META) {
                    self.lessor
                        .check(ctx.now().0, meta.raft.state_machine().state());
                }
            }
        }
    }
}

/// Whether a replica holds its range's state: the two initial ranges always do, a range
/// born from a split once it holds a snapshot (seeded or installed).
fn initialized(id: RangeId, raft: &Raft<RangeSm>) -> bool {
    id == RangeId::META || id == RangeId::ROOT || raft.snapshot_index() >= SEED_INDEX
}

/// The depth at which range `id` was created: one past its highest set bit (the root,
/// id 1, has depth 1; the meta group, id 0, has none).
fn birth_depth(id: RangeId) -> u32 {
    64 - id.0.leading_zeros()
}

/// The state an uninitialized replica holds until a snapshot replaces it: it serves no
/// key (so nothing is routed to it) and has no children.
fn uninitialized_state(id: RangeId) -> RangeState {
    RangeState::empty(RangeDescriptor {
        id,
        start: String::new(),
        end: Some(String::new()),
        generation: 0,
        depth: birth_depth(id),
        serves_keys: false,
    })
}

/// One group's view of the node's storage: its keys under `g/<id>/k/`, and its log as
/// keys `g/<id>/l/<index>` with the bounds under `g/<id>/b`.
///
/// Writes are ordered so that any prefix of them (all a crash keeps) is consistent: an
/// append writes the record before moving the end; a truncate moves the end before
/// deleting records; a compaction moves the start before deleting.
struct GroupStorage<'a> {
    inner: &'a mut dyn Storage,
    prefix: String,
}

impl<'a> GroupStorage<'a> {
    fn new(inner: &'a mut dyn Storage, id: RangeId) -> Self {
        GroupStorage {
            inner,
            prefix: format!("g/{:016x}/", id.0),
        }
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = format!("{}k/", self.prefix).into_bytes();
        k.extend_from_slice(key);
        k
    }

    fn record_key(&self, index: LogIndex) -> Vec<u8> {
        format!("{}l/{:016x}", self.prefix, index.0).into_bytes()
    }

    fn bounds_key(&self) -> Vec<u8> {
        format!("{}b", self.prefix).into_bytes()
    }

    fn set_bounds(&mut self, first: LogIndex, next: LogIndex) {
        let key = self.bounds_key();
        self.inner.put(&key, &codec::encode(&(first, next)));
    }
}

impl Storage for GroupStorage<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        let key = self.key(key);
        self.inner.put(&key, value);
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(&self.key(key))
    }

    fn delete(&mut self, key: &[u8]) {
        let key = self.key(key);
        self.inner.delete(&key);
    }

    fn append(&mut self, record: &[u8]) -> LogIndex {
        let (first, next) = self.log_bounds();
        let key = self.record_key(next);
        self.inner.put(&key, record);
        self.set_bounds(first, next.next());
        next
    }

    fn read(&self, index: LogIndex) -> Option<Vec<u8>> {
        let (first, next) = self.log_bounds();
        if index < first || index >= next {
            return None;
        }
        self.inner.get(&self.record_key(index))
    }

    fn truncate(&mut self, from: LogIndex) {
        let (first, next) = self.log_bounds();
        let from = from.max(first);
        if from >= next {
            return;
        }
        self.set_bounds(first, from);
        let mut index = from;
        while index < next {
            let key = self.record_key(index);
            self.inner.delete(&key);
            index = index.next();
        }
    }

    fn compact(&mut self, before: LogIndex) {
        let (first, next) = self.log_bounds();
        if before <= first {
            return;
        }
        let new_next = next.max(before);
        self.set_bounds(before, new_next);
        let mut index = first;
        while index < before.min(next) {
            let key = self.record_key(index);
            self.inner.delete(&key);
            index = index.next();
        }
    }

    fn log_bounds(&self) -> (LogIndex, LogIndex) {
        self.inner
            .get(&self.bounds_key())
            .and_then(|b| codec::decode::<(LogIndex, LogIndex)>(&b).ok())
            .unwrap_or((LogIndex(1), LogIndex(1)))
    }
}

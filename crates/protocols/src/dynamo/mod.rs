//! # Dynamo: a partitioned, replicated, eventually consistent key-value store
//!
//! Algorithm (DeCandia et al., "Dynamo: Amazon's Highly Available Key-value Store",
//! SOSP 2007), with the client API and causality of Riak (Basho, "Riak KV" documentation:
//! buckets with `n_val`, `r`, `w`; siblings; causal context; tombstones; active
//! anti-entropy):
//!
//! - **Placement** (§4.2–4.3). Keys hash onto a consistent-hashing ring with virtual nodes
//!   ([`crate::hashing::Ring`]). A key's *preference list* is the first N distinct members
//!   clockwise from its position. Any node coordinates a request it receives; N, R and W
//!   come from the key's bucket ([`BucketProps`]) and may be lowered per request
//!   ([`Quorum`]).
//! - **Causality** (§4.4, done with dotted version vectors instead of Dynamo's vector
//!   clocks). Each key's siblings live in a DVV set ([`crate::clocks::DvvSet`], Preguiça et
//!   al. 2010; Almeida et al. 2014). A write names what it supersedes by the context the
//!   client read; the coordinator gives it a fresh dot; concurrent writes stay side by side
//!   as siblings. No pruning is needed: the set is bounded by replicas plus siblings, so
//!   there is none of Dynamo's clock truncation and no lost update of last-write-wins.
//! - **Sloppy quorum and hinted handoff** (§4.6). The coordinator sends a write to the
//!   first N *healthy* nodes of the walk; a node standing in for a down owner stores the
//!   object durably like any other and, because it does not own the key, its handoff loop
//!   pushes the object to the owners once they are reachable again.
//! - **Read repair** (§5). After a read, replicas that answered with an older object get
//!   the merged one.
//! - **Active anti-entropy** (§4.7). On a timer each node exchanges Merkle trees with a
//!   peer: for each of [`PARTITIONS`] equal partitions of the ring (Dynamo's strategy 3,
//!   §6.2), a root over [`SEGMENTS`] segment hashes over the objects both nodes replicate.
//!   Only differing partitions send segments and only differing segments send objects.
//! - **Ring changes** (§4.9). A node joins or leaves by changing its own versioned status,
//!   which heartbeats gossip. Only keys whose preference lists changed are pushed by the
//!   same handoff loop, in chunks of [`DynamoConfig::handoff_chunk`], each acknowledged
//!   after the receiver has it durably. Nothing is lost during handoff: the old holder
//!   keeps serving its copy and every write keeps going to W replicas.
//! - **Deletes** are writes of a tombstone with the client's context. A key whose object is
//!   a single tombstone is collected (Riak's `delete_mode` with a delay): its first owner
//!   asks *every* node to merge the tombstone and confirm, durably, that its copy is now
//!   exactly it (so hints and coordinators' copies go too); after
//!   [`DynamoConfig::tombstone_delay`] every node forgets the key if its copy is still that
//!   tombstone. Safe as long as no message spends longer than the delay in the network.
//!
//! Fault and timing model: crash-recovery nodes with durable storage (every object and
//! membership change goes through `ctx.storage()`, and replies and acknowledgements leave
//! only after the sync), an asynchronous network with loss, duplication, reordering and
//! partitions. Failure detection is local: a peer not heard from for
//! [`DynamoConfig::suspect_after`] is skipped in favour of a fallback (§4.8.3).
//!
//! Guarantees: every write acknowledged to a client is durable on W nodes and is either
//! readable or superseded by a write whose client saw it; after faults heal, handoff and
//! anti-entropy make every owner's sibling set identical; with R + W > N and no failures
//! a read sees every write acknowledged before it began.
//!
//! Differences from the paper and the chapter's sketch:
//!
//! - The chapter's store keeps one value per key and resolves conflicts by timestamp,
//!   which loses concurrent writes; here they are siblings.
//! - DVV dots are drawn from the coordinator's local counter for the key, under an actor id
//!   that carries a durable per-node epoch ([`actor_id`]), bumped at every restart and
//!   before the node coordinates a key it reaped in the current epoch (Riak's fix for
//!   KV679), so a dot is never given out twice. A node keeps its copy of a key after
//!   handing it off; the only way it forgets one is tombstone collection.
//! - Merkle trees are recomputed at each exchange, not kept up to date incrementally.
//! - Ring membership is this actor's own versioned gossip. Liveness comes from an outside
//!   failure detector when one sends [`DynamoMsg::PeerEvent`]s (the node's SWIM member on a
//!   cluster), else from the actor's own heartbeats (the simulator).
//!
//! Inputs: [`DynamoMsg::Get`], [`DynamoMsg::Put`], [`DynamoMsg::Join`] and
//! [`DynamoMsg::Leave`] from clients; replica messages from peers; timers. Effects: replies
//! to clients, messages to peers, and one storage record per key and per membership change.

mod msg;
#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "harness"))]
pub mod harness;

pub use msg::{DynamoMsg, Key, Membership, Object, PeerStatus, Quorum, Sibling};

use crate::clocks::VersionVector;
use crate::hashing::{hash_bytes, mix64, Ring};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use synod_core::codec;
use synod_core::{Actor, ClientId, Ctx, Endpoint, Instant, LogIndex, NodeId, StorageExt};

/// The ring is cut into this many equal partitions for anti-entropy, by the top bits of a
/// key's position.
pub const PARTITIONS: u32 = 64;
/// Each partition's Merkle tree has this many leaves (segments).
pub const SEGMENTS: u32 = 16;

/// A bucket's replication: N replicas, R replies per read, W acknowledgements per write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BucketProps {
    /// Replicas per key.
    pub n: u8,
    /// Replies a read waits for.
    pub r: u8,
    /// Durable acknowledgements a write waits for.
    pub w: u8,
}

impl Default for BucketProps {
    /// Riak's and Dynamo's common setting: N = 3, R = 2, W = 2.
    fn default() -> Self {
        BucketProps { n: 3, r: 2, w: 2 }
    }
}

/// A deliberately broken variant, for showing that the checkers catch lost updates.
#[cfg(any(test, feature = "harness"))]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Variant {
    /// The algorithm as described.
    #[default]
    Correct,
    /// The coordinator ignores the client's context and overwrites every sibling it holds,
    /// as a last-write-wins store does.
    LastWriteWins,
    /// The node never changes its actor epoch, so after a key is reaped its coordinator
    /// draws dots it already gave out for that key (Riak's KV679).
    ReuseDots,
    /// A node reaps its tombstone after the delay without asking every other node first:
    /// replicas and hints that still hold values the delete superseded bring them back.
    ReapWithoutQuorum,
}

/// Configuration of a node.
#[derive(Clone, Debug)]
pub struct DynamoConfig {
    /// Every node of the cluster: the peers heartbeats go to.
    pub nodes: Vec<NodeId>,
    /// The nodes that own ranges at first boot; the others wait for a `Join`.
    pub initial_members: Vec<NodeId>,
    /// Virtual nodes per member on the ring.
    pub vnodes: u32,
    /// Replication of buckets not listed in `buckets`.
    pub default_bucket: BucketProps,
    /// Per-bucket replication.
    pub buckets: BTreeMap<String, BucketProps>,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// A peer not heard from for this long is treated as down.
    pub suspect_after: Duration,
    /// A write that lacks W acknowledgements after this long is also sent to fallbacks.
    pub retry_after: Duration,
    /// Tries (first send plus fallbacks) before a request fails.
    pub attempts: u32,
    /// How often the handoff loop pushes objects this node holds but does not own.
    pub handoff_interval: Duration,
    /// Objects per handoff message.
    pub handoff_chunk: usize,
    /// How often a node starts an anti-entropy exchange.
    pub aae_interval: Duration,
    /// How long a tombstone that every node holds stays before it is reaped (Riak's
    /// `delete_mode`, 3 s by default). It must exceed the longest time a message can
    /// spend in the network, or a late copy of a superseded value could return.
    pub tombstone_delay: Duration,
    /// Which variant runs (test-only).
    #[cfg(any(test, feature = "harness"))]
    pub variant: Variant,
}

impl DynamoConfig {
    /// A cluster of `nodes`, all members from the start, with Riak-like defaults.
    pub fn new(nodes: impl IntoIterator<Item = NodeId>) -> Self {
        let nodes: Vec<NodeId> = nodes.into_iter().collect();
        DynamoConfig {
            initial_members: nodes.clone(),
            nodes,
            vnodes: 16,
            default_bucket: BucketProps::default(),
            buckets: BTreeMap::new(),
            heartbeat: Duration::from_millis(100),
            suspect_after: Duration::from_millis(500),
            retry_after: Duration::from_millis(300),
            attempts: 3,
            handoff_interval: Duration::from_millis(200),
            handoff_chunk: 32,
            aae_interval: Duration::from_millis(500),
            tombstone_delay: Duration::from_secs(3),
            #[cfg(any(test, feature = "harness"))]
            variant: Variant::Correct,
        }
    }

    /// The replication of `bucket`.
    pub fn bucket(&self, bucket: &str) -> BucketProps {
        self.buckets
            .get(bucket)
            .copied()
            .unwrap_or(self.default_bucket)
    }
}

/// Counters shared by every node of one run (a harness reads them; they never affect the
/// protocol).
#[derive(Debug, Default)]
pub struct DynamoCounters {
    /// Replicas sent to a fallback in place of a down owner (hinted writes).
    pub hinted_writes: AtomicU64,
    /// Objects pushed by the handoff loop (hints delivered and ranges moved).
    pub handoff_objects: AtomicU64,
    /// Replicas brought up to date by read repair.
    pub read_repairs: AtomicU64,
    /// Objects sent by anti-entropy exchanges.
    pub aae_objects: AtomicU64,
    /// Tombstone objects removed from nodes (one per node that forgot the key).
    pub tombstones_reaped: AtomicU64,
    /// Collection rounds whose phase 1 every node acknowledged.
    pub reap_rounds: AtomicU64,
}

impl DynamoCounters {
    fn add(counter: &AtomicU64, by: usize) {
        counter.fetch_add(by as u64, Ordering::Relaxed);
    }
}

/// Timers of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DynamoTimer {
    /// Send heartbeats with the membership view.
    Heartbeat,
    /// Push objects this node does not own to their owners.
    Handoff,
    /// Start an anti-entropy exchange.
    AntiEntropy,
    /// A coordinated request's retry or deadline.
    Request(u64),
    /// A tombstone-collection round's phase-1 deadline, then its delay.
    Reap(u64),
}

/// A request this node coordinates.
#[derive(Debug)]
enum Pending {
    Put {
        client: ClientId,
        key: Key,
        dot: crate::clocks::Dot,
        w: usize,
        n: usize,
        /// Every node sent the object, with whether it stands in for an owner.
        sent: BTreeSet<NodeId>,
        acks: BTreeSet<NodeId>,
        attempt: u32,
        replied: bool,
    },
    Get {
        client: ClientId,
        key: Key,
        r: usize,
        sent: BTreeSet<NodeId>,
        replies: BTreeMap<NodeId, Option<Object>>,
        replied: bool,
        /// Cleared when a tombstone-collection round for the key reaches this node: the
        /// replies may predate the tombstone, and repairing with them after the reap
        /// would bring back values the delete superseded.
        repair: bool,
    },
}

/// A tombstone-collection round this node started.
#[derive(Debug)]
struct ReapRound {
    key: Key,
    object: Object,
    hash: u64,
    /// Nodes whose copy is durably exactly the tombstone.
    ready: BTreeSet<NodeId>,
    /// Every node is ready; the delay is running.
    waiting: bool,
}

/// Storage key of the own membership record.
const MEMBERSHIP_KEY: &[u8] = b"membership";
/// Storage key of the node's actor epoch.
const EPOCH_KEY: &[u8] = b"epoch";

/// A node that reaped this many keys in one epoch moves to the next, so that the set of
/// keys it must watch stays small.
const MAX_REAPED_PER_EPOCH: usize = 4096;

/// Low bits of a DVV actor id that hold the node id; the bits above hold its epoch.
pub const ACTOR_NODE_BITS: u32 = 10;

/// The DVV actor id of `node` in `epoch`, or `None` if either does not fit.
pub fn actor_id(node: NodeId, epoch: u32) -> Option<NodeId> {
    if node.0 >= 1 << ACTOR_NODE_BITS || epoch >= 1 << (32 - ACTOR_NODE_BITS) {
        return None;
    }
    Some(NodeId(node.0 | (epoch << ACTOR_NODE_BITS)))
}

/// The node and epoch of a DVV actor id.
pub fn actor_parts(actor: NodeId) -> (NodeId, u32) {
    (
        NodeId(actor.0 & ((1 << ACTOR_NODE_BITS) - 1)),
        actor.0 >> ACTOR_NODE_BITS,
    )
}

/// Whether an object is a single tombstone: what collection may reap.
pub fn is_sole_tombstone(object: &Object) -> bool {
    object.len() == 1 && object.values().all(|v| *v == Sibling::Tombstone)
}

fn object_storage_key(key: &Key) -> Vec<u8> {
    let mut k = b"o/".to_vec();
    k.extend_from_slice(&codec::encode(key));
    k
}

/// The content hash of an object, as anti-entropy and handoff compare it.
pub fn object_hash(key: &Key, object: &Object) -> u64 {
    hash_bytes(&codec::encode(&(key, object)))
}

fn partition_of(position: u64) -> u32 {
    (position >> 58) as u32
}

fn segment_of(position: u64) -> u32 {
    (mix64(position) % u64::from(SEGMENTS)) as u32
}

/// A node of the store.
pub struct Dynamo {
    cfg: DynamoConfig,
    me: NodeId,
    members: BTreeMap<NodeId, Membership>,
    ring: Ring<NodeId>,
    last_heard: BTreeMap<NodeId, Instant>,
    store: BTreeMap<Key, Object>,
    next_request: u64,
    pending: BTreeMap<u64, Pending>,
    /// Handoff progress: for each key, the hash of the object pushed and the owners that
    /// acknowledged it.
    delivered: BTreeMap<Key, (u64, BTreeSet<NodeId>)>,
    /// Owners with a handoff chunk in flight, and when it was sent.
    handoff_in_flight: BTreeMap<NodeId, Instant>,
    aae_cursor: usize,
    counters: Arc<DynamoCounters>,
    /// The epoch of this node's DVV actor id (durable).
    epoch: u32,
    /// The epoch chosen at start, durable before the first input was handled. While the
    /// node still draws dots of it, a coordinator sends `Replicate` before its own copy
    /// is durable (overlapping the replicas' fsyncs with its own, as a Raft leader does):
    /// if it crashes first, the restart moves to a later epoch, so the lost dots are never
    /// drawn again. An epoch taken later in the incarnation may not be durable yet when a
    /// dot of it leaves, so after one the node sends only after its sync.
    start_epoch: u32,
    /// Keys this node reaped in the current epoch. It may have given out dots of the
    /// current actor for them that no copy it can see now remembers (a replica may hand
    /// the key back without them), so before it coordinates one of them again it moves
    /// to a fresh epoch. Volatile: a restart starts a new epoch anyway.
    reaped_this_epoch: BTreeSet<Key>,
    /// Tombstone-collection rounds this node started.
    rounds: BTreeMap<u64, ReapRound>,
    /// Liveness from an outside failure detector, once it has reported.
    peer_status: Option<BTreeMap<NodeId, PeerStatus>>,
}

impl std::fmt::Debug for Dynamo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dynamo")
            .field("me", &self.me)
            .field("keys", &self.store.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

type DCtx<'a> = Ctx<'a, DynamoMsg, DynamoTimer>;

impl Dynamo {
    /// Node `me` with configuration `cfg`, counting into `counters`.
    pub fn new(me: NodeId, cfg: DynamoConfig, counters: Arc<DynamoCounters>) -> Self {
        Dynamo {
            me,
            ring: Ring::new(cfg.vnodes),
            cfg,
            members: BTreeMap::new(),
            last_heard: BTreeMap::new(),
            store: BTreeMap::new(),
            next_request: 0,
            pending: BTreeMap::new(),
            delivered: BTreeMap::new(),
            handoff_in_flight: BTreeMap::new(),
            aae_cursor: 0,
            counters,
            epoch: 0,
            start_epoch: 0,
            reaped_this_epoch: BTreeSet::new(),
            rounds: BTreeMap::new(),
            peer_status: None,
        }
    }

    // ---- getters -------------------------------------------------------------------

    /// The local object for `key`.
    pub fn object(&self, key: &Key) -> Option<&Object> {
        self.store.get(key)
    }

    /// Every local object.
    pub fn objects(&self) -> impl Iterator<Item = (&Key, &Object)> {
        self.store.iter()
    }

    /// The first `n` owners of `key` in this node's ring view.
    pub fn owners(&self, key: &Key, n: usize) -> Vec<NodeId> {
        self.ring
            .preference_list(key.position(), n)
            .into_iter()
            .copied()
            .collect()
    }

    /// The owners of `key` under its bucket's N.
    pub fn bucket_owners(&self, key: &Key) -> Vec<NodeId> {
        self.owners(key, usize::from(self.cfg.bucket(&key.bucket).n))
    }

    /// Whether this node owns ranges.
    pub fn is_active(&self) -> bool {
        self.members.get(&self.me).is_some_and(|m| m.active)
    }

    /// The members that own ranges, in this node's view.
    pub fn active_members(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, m)| m.active)
            .map(|(&n, _)| n)
            .collect()
    }

    /// The epoch of this node's DVV actor id.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Whether this node's liveness view comes from an outside failure detector.
    pub fn uses_peer_events(&self) -> bool {
        self.peer_status.is_some()
    }

    /// Whether this node currently treats `node` as up.
    pub fn peer_is_up(&self, now: Instant, node: NodeId) -> bool {
        self.is_up(now, node)
    }

    /// Requests this node is coordinating.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    // ---- helpers -------------------------------------------------------------------

    fn is_up(&self, now: Instant, node: NodeId) -> bool {
        if node == self.me {
            return true;
        }
        if let Some(status) = self.peer_status.as_ref().and_then(|s| s.get(&node)) {
            return *status == PeerStatus::Up;
        }
        self.last_heard
            .get(&node)
            .is_some_and(|&t| now.saturating_duration_since(t) < self.cfg.suspect_after)
    }

    fn rebuild_ring(&mut self) {
        self.ring = Ring::with_members(self.cfg.vnodes, self.active_members());
    }

    /// The sloppy preference list (§4.6): the first `n` owners, each down owner replaced by
    /// the next healthy node further along the ring that is not already used.
    fn targets(&self, now: Instant, key: &Key, n: usize, skip: &BTreeSet<NodeId>) -> Vec<NodeId> {
        let walk: Vec<NodeId> = self
            .ring
            .preference_list(key.position(), self.ring.len())
            .into_iter()
            .copied()
            .collect();
        let n = n.min(walk.len());
        let mut spares = walk[n..]
            .iter()
            .copied()
            .filter(|&f| self.is_up(now, f) && !skip.contains(&f));
        let mut out = Vec::with_capacity(n);
        for &owner in &walk[..n] {
            if self.is_up(now, owner) && !skip.contains(&owner) {
                out.push(owner);
            } else if let Some(fallback) = spares.next() {
                out.push(fallback);
            }
        }
        out
    }

    fn resolve(&self, key: &Key, q: Quorum) -> Result<(usize, usize, usize), String> {
        let props = self.cfg.bucket(&key.bucket);
        let n = q.n.unwrap_or(props.n);
        if n == 0 || n > props.n {
            return Err(format!(
                "n must be between 1 and the bucket's n_val {} (got {n})",
                props.n
            ));
        }
        let r = q.r.unwrap_or(props.r.min(n));
        let w = q.w.unwrap_or(props.w.min(n));
        if r == 0 || r > n {
            return Err(format!("r must be between 1 and n = {n} (got {r})"));
        }
        if w == 0 || w > n {
            return Err(format!("w must be between 1 and n = {n} (got {w})"));
        }
        if key.bucket.is_empty() || key.name.is_empty() {
            return Err("bucket and key must not be empty".into());
        }
        Ok((usize::from(n), usize::from(r), usize::from(w)))
    }

    /// Write the object for `key` to storage. A key's name goes to the log once, before
    /// its object, so a crash that keeps a prefix of the batch never hides an object.
    fn persist(&mut self, ctx: &mut DCtx<'_>, key: &Key, is_new: bool) {
        let Some(object) = self.store.get(key) else {
            return;
        };
        let bytes = codec::encode(object);
        if is_new {
            ctx.storage().append_value(key);
        }
        ctx.storage().put(&object_storage_key(key), &bytes);
    }

    /// Merge `incoming` into the local object; persist if anything changed.
    fn merge_local(&mut self, ctx: &mut DCtx<'_>, key: &Key, incoming: &Object) -> bool {
        let is_new = !self.store.contains_key(key);
        let object = self.store.entry(key.clone()).or_default();
        let before = if is_new { None } else { Some(object.clone()) };
        object.sync(incoming);
        let changed = before.as_ref() != Some(object);
        if changed {
            self.persist(ctx, key, is_new);
        }
        changed
    }

    /// Move to a fresh actor epoch (durably, before any dot of it leaves).
    fn new_epoch(&mut self, ctx: &mut DCtx<'_>) {
        self.reaped_this_epoch.clear();
        if self.bumps_epochs() {
            self.epoch = self.epoch.saturating_add(1);
            ctx.storage().put_value(EPOCH_KEY, &self.epoch);
        }
    }

    /// Whether a new write's `Replicate` may leave before this step's writes are durable
    /// (see `start_epoch`).
    fn may_replicate_before_sync(&self) -> bool {
        self.epoch == self.start_epoch && self.bumps_epochs()
    }

    /// Whether this node changes its actor epoch (the `ReuseDots` variant does not).
    fn bumps_epochs(&self) -> bool {
        #[cfg(any(test, feature = "harness"))]
        if self.cfg.variant == Variant::ReuseDots {
            return false;
        }
        true
    }

    fn next_request_id(&mut self) -> u64 {
        self.next_request = self.next_request.wrapping_add(1);
        self.next_request
    }

    fn send_heartbeats(&mut self, ctx: &mut DCtx<'_>) {
        let msg = DynamoMsg::Ping {
            members: self.members.clone(),
        };
        let peers: Vec<NodeId> = self
            .cfg
            .nodes
            .iter()
            .copied()
            .filter(|&n| n != self.me)
            .collect();
        // Heartbeats carry no durable state: they may leave before the sync.
        for peer in peers {
            ctx.send_unsynced(peer, msg.clone());
        }
    }

    // ---- client requests -----------------------------------------------------------

    fn on_put(
        &mut self,
        ctx: &mut DCtx<'_>,
        client: ClientId,
        key: Key,
        context: VersionVector,
        value: Sibling,
        quorum: Quorum,
    ) {
        let (n, _r, w) = match self.resolve(&key, quorum) {
            Ok(q) => q,
            Err(reason) => return ctx.reply(client, DynamoMsg::Failed { reason }),
        };
        if self.ring.is_empty() {
            let reason = "no node owns ranges".to_string();
            return ctx.reply(client, DynamoMsg::Failed { reason });
        }
        let is_new = !self.store.contains_key(&key);
        // KV679: this node may have given out dots for this key before it was reaped, and
        // a client may still hold a context with them. A fresh actor epoch makes every
        // dot it draws now new.
        if self.reaped_this_epoch.contains(&key) {
            self.new_epoch(ctx);
        }
        let Some(actor) = actor_id(self.me, self.epoch) else {
            let reason = format!(
                "node {} cannot coordinate: its id or actor epoch {} is out of range",
                self.me, self.epoch
            );
            return ctx.reply(client, DynamoMsg::Failed { reason });
        };
        let object = self.store.entry(key.clone()).or_default();
        #[cfg(any(test, feature = "harness"))]
        let context = match self.cfg.variant {
            Variant::LastWriteWins => object.context(),
            _ => context,
        };
        let dot = match object.update(&context, value, actor) {
            Ok(dot) => dot,
            Err(e) => {
                if is_new {
                    self.store.remove(&key);
                }
                return ctx.reply(
                    client,
                    DynamoMsg::Failed {
                        reason: e.to_string(),
                    },
                );
            }
        };
        let object = object.clone();
        self.persist(ctx, &key, is_new);

        let now = ctx.now();
        let targets = self.targets(now, &key, n, &BTreeSet::new());
        let owners = self.owners(&key, n);
        let request = self.next_request_id();
        let mut acks = BTreeSet::new();
        for &t in &targets {
            if t == self.me {
                // The coordinator's own copy is durable before the reply leaves.
                acks.insert(t);
            } else {
                if !owners.contains(&t) {
                    DynamoCounters::add(&self.counters.hinted_writes, 1);
                }
                let msg = DynamoMsg::Replicate {
                    request,
                    key: key.clone(),
                    object: object.clone(),
                };
                if self.may_replicate_before_sync() {
                    ctx.send_unsynced(t, msg);
                } else {
                    ctx.send(t, msg);
                }
            }
        }
        self.pending.insert(
            request,
            Pending::Put {
                client,
                key,
                dot,
                w,
                n,
                sent: targets.into_iter().collect(),
                acks,
                attempt: 1,
                replied: false,
            },
        );
        self.check_put(ctx, request);
        if self.pending.contains_key(&request) {
            ctx.set_timer(DynamoTimer::Request(request), self.cfg.retry_after);
        }
    }

    fn check_put(&mut self, ctx: &mut DCtx<'_>, request: u64) {
        let Some(Pending::Put {
            client,
            key,
            dot,
            w,
            n,
            sent,
            acks,
            replied,
            ..
        }) = self.pending.get_mut(&request)
        else {
            return;
        };
        if !*replied && acks.len() >= *w {
            *replied = true;
            let context = self.store.get(key).map(|o| o.context()).unwrap_or_default();
            ctx.reply(*client, DynamoMsg::PutReply { dot: *dot, context });
        }
        if *replied && acks.len() >= (*n).min(sent.len()) {
            self.pending.remove(&request);
            ctx.cancel_timer(DynamoTimer::Request(request));
        }
    }

    fn on_get(&mut self, ctx: &mut DCtx<'_>, client: ClientId, key: Key, quorum: Quorum) {
        let (n, r, _w) = match self.resolve(&key, quorum) {
            Ok(q) => q,
            Err(reason) => return ctx.reply(client, DynamoMsg::Failed { reason }),
        };
        let targets = self.targets(ctx.now(), &key, n, &BTreeSet::new());
        if targets.len() < r {
            let reason = format!("only {} of r = {r} replicas are reachable", targets.len());
            return ctx.reply(client, DynamoMsg::Failed { reason });
        }
        let request = self.next_request_id();
        let mut replies = BTreeMap::new();
        for &t in &targets {
            if t == self.me {
                replies.insert(t, self.store.get(&key).cloned());
            } else {
                ctx.send(
                    t,
                    DynamoMsg::Read {
                        request,
                        key: key.clone(),
                    },
                );
            }
        }
        self.pending.insert(
            request,
            Pending::Get {
                client,
                key,
                r,
                sent: targets.into_iter().collect(),
                replies,
                replied: false,
                repair: true,
            },
        );
        self.check_get(ctx, request, false);
        if self.pending.contains_key(&request) {
            let deadline = self.cfg.retry_after * self.cfg.attempts.max(1);
            ctx.set_timer(DynamoTimer::Request(request), deadline);
        }
    }

    /// Answer a read once R replicas replied; repair stale replicas once all replied (or
    /// at the deadline, with whoever replied).
    fn check_get(&mut self, ctx: &mut DCtx<'_>, request: u64, deadline: bool) {
        let Some(Pending::Get {
            client,
            key,
            r,
            sent,
            replies,
            replied,
            repair,
        }) = self.pending.get_mut(&request)
        else {
            return;
        };
        let merge = |replies: &BTreeMap<NodeId, Option<Object>>| {
            let mut merged = Object::new();
            for o in replies.values().flatten() {
                merged.sync(o);
            }
            merged
        };
        if !*replied && replies.len() >= *r {
            *replied = true;
            let merged = merge(replies);
            ctx.reply(
                *client,
                DynamoMsg::GetReply {
                    siblings: merged.values().cloned().collect(),
                    context: merged.context(),
                },
            );
        }
        let all = replies.len() >= sent.len();
        if !(all || deadline) {
            return;
        }
        if !*replied {
            let reason = format!("only {} of r = {} replicas answered", replies.len(), *r);
            ctx.reply(*client, DynamoMsg::Failed { reason });
        }
        let merged = merge(replies);
        let key = key.clone();
        let stale: Vec<NodeId> = replies
            .iter()
            .filter(|(_, o)| o.as_ref() != Some(&merged))
            .map(|(&n, _)| n)
            .collect();
        let repair = *repair;
        self.pending.remove(&request);
        ctx.cancel_timer(DynamoTimer::Request(request));
        if merged.context().is_empty() || !repair {
            return;
        }
        for node in stale {
            DynamoCounters::add(&self.counters.read_repairs, 1);
            if node == self.me {
                self.merge_local(ctx, &key, &merged);
            } else {
                ctx.send(
                    node,
                    DynamoMsg::Repair {
                        key: key.clone(),
                        object: merged.clone(),
                    },
                );
            }
        }
    }

    fn on_request_timer(&mut self, ctx: &mut DCtx<'_>, request: u64) {
        match self.pending.get(&request) {
            Some(Pending::Get { .. }) => self.check_get(ctx, request, true),
            Some(Pending::Put { .. }) => self.retry_put(ctx, request),
            None => {}
        }
    }

    /// A write short of W acknowledgements goes to further fallbacks in place of the nodes
    /// that did not answer (sloppy quorum, §4.6); after the last attempt it fails.
    fn retry_put(&mut self, ctx: &mut DCtx<'_>, request: u64) {
        let now = ctx.now();
        let Some(Pending::Put {
            key,
            n,
            w,
            sent,
            acks,
            attempt,
            replied,
            client,
            ..
        }) = self.pending.get(&request)
        else {
            return;
        };
        if *replied || *attempt >= self.cfg.attempts {
            if !*replied {
                let reason = format!("only {} of w = {w} replicas acknowledged", acks.len());
                ctx.reply(*client, DynamoMsg::Failed { reason });
            }
            self.pending.remove(&request);
            return;
        }
        let missing = n.saturating_sub(acks.len());
        let (key, sent_before) = (key.clone(), sent.clone());
        // Try nodes that have not been sent the object yet, in ring order.
        let fresh: Vec<NodeId> = self
            .targets(now, &key, self.ring.len(), &sent_before)
            .into_iter()
            .filter(|t| !sent_before.contains(t))
            .take(missing)
            .collect();
        let owners = self.owners(&key, *n);
        let object = self.store.get(&key).cloned().unwrap_or_default();
        for &t in &fresh {
            if !owners.contains(&t) {
                DynamoCounters::add(&self.counters.hinted_writes, 1);
            }
            ctx.send(
                t,
                DynamoMsg::Replicate {
                    request,
                    key: key.clone(),
                    object: object.clone(),
                },
            );
        }
        if let Some(Pending::Put { sent, attempt, .. }) = self.pending.get_mut(&request) {
            sent.extend(fresh);
            *attempt += 1;
        }
        ctx.set_timer(DynamoTimer::Request(request), self.cfg.retry_after);
    }

    // ---- membership ----------------------------------------------------------------

    fn set_active(&mut self, ctx: &mut DCtx<'_>, active: bool) {
        let mine = self.members.entry(self.me).or_insert(Membership {
            version: 0,
            active: false,
        });
        if mine.active != active {
            mine.version += 1;
            mine.active = active;
            let record = *mine;
            ctx.storage().put_value(MEMBERSHIP_KEY, &record);
            self.rebuild_ring();
            self.delivered.clear();
        }
    }

    fn on_ping(&mut self, members: BTreeMap<NodeId, Membership>) {
        let mut changed = false;
        for (node, m) in members {
            // A member's own record is authoritative: it is durable there.
            if node == self.me {
                continue;
            }
            let known = self.members.get(&node).map_or(0, |k| k.version);
            if m.version > known || !self.members.contains_key(&node) {
                if self.members.get(&node) != Some(&m) {
                    changed = true;
                }
                self.members.insert(node, m);
            }
        }
        if changed {
            self.rebuild_ring();
            self.delivered.clear();
        }
    }

    // ---- handoff -------------------------------------------------------------------

    /// Push objects this node holds but does not own (hints, and ranges a ring change
    /// moved) to their reachable owners, a chunk per owner per round.
    fn handoff(&mut self, ctx: &mut DCtx<'_>) {
        let now = ctx.now();
        let resend_after = self.cfg.retry_after * 3;
        let mut chunks: BTreeMap<NodeId, Vec<(Key, Object)>> = BTreeMap::new();
        let busy: BTreeSet<NodeId> = self
            .handoff_in_flight
            .iter()
            .filter(|(_, &t)| now.saturating_duration_since(t) < resend_after)
            .map(|(&n, _)| n)
            .collect();
        for (key, object) in &self.store {
            let owners = self.bucket_owners(key);
            if owners.contains(&self.me) {
                continue;
            }
            let hash = object_hash(key, object);
            let done = match self.delivered.get(key) {
                Some((h, acked)) if *h == hash => acked.clone(),
                _ => BTreeSet::new(),
            };
            for owner in owners {
                if done.contains(&owner) || busy.contains(&owner) || !self.is_up(now, owner) {
                    continue;
                }
                let chunk = chunks.entry(owner).or_default();
                if chunk.len() < self.cfg.handoff_chunk {
                    chunk.push((key.clone(), object.clone()));
                }
            }
        }
        for (owner, objects) in chunks {
            DynamoCounters::add(&self.counters.handoff_objects, objects.len());
            self.handoff_in_flight.insert(owner, now);
            ctx.send(owner, DynamoMsg::Handoff { objects });
        }
    }

    fn on_handoff_ack(&mut self, from: NodeId, objects: Vec<(Key, u64)>) {
        self.handoff_in_flight.remove(&from);
        for (key, hash) in objects {
            let Some(object) = self.store.get(&key) else {
                continue;
            };
            if object_hash(&key, object) != hash {
                continue;
            }
            let entry = self
                .delivered
                .entry(key)
                .or_insert_with(|| (hash, BTreeSet::new()));
            if entry.0 != hash {
                *entry = (hash, BTreeSet::new());
            }
            entry.1.insert(from);
        }
    }

    // ---- tombstone collection ------------------------------------------------------

    /// Start collection rounds for tombstones this node holds as the key's first owner
    /// (Riak's `delete_mode` with a delay). A round asks every node of the cluster, owner
    /// or not, to merge the tombstone; only when all of them hold exactly it, durably, and
    /// the delay has passed, are they told to forget the key.
    fn sweep_tombstones(&mut self, ctx: &mut DCtx<'_>) {
        const MAX_ROUNDS: usize = 32;
        let now = ctx.now();
        let eager = self.reaps_without_quorum();
        if !eager && !self.cfg.nodes.iter().all(|&n| self.is_up(now, n)) {
            return;
        }
        let busy: BTreeSet<&Key> = self.rounds.values().map(|r| &r.key).collect();
        let mut start = Vec::new();
        for (key, object) in &self.store {
            if self.rounds.len() + start.len() >= MAX_ROUNDS {
                break;
            }
            if busy.contains(key) || !is_sole_tombstone(object) {
                continue;
            }
            // The first owner starts the round; so does a node that does not own the key
            // (a hint or a coordinator's copy), whose handoff has nothing left to do once
            // the owners have it, and which a lost `Reap` would otherwise leave behind.
            let owners = self.bucket_owners(key);
            if owners.first() != Some(&self.me) && owners.contains(&self.me) {
                continue;
            }
            start.push((key.clone(), object.clone()));
        }
        for (key, object) in start {
            let round = self.next_request_id();
            let hash = object_hash(&key, &object);
            let mut r = ReapRound {
                key: key.clone(),
                object: object.clone(),
                hash,
                ready: BTreeSet::from([self.me]),
                waiting: false,
            };
            if eager || r.ready.len() >= self.cfg.nodes.len() {
                r.waiting = true;
                ctx.set_timer(DynamoTimer::Reap(round), self.cfg.tombstone_delay);
            } else {
                for &peer in self.cfg.nodes.iter().filter(|&&n| n != self.me) {
                    ctx.send(
                        peer,
                        DynamoMsg::ReapPrepare {
                            round,
                            key: key.clone(),
                            object: object.clone(),
                        },
                    );
                }
                let deadline = self.cfg.retry_after * self.cfg.attempts.max(1);
                ctx.set_timer(DynamoTimer::Reap(round), deadline);
            }
            self.rounds.insert(round, r);
        }
    }

    /// Whether this is the `ReapWithoutQuorum` variant.
    fn reaps_without_quorum(&self) -> bool {
        #[cfg(any(test, feature = "harness"))]
        if self.cfg.variant == Variant::ReapWithoutQuorum {
            return true;
        }
        false
    }

    fn on_reap_prepare(
        &mut self,
        ctx: &mut DCtx<'_>,
        from: NodeId,
        round: u64,
        key: Key,
        object: Object,
    ) {
        // Only a single tombstone may be collected; anything else is refused.
        let ok = is_sole_tombstone(&object) && {
            self.merge_local(ctx, &key, &object);
            for p in self.pending.values_mut() {
                if let Pending::Get { key: k, repair, .. } = p {
                    if *k == key {
                        *repair = false;
                    }
                }
            }
            self.store.get(&key) == Some(&object)
        };
        let object = if ok {
            None
        } else {
            self.store.get(&key).cloned()
        };
        // Held until the merge is durable.
        ctx.send(from, DynamoMsg::ReapReady { round, ok, object });
    }

    fn on_reap_ready(
        &mut self,
        ctx: &mut DCtx<'_>,
        from: NodeId,
        round: u64,
        ok: bool,
        object: Option<Object>,
    ) {
        let Some(r) = self.rounds.get_mut(&round) else {
            return;
        };
        if r.waiting || !self.cfg.nodes.contains(&from) {
            return;
        }
        if !ok {
            // Someone holds more than the tombstone: a later write, or a concurrent one.
            // Learn it, so that this node's copy is no longer a bare tombstone.
            let key = r.key.clone();
            self.rounds.remove(&round);
            ctx.cancel_timer(DynamoTimer::Reap(round));
            if let Some(object) = object {
                self.merge_local(ctx, &key, &object);
            }
            return;
        }
        r.ready.insert(from);
        if r.ready.len() >= self.cfg.nodes.len() {
            r.waiting = true;
            DynamoCounters::add(&self.counters.reap_rounds, 1);
            ctx.set_timer(DynamoTimer::Reap(round), self.cfg.tombstone_delay);
        }
    }

    fn on_reap_timer(&mut self, ctx: &mut DCtx<'_>, round: u64) {
        let Some(r) = self.rounds.remove(&round) else {
            return;
        };
        if !r.waiting {
            // Phase 1 did not complete in time; a later sweep tries again.
            return;
        }
        for &peer in self.cfg.nodes.iter().filter(|&&n| n != self.me) {
            ctx.send(
                peer,
                DynamoMsg::Reap {
                    key: r.key.clone(),
                    hash: r.hash,
                },
            );
        }
        debug_assert_eq!(object_hash(&r.key, &r.object), r.hash);
        self.reap(ctx, &r.key, r.hash);
    }

    /// Forget `key` if its object is still exactly the tombstone that hashes to `hash`.
    fn reap(&mut self, ctx: &mut DCtx<'_>, key: &Key, hash: u64) {
        let still = self
            .store
            .get(key)
            .is_some_and(|o| is_sole_tombstone(o) && object_hash(key, o) == hash);
        if !still {
            return;
        }
        self.store.remove(key);
        self.delivered.remove(key);
        ctx.storage().delete(&object_storage_key(key));
        self.reaped_this_epoch.insert(key.clone());
        if self.reaped_this_epoch.len() > MAX_REAPED_PER_EPOCH {
            self.new_epoch(ctx);
        }
        DynamoCounters::add(&self.counters.tombstones_reaped, 1);
    }

    // ---- anti-entropy --------------------------------------------------------------

    /// The Merkle trees of the objects this node and `peer` both replicate: for each
    /// partition, its segment hashes.
    fn trees(&self, peer: NodeId) -> BTreeMap<u32, Vec<u64>> {
        let mut trees: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (key, object) in &self.store {
            let owners = self.bucket_owners(key);
            if !(owners.contains(&self.me) && owners.contains(&peer)) {
                continue;
            }
            let pos = key.position();
            let segments = trees
                .entry(partition_of(pos))
                .or_insert_with(|| vec![0; SEGMENTS as usize]);
            let slot = &mut segments[segment_of(pos) as usize];
            *slot = slot.wrapping_add(mix64(object_hash(key, object)));
        }
        trees
    }

    fn root(segments: &[u64]) -> u64 {
        hash_bytes(&codec::encode(segments))
    }

    fn objects_in(&self, peer: NodeId, want: &BTreeSet<(u32, u32)>) -> Vec<(Key, Object)> {
        self.store
            .iter()
            .filter(|(key, _)| {
                let pos = key.position();
                let owners = self.bucket_owners(key);
                owners.contains(&self.me)
                    && owners.contains(&peer)
                    && want.contains(&(partition_of(pos), segment_of(pos)))
            })
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect()
    }

    fn start_anti_entropy(&mut self, ctx: &mut DCtx<'_>) {
        let now = ctx.now();
        let peers: Vec<NodeId> = self
            .active_members()
            .into_iter()
            .filter(|&p| p != self.me && self.is_up(now, p))
            .collect();
        if peers.is_empty() || !self.is_active() {
            return;
        }
        self.aae_cursor = (self.aae_cursor + 1) % peers.len();
        let peer = peers[self.aae_cursor];
        let trees = self.trees(peer);
        let roots = (0..PARTITIONS)
            .map(|p| (p, trees.get(&p).map_or(0, |s| Self::root(s))))
            .collect();
        ctx.send_unsynced(peer, DynamoMsg::AaeRoots { roots });
    }

    fn on_aae_roots(&mut self, ctx: &mut DCtx<'_>, from: NodeId, roots: Vec<(u32, u64)>) {
        let trees = self.trees(from);
        let partitions: Vec<(u32, Vec<u64>)> = roots
            .into_iter()
            .filter(|&(p, _)| p < PARTITIONS)
            .filter_map(|(p, root)| {
                let mine = trees
                    .get(&p)
                    .cloned()
                    .unwrap_or_else(|| vec![0; SEGMENTS as usize]);
                let my_root = if trees.contains_key(&p) {
                    Self::root(&mine)
                } else {
                    0
                };
                (my_root != root).then_some((p, mine))
            })
            .collect();
        if !partitions.is_empty() {
            ctx.send_unsynced(from, DynamoMsg::AaeSegments { partitions });
        }
    }

    fn on_aae_segments(&mut self, ctx: &mut DCtx<'_>, from: NodeId, theirs: Vec<(u32, Vec<u64>)>) {
        let trees = self.trees(from);
        let mut want = BTreeSet::new();
        for (p, segments) in theirs {
            if p >= PARTITIONS || segments.len() != SEGMENTS as usize {
                continue;
            }
            let mine = trees.get(&p);
            for (s, &h) in segments.iter().enumerate() {
                if mine.map_or(0, |m| m[s]) != h {
                    want.insert((p, s as u32));
                }
            }
        }
        if want.is_empty() {
            return;
        }
        let objects = self.objects_in(from, &want);
        DynamoCounters::add(&self.counters.aae_objects, objects.len());
        ctx.send(
            from,
            DynamoMsg::AaeObjects {
                objects,
                want: want.into_iter().collect(),
            },
        );
    }

    fn on_aae_objects(
        &mut self,
        ctx: &mut DCtx<'_>,
        from: NodeId,
        objects: Vec<(Key, Object)>,
        want: Vec<(u32, u32)>,
    ) {
        for (key, object) in &objects {
            self.merge_local(ctx, key, object);
        }
        if want.is_empty() {
            return;
        }
        let want: BTreeSet<(u32, u32)> = want.into_iter().collect();
        // Send back what the peer lacks: objects in the segments, minus what it just sent
        // that is already identical here.
        let sent: BTreeMap<&Key, &Object> = objects.iter().map(|(k, o)| (k, o)).collect();
        let back: Vec<(Key, Object)> = self
            .objects_in(from, &want)
            .into_iter()
            .filter(|(k, o)| sent.get(k) != Some(&o))
            .collect();
        if !back.is_empty() {
            DynamoCounters::add(&self.counters.aae_objects, back.len());
            ctx.send(
                from,
                DynamoMsg::AaeObjects {
                    objects: back,
                    want: Vec::new(),
                },
            );
        }
    }
}

impl Actor for Dynamo {
    type Msg = DynamoMsg;
    type Timer = DynamoTimer;

    fn on_start(&mut self, ctx: &mut DCtx<'_>) {
        self.store.clear();
        self.pending.clear();
        self.delivered.clear();
        self.handoff_in_flight.clear();
        self.rounds.clear();
        self.peer_status = None;
        // A new incarnation is a new actor: dots drawn before a crash, even ones whose
        // object never became durable, are never drawn again.
        self.epoch = match ctx.storage().get_value::<u32>(EPOCH_KEY) {
            Ok(Some(e)) if self.bumps_epochs() => e.saturating_add(1),
            Ok(Some(e)) => e,
            _ => 0,
        };
        ctx.storage().put_value(EPOCH_KEY, &self.epoch);
        self.start_epoch = self.epoch;
        self.reaped_this_epoch.clear();
        let (first, next) = ctx.storage().log_bounds();
        for i in first.0..next.0 {
            // A record that does not decode is skipped: its object is unreachable anyway.
            let Ok(Some(key)) = ctx.storage().read_value::<Key>(LogIndex(i)) else {
                continue;
            };
            if let Ok(Some(object)) = ctx.storage().get_value::<Object>(&object_storage_key(&key)) {
                self.store.insert(key, object);
            }
        }
        self.members = self
            .cfg
            .nodes
            .iter()
            .map(|&n| {
                let active = self.cfg.initial_members.contains(&n);
                (n, Membership { version: 0, active })
            })
            .collect();
        if let Ok(Some(mine)) = ctx.storage().get_value::<Membership>(MEMBERSHIP_KEY) {
            self.members.insert(self.me, mine);
        }
        self.rebuild_ring();
        // Peers are presumed up until they stay silent (Dynamo §4.8.3).
        let now = ctx.now();
        self.last_heard = self.cfg.nodes.iter().map(|&n| (n, now)).collect();
        self.next_request = ctx.rng().gen::<u64>() >> 1;
        let jitter = |ctx: &mut DCtx<'_>, d: Duration| {
            d + Duration::from_nanos(ctx.rng().gen_range(0..=synod_core::duration_nanos(d)))
        };
        let hb = jitter(ctx, self.cfg.heartbeat / 2);
        ctx.set_timer(DynamoTimer::Heartbeat, hb);
        let h = jitter(ctx, self.cfg.handoff_interval);
        ctx.set_timer(DynamoTimer::Handoff, h);
        let a = jitter(ctx, self.cfg.aae_interval);
        ctx.set_timer(DynamoTimer::AntiEntropy, a);
    }

    fn on_message(&mut self, ctx: &mut DCtx<'_>, from: Endpoint, msg: DynamoMsg) {
        let from = match from {
            Endpoint::Client(client) => {
                match msg {
                    DynamoMsg::Get { key, quorum } => self.on_get(ctx, client, key, quorum),
                    DynamoMsg::Put {
                        key,
                        context,
                        value,
                        quorum,
                    } => self.on_put(ctx, client, key, context, value, quorum),
                    DynamoMsg::Inspect { key } => {
                        let object = self.store.get(&key).cloned();
                        let owners = self.bucket_owners(&key);
                        let now = ctx.now();
                        let down = (self.cfg.nodes.iter().copied())
                            .filter(|&n| !self.is_up(now, n))
                            .collect();
                        let peer_events = self.peer_status.is_some();
                        let reply = DynamoMsg::InspectReply {
                            object,
                            owners,
                            down,
                            peer_events,
                        };
                        ctx.reply(client, reply);
                    }
                    DynamoMsg::PeerEvent { node, status } => {
                        if node != self.me {
                            self.peer_status
                                .get_or_insert_with(BTreeMap::new)
                                .insert(node, status);
                        }
                    }
                    DynamoMsg::Join | DynamoMsg::Leave => {
                        let active = matches!(msg, DynamoMsg::Join);
                        self.set_active(ctx, active);
                        ctx.reply(client, DynamoMsg::MembershipReply { active });
                    }
                    _ => ctx.reply(
                        client,
                        DynamoMsg::Failed {
                            reason: "not a client request".into(),
                        },
                    ),
                }
                return;
            }
            Endpoint::Node(node) => node,
        };
        self.last_heard.insert(from, ctx.now());
        match msg {
            DynamoMsg::Ping { members } => self.on_ping(members),
            DynamoMsg::Replicate {
                request,
                key,
                object,
            } => {
                self.merge_local(ctx, &key, &object);
                // Held until the merge is durable.
                ctx.send(from, DynamoMsg::ReplicateAck { request });
            }
            DynamoMsg::ReplicateAck { request } => {
                if let Some(Pending::Put { acks, sent, .. }) = self.pending.get_mut(&request) {
                    if sent.contains(&from) {
                        acks.insert(from);
                    }
                }
                self.check_put(ctx, request);
            }
            DynamoMsg::Read { request, key } => {
                let object = self.store.get(&key).cloned();
                ctx.send(from, DynamoMsg::ReadReply { request, object });
            }
            DynamoMsg::ReadReply { request, object } => {
                if let Some(Pending::Get { replies, sent, .. }) = self.pending.get_mut(&request) {
                    if sent.contains(&from) {
                        replies.insert(from, object);
                    }
                }
                self.check_get(ctx, request, false);
            }
            DynamoMsg::Repair { key, object } => {
                self.merge_local(ctx, &key, &object);
            }
            DynamoMsg::Handoff { objects } => {
                let mut acks = Vec::with_capacity(objects.len());
                for (key, object) in objects {
                    self.merge_local(ctx, &key, &object);
                    acks.push((key.clone(), object_hash(&key, &object)));
                }
                ctx.send(from, DynamoMsg::HandoffAck { objects: acks });
            }
            DynamoMsg::HandoffAck { objects } => self.on_handoff_ack(from, objects),
            DynamoMsg::ReapPrepare { round, key, object } => {
                self.on_reap_prepare(ctx, from, round, key, object)
            }
            DynamoMsg::ReapReady { round, ok, object } => {
                self.on_reap_ready(ctx, from, round, ok, object)
            }
            DynamoMsg::Reap { key, hash } => self.reap(ctx, &key, hash),
            DynamoMsg::AaeRoots { roots } => self.on_aae_roots(ctx, from, roots),
            DynamoMsg::AaeSegments { partitions } => self.on_aae_segments(ctx, from, partitions),
            DynamoMsg::AaeObjects { objects, want } => {
                self.on_aae_objects(ctx, from, objects, want)
            }
            // Client messages from a node are ignored.
            DynamoMsg::Get { .. }
            | DynamoMsg::Put { .. }
            | DynamoMsg::Join
            | DynamoMsg::Leave
            | DynamoMsg::PeerEvent { .. }
            | DynamoMsg::Inspect { .. }
            | DynamoMsg::InspectReply { .. }
            | DynamoMsg::GetReply { .. }
            | DynamoMsg::PutReply { .. }
            | DynamoMsg::MembershipReply { .. }
            | DynamoMsg::Failed { .. } => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut DCtx<'_>, timer: DynamoTimer) {
        match timer {
            DynamoTimer::Heartbeat => {
                self.send_heartbeats(ctx);
                ctx.set_timer(DynamoTimer::Heartbeat, self.cfg.heartbeat);
            }
            DynamoTimer::Handoff => {
                self.handoff(ctx);
                self.sweep_tombstones(ctx);
                ctx.set_timer(DynamoTimer::Handoff, self.cfg.handoff_interval);
            }
            DynamoTimer::AntiEntropy => {
                self.start_anti_entropy(ctx);
                ctx.set_timer(DynamoTimer::AntiEntropy, self.cfg.aae_interval);
            }
            DynamoTimer::Request(request) => self.on_request_timer(ctx, request),
            DynamoTimer::Reap(round) => self.on_reap_timer(ctx, round),
        }
    }
}

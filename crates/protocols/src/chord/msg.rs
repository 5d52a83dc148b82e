//! Chord's messages: the client face, iterative routing, ring maintenance and key transfer.

use serde::{Deserialize, Serialize};
use std::fmt;
use synod_core::NodeId;

/// A point on Chord's identifier circle: 64 bits, see the module header.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct ChordId(pub u64);

impl ChordId {
    /// The identifier of a key: [`crate::hashing::hash_bytes`] of its bytes.
    pub fn of_key(key: &[u8]) -> ChordId {
        ChordId(crate::hashing::hash_bytes(key))
    }

    /// The identifier of a node in its `incarnation` (0 unless the node takes a fresh
    /// identifier each time it restarts).
    pub fn of_node(node: NodeId, incarnation: u64) -> ChordId {
        let name = if incarnation == 0 {
            format!("node-{}", node.0)
        } else {
            format!("node-{}-{}", node.0, incarnation)
        };
        ChordId::of_key(name.as_bytes())
    }

    /// `self + 2^i` on the circle: the start of finger `i` (Chord §4.3, Table 1).
    pub fn finger_start(self, i: u32) -> ChordId {
        ChordId(self.0.wrapping_add(1u64 << i))
    }

    /// Whether `self` lies in the clockwise open interval `(a, b)`. `(a, a)` is the whole
    /// circle except `a`.
    pub fn in_open(self, a: ChordId, b: ChordId) -> bool {
        if a == b {
            self != a
        } else {
            self.0.wrapping_sub(a.0).wrapping_sub(1) < b.0.wrapping_sub(a.0).wrapping_sub(1)
        }
    }

    /// Whether `self` lies in `(a, b]`. `(a, a]` is the whole circle.
    pub fn in_half_open(self, a: ChordId, b: ChordId) -> bool {
        crate::hashing::ring::in_half_open(self.0, a.0, b.0)
    }

    /// Clockwise distance from `self` to `to`.
    pub fn distance_to(self, to: ChordId) -> u64 {
        to.0.wrapping_sub(self.0)
    }
}

impl fmt::Display for ChordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A node on the ring: its address and its identifier.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Peer {
    /// Where to send to it.
    pub node: NodeId,
    /// Where it sits on the circle.
    pub id: ChordId,
}

/// Matches a reply to the request it answers; unique per sending node and incarnation.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct RpcId(pub u64);

/// A stored value with the version that orders concurrent writes (last writer wins).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Item {
    /// The value.
    pub value: Vec<u8>,
    /// Which write is newer: the writing node's clock, then its id.
    pub version: Version,
}

/// A write's version: the clock reading of the node that accepted it, then that node.
/// Clocks are skewed, so this orders writes to one key only as well as the clocks agree:
/// enough for the DHT's single-writer-per-key use, not a linearizable register.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Version {
    /// Clock of the accepting node, in nanoseconds.
    pub stamp: u64,
    /// The accepting node, to break ties.
    pub node: NodeId,
}

/// How a request travelled: for clients, the experiments and the paper's figures.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Route {
    /// Remote nodes asked during routing, up to and including the key's predecessor
    /// (Chord's path length; the origin itself is not counted).
    pub hops: u32,
    /// Requests that timed out on the way (dead fingers or successors).
    pub timeouts: u32,
}

/// What a node answers when asked for the next step towards a target.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum StepAnswer {
    /// The target lies between the asked node and its successor: here is its successor
    /// list, whose first live entry owns the target.
    Done {
        /// The asked node's successors, nearest first.
        successors: Vec<Peer>,
    },
    /// These nodes are closer to the target, closest first (fingers and successors that
    /// precede the target).
    Closer {
        /// Candidates, closest to the target first.
        candidates: Vec<Peer>,
    },
}

/// What an origin asks of the node it found to own a target.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum OwnerRequest {
    /// Store `key` with `item` and replicate it on the successors.
    Store {
        /// The key.
        key: Vec<u8>,
        /// The value and its version.
        item: Item,
    },
    /// Read `key`.
    Fetch {
        /// The key.
        key: Vec<u8>,
    },
    /// Only confirm ownership (routing experiments).
    Probe,
}

/// The owner's answer.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum OwnerReply {
    /// The item is stored.
    Stored,
    /// The item, if the key is known.
    Fetched(Option<Item>),
    /// Ownership confirmed.
    Probed,
    /// The target belongs to a node between this one and its predecessor: try that.
    NotResponsible {
        /// This node's predecessor.
        predecessor: Peer,
    },
}

/// Every message of the Chord actor.
///
/// Clients send [`ChordMsg::Put`], [`ChordMsg::Get`], [`ChordMsg::Locate`] or
/// [`ChordMsg::Leave`] to any node, and get one [`ChordMsg::PutOk`], [`ChordMsg::GetOk`],
/// [`ChordMsg::Located`], [`ChordMsg::LeftRing`] or [`ChordMsg::Failed`] back through
/// `ctx.reply`. Everything else passes between nodes.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ChordMsg {
    // ---- client requests -------------------------------------------------------------
    /// Store `value` under `key` at the key's owner (and its replicas).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Read `key` from its owner.
    Get {
        /// The key.
        key: Vec<u8>,
    },
    /// Find the node that owns `target` (routing only).
    Locate {
        /// The identifier to find.
        target: ChordId,
    },
    /// Leave the ring gracefully, handing keys to the successor.
    Leave,

    // ---- client responses ------------------------------------------------------------
    /// The put is stored at `owner`.
    PutOk {
        /// The key.
        key: Vec<u8>,
        /// The node that stored it.
        owner: Peer,
        /// How the request travelled.
        route: Route,
    },
    /// The value of `key` at `owner` (None: not stored).
    GetOk {
        /// The key.
        key: Vec<u8>,
        /// The value, if any.
        value: Option<Vec<u8>>,
        /// The node that answered.
        owner: Peer,
        /// How the request travelled.
        route: Route,
    },
    /// `owner` owns `target`.
    Located {
        /// The identifier asked for.
        target: ChordId,
        /// Its owner, which confirmed it.
        owner: Peer,
        /// How the request travelled.
        route: Route,
    },
    /// The node has left the ring.
    LeftRing,
    /// The request could not be completed.
    Failed {
        /// Why.
        reason: String,
        /// How far it got.
        route: Route,
    },

    // ---- iterative routing (Chord §4.3, ToN §IV-B) -------------------------------------
    /// Where should a lookup for `target` go next?
    FindSuccessor {
        /// Request id.
        rpc: RpcId,
        /// The identifier the sender believes the receiver has; a node that restarted
        /// with another identifier ignores requests meant for its old one. `None`: any
        /// (a seed, whose identifier the joining node does not know).
        to: Option<ChordId>,
        /// The identifier looked up.
        target: ChordId,
    },
    /// The answer to [`ChordMsg::FindSuccessor`].
    Step {
        /// Request id.
        rpc: RpcId,
        /// The node that answers (a seed's identifier is not known in advance).
        responder: Peer,
        /// The answer.
        answer: StepAnswer,
    },
    /// A request to the node that owns `target`.
    OwnerOp {
        /// Request id.
        rpc: RpcId,
        /// The identifier the sender believes the receiver has; a node that restarted
        /// with another identifier ignores requests meant for its old one. `None`: any
        /// (a seed, whose identifier the joining node does not know).
        to: Option<ChordId>,
        /// The identifier the origin looked up.
        target: ChordId,
        /// Serve it even if the target seems to belong to the predecessor (the origin
        /// found the predecessor dead).
        force: bool,
        /// What to do.
        request: OwnerRequest,
    },
    /// The answer to [`ChordMsg::OwnerOp`].
    OwnerDone {
        /// Request id.
        rpc: RpcId,
        /// The answer.
        reply: OwnerReply,
    },

    // ---- ring maintenance (ToN Fig. 6 and §IV-E) ---------------------------------------
    /// stabilize: what are your predecessor and successor list?
    GetPredecessor {
        /// Request id.
        rpc: RpcId,
        /// The identifier the sender believes the receiver has.
        to: ChordId,
    },
    /// The answer to [`ChordMsg::GetPredecessor`].
    Predecessor {
        /// Request id.
        rpc: RpcId,
        /// The asked node's predecessor.
        predecessor: Option<Peer>,
        /// The asked node's successor list.
        successors: Vec<Peer>,
    },
    /// notify: `candidate` thinks it might be your predecessor.
    Notify {
        /// The sender.
        candidate: Peer,
    },
    /// check_predecessor: are you alive?
    Ping {
        /// Request id.
        rpc: RpcId,
        /// The identifier the sender believes the receiver has.
        to: ChordId,
    },
    /// Alive.
    Pong {
        /// Request id.
        rpc: RpcId,
    },

    // ---- keys --------------------------------------------------------------------------
    /// Keep these items: a migration to a new predecessor or a replica push.
    Replicate {
        /// Keys with their items.
        items: Vec<(Vec<u8>, Item)>,
    },
    /// Anti-entropy pull: the sender owns `(from, to]` and holds keys there with this
    /// digest; answer with [`ChordMsg::Replicate`] of yours in the range if they differ.
    /// Repairs a migration or replica message that was lost.
    SyncRange {
        /// Exclusive start of the range.
        from: ChordId,
        /// Inclusive end of the range.
        to: ChordId,
        /// XOR of a hash of every (key, version) the sender holds in the range.
        digest: u64,
    },
    /// The sender leaves: take its keys, and its predecessor as yours.
    Handoff {
        /// The leaving node.
        leaving: Peer,
        /// Its keys.
        items: Vec<(Vec<u8>, Item)>,
        /// Its predecessor.
        predecessor: Option<Peer>,
    },
    /// Your successor leaves: here is its successor list.
    SuccessorLeaving {
        /// The leaving node.
        leaving: Peer,
        /// Its successor list.
        successors: Vec<Peer>,
    },
}

//! Messages of the Dynamo-style store: client requests and replies, and the messages
//! replicas exchange for replication, reads, hinted handoff and anti-entropy.

use crate::clocks::{Dot, DvvSet, VersionVector};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use synod_core::NodeId;

/// A key: a bucket and a name within it. Buckets carry their own N, R and W.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Key {
    /// The bucket.
    pub bucket: String,
    /// The key within the bucket.
    pub name: String,
}

impl Key {
    /// `bucket/name`.
    pub fn new(bucket: impl Into<String>, name: impl Into<String>) -> Self {
        Key {
            bucket: bucket.into(),
            name: name.into(),
        }
    }

    /// The key's position on the ring: the hash of `bucket/name`.
    pub fn position(&self) -> u64 {
        let mut bytes = Vec::with_capacity(self.bucket.len() + self.name.len() + 1);
        bytes.extend_from_slice(self.bucket.as_bytes());
        bytes.push(b'/');
        bytes.extend_from_slice(self.name.as_bytes());
        crate::hashing::hash_bytes(&bytes)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.bucket, self.name)
    }
}

/// One sibling: a value, or the tombstone a delete leaves (Riak keeps tombstones so that a
/// delete carries a causal context like any write and cannot be undone by a stale replica).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub enum Sibling {
    /// A value written by a PUT.
    Value(Vec<u8>),
    /// A delete.
    Tombstone,
}

/// Everything a replica stores for one key: its siblings with their causal history.
pub type Object = DvvSet<Sibling>;

/// Per-request overrides of the bucket's N, R and W (Riak's `n_val`, `r` and `w`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Quorum {
    /// Replicas to involve; at most the bucket's N.
    pub n: Option<u8>,
    /// Replies a read waits for.
    pub r: Option<u8>,
    /// Durable acknowledgements a write waits for.
    pub w: Option<u8>,
}

/// A ring member's status, changed only by the member itself and versioned so that
/// gossip converges (Dynamo §4.8.1: membership changes are persisted and gossiped).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Membership {
    /// Bumped at every change the member makes.
    pub version: u64,
    /// Whether the member owns ranges.
    pub active: bool,
}

/// A peer's liveness as an outside failure detector (the node's SWIM member) reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum PeerStatus {
    /// The peer answers.
    Up,
    /// The peer missed probes and is under suspicion.
    Suspect,
    /// The peer was declared dead (or left).
    Down,
}

/// Messages of the store.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DynamoMsg {
    // ---- client → node -------------------------------------------------------------
    /// Read a key's siblings and causal context.
    Get {
        /// The key.
        key: Key,
        /// Overrides of the bucket's quorum.
        quorum: Quorum,
    },
    /// Write a value (or, with `Sibling::Tombstone`, delete) that supersedes what
    /// `context` saw. An empty context is a blind write: it supersedes nothing.
    Put {
        /// The key.
        key: Key,
        /// The context a previous read returned, or empty.
        context: VersionVector,
        /// The new value or a tombstone.
        value: Sibling,
        /// Overrides of the bucket's quorum.
        quorum: Quorum,
    },
    /// This node's own copy of `key` and the key's owners in its view, without a quorum
    /// (for operators and tests that check replica agreement).
    Inspect {
        /// The key.
        key: Key,
    },
    /// Ask this node to take ranges of the ring (join).
    Join,
    /// Ask this node to give up its ranges (leave); its data is handed off.
    Leave,
    /// From the local node: an outside failure detector (SWIM on a cluster) says `node`
    /// is `status`. After the first such event the node's liveness view comes from these
    /// events instead of its own heartbeats. No reply.
    PeerEvent {
        /// The peer.
        node: NodeId,
        /// Its status.
        status: PeerStatus,
    },

    // ---- node → client -------------------------------------------------------------
    /// A read's answer: the siblings (tombstones included) and their causal context.
    GetReply {
        /// Every sibling; empty if the key was never written.
        siblings: Vec<Sibling>,
        /// Hand this back with the next write to supersede these siblings.
        context: VersionVector,
    },
    /// A write reached W replicas durably.
    PutReply {
        /// The write's dot.
        dot: Dot,
        /// The causal context of the coordinator's object after the write.
        context: VersionVector,
    },
    /// The answer to `Inspect`.
    InspectReply {
        /// The local object, if any.
        object: Option<Object>,
        /// The key's owners under its bucket's N.
        owners: Vec<NodeId>,
        /// Peers this node treats as down now.
        down: Vec<NodeId>,
        /// Whether that view comes from an outside failure detector (SWIM) rather than
        /// the store's own heartbeats.
        peer_events: bool,
    },
    /// A membership request was applied.
    MembershipReply {
        /// Whether this node now owns ranges.
        active: bool,
    },
    /// The request failed; the write may still have reached some replicas.
    Failed {
        /// What went wrong.
        reason: String,
    },

    // ---- node → node ---------------------------------------------------------------
    /// Heartbeat with the sender's view of the ring's membership.
    Ping {
        /// Every member's status as the sender knows it.
        members: BTreeMap<NodeId, Membership>,
    },
    /// Store this object (merge it with the local one), then acknowledge.
    Replicate {
        /// The coordinator's request id.
        request: u64,
        /// The key.
        key: Key,
        /// The coordinator's object after the write.
        object: Object,
    },
    /// The object of `request` is durable here.
    ReplicateAck {
        /// The coordinator's request id.
        request: u64,
    },
    /// Send your object for `key`.
    Read {
        /// The coordinator's request id.
        request: u64,
        /// The key.
        key: Key,
    },
    /// The local object for a read (`None`: never written here).
    ReadReply {
        /// The coordinator's request id.
        request: u64,
        /// The local object.
        object: Option<Object>,
    },
    /// Read repair: merge this newer object (no reply).
    Repair {
        /// The key.
        key: Key,
        /// The merged object the coordinator computed.
        object: Object,
    },
    /// A chunk of objects this node holds but does not own: hinted writes or ranges it
    /// gave up in a ring change. The owner merges them and acknowledges each.
    Handoff {
        /// Objects with their keys.
        objects: Vec<(Key, Object)>,
    },
    /// These objects (by key and content hash) are durable at the sender.
    HandoffAck {
        /// Keys with the hash of the object that was merged.
        objects: Vec<(Key, u64)>,
    },
    /// Tombstone collection, phase 1: merge this tombstone (creating it if the key is
    /// absent) and say whether the local object is now exactly it.
    ReapPrepare {
        /// The round's id at the initiator.
        round: u64,
        /// The key.
        key: Key,
        /// The tombstone object (a single tombstone sibling).
        object: Object,
    },
    /// The answer to `ReapPrepare`, sent after the merge is durable.
    ReapReady {
        /// The round's id at the initiator.
        round: u64,
        /// Whether the local object is exactly the tombstone.
        ok: bool,
        /// If not, the local object, so that the initiator learns what superseded or
        /// joined its tombstone (and stops starting rounds for it).
        object: Option<Object>,
    },
    /// Tombstone collection, phase 2: forget `key` if its object still hashes to `hash`.
    Reap {
        /// The key.
        key: Key,
        /// `object_hash` of the tombstone object.
        hash: u64,
    },
    /// Anti-entropy, step 1: the roots of the Merkle trees of the partitions both nodes
    /// replicate.
    AaeRoots {
        /// Partition and root hash.
        roots: Vec<(u32, u64)>,
    },
    /// Anti-entropy, step 2: the segment hashes of the partitions whose roots differ.
    AaeSegments {
        /// Partition and its segment hashes.
        partitions: Vec<(u32, Vec<u64>)>,
    },
    /// Anti-entropy, step 3 and 4: objects of differing segments, and the segments
    /// whose objects the sender wants back.
    AaeObjects {
        /// Objects to merge.
        objects: Vec<(Key, Object)>,
        /// Partition and segment the sender wants the receiver's objects of.
        want: Vec<(u32, u32)>,
    },
}

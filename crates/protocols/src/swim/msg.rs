//! What SWIM nodes say to each other and to their clients.

use serde::{Deserialize, Serialize};
use std::fmt;
use synod_core::NodeId;

/// A member's incarnation number (SWIM §4.2). Only the member itself raises it, to refute
/// a suspicion; every other node compares it to order updates about that member.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Incarnation(pub u64);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A probe's sequence number, local to the node that started the probe.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct ProbeSeq(pub u64);

/// A user event's Lamport time (Serf orders and deduplicates events by it).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct EventTime(pub u64);

/// A user event broadcast to the whole group, as Serf's `serf event`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    /// The member that fired it.
    pub origin: NodeId,
    /// Its Lamport time at the origin.
    pub time: EventTime,
    /// The event's name.
    pub name: String,
    /// The event's payload.
    pub payload: Vec<u8>,
}

/// One piece of gossip, piggybacked on protocol messages (SWIM §4.1, infection style).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// `node` is alive at `incarnation`, with this metadata. Also how a member joins.
    Alive {
        /// The member.
        node: NodeId,
        /// Its incarnation.
        incarnation: Incarnation,
        /// Its metadata (at most [`super::MAX_META_BYTES`]).
        meta: Vec<u8>,
    },
    /// `from` suspects `node` at `incarnation`.
    Suspect {
        /// The member suspected.
        node: NodeId,
        /// The incarnation suspected.
        incarnation: Incarnation,
        /// Who suspects it (Lifeguard counts distinct suspecters as confirmations).
        from: NodeId,
    },
    /// `from` declares `node` dead at `incarnation` (SWIM's Confirm). When `from == node`
    /// the member is leaving gracefully.
    Dead {
        /// The member.
        node: NodeId,
        /// The incarnation declared dead.
        incarnation: Incarnation,
        /// Who declared it.
        from: NodeId,
    },
    /// A user event.
    Event(UserEvent),
}

impl Update {
    /// The member this update is about (for an event, its origin).
    pub fn subject(&self) -> NodeId {
        match self {
            Update::Alive { node, .. }
            | Update::Suspect { node, .. }
            | Update::Dead { node, .. } => *node,
            Update::Event(e) => e.origin,
        }
    }
}

/// One member's entry in a push-pull state exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// The member.
    pub node: NodeId,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// Its status as the sender sees it.
    pub status: super::MemberStatus,
    /// Its metadata.
    pub meta: Vec<u8>,
}

/// Requests a client (another service on the node, the CLI, a test) sends a SWIM node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwimRequest {
    /// The live view: every member with its status and incarnation.
    Members,
    /// Send every later membership change to this client, as [`SwimReply::Change`].
    Subscribe,
    /// Leave the group gracefully.
    Leave,
    /// Replace this node's metadata (at most [`super::MAX_META_BYTES`]).
    SetMeta(Vec<u8>),
    /// Broadcast a user event to the group.
    FireEvent {
        /// The event's name.
        name: String,
        /// Its payload (name and payload at most [`super::MAX_EVENT_BYTES`]).
        payload: Vec<u8>,
    },
}

/// Answers to [`SwimRequest`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwimReply {
    /// The membership view.
    Members(Vec<super::MemberInfo>),
    /// A membership change, for a subscriber.
    Change(super::MembershipChange),
    /// The request was carried out.
    Done,
    /// The request was refused; the text says why.
    Refused(String),
}

/// Every SWIM message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwimMsg {
    /// A direct probe of `target` (§3.1). The target answers with [`SwimMsg::Ack`].
    Ping {
        /// The prober's sequence number.
        seq: ProbeSeq,
        /// Whom the prober means to reach; a node ignores a ping meant for another.
        target: NodeId,
        /// Piggybacked gossip.
        updates: Vec<Update>,
    },
    /// Ask the receiver to probe `target` on the sender's behalf (§3.1, ping-req).
    PingReq {
        /// The requester's sequence number, echoed in the forwarded ack or the nack.
        seq: ProbeSeq,
        /// The member to probe.
        target: NodeId,
        /// Piggybacked gossip.
        updates: Vec<Update>,
    },
    /// The answer to a ping, or a forwarded answer to a ping-req.
    Ack {
        /// The sequence number of the probe answered.
        seq: ProbeSeq,
        /// Piggybacked gossip.
        updates: Vec<Update>,
    },
    /// Lifeguard §IV-A: an intermediary that got no ack in time says so, which tells the
    /// requester that the intermediary, at least, is alive and reachable.
    Nack {
        /// The requester's sequence number.
        seq: ProbeSeq,
    },
    /// Gossip with no probe attached: a leaving node's last words.
    Gossip {
        /// The updates.
        updates: Vec<Update>,
    },
    /// Full-state anti-entropy (memberlist's push-pull), also how a node joins through a
    /// seed. The receiver merges `state` and, if `reply`, answers with its own state.
    PushPull {
        /// Whether the sender wants the receiver's state back.
        reply: bool,
        /// The sender's whole membership view.
        state: Vec<MemberState>,
    },
    /// From a client.
    Request(SwimRequest),
    /// To a client.
    Reply(SwimReply),
}

//! Identities of the endpoints that exchange messages.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A server node of the cluster. Ids are small and dense: `NodeId(0)..NodeId(n)` in the
/// simulator, and whatever the cluster file assigns on the network.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The id as an index into a per-node table.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A client: a gRPC caller, a CLI command or a simulated workload. Clients send requests
/// and receive replies; they never take part in the protocol itself.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Who sent a message to an actor.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Endpoint {
    /// Another node running the same protocol.
    Node(NodeId),
    /// A client request; answer it with [`crate::Ctx::reply`].
    Client(ClientId),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Node(n) => n.fmt(f),
            Endpoint::Client(c) => c.fmt(f),
        }
    }
}

impl From<NodeId> for Endpoint {
    fn from(n: NodeId) -> Self {
        Endpoint::Node(n)
    }
}

impl From<ClientId> for Endpoint {
    fn from(c: ClientId) -> Self {
        Endpoint::Client(c)
    }
}

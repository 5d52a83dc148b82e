//! # Paxos: single-decree Paxos and Multi-Paxos
//!
//! After Leslie Lamport, "Paxos Made Simple", ACM SIGACT News 32(4), 2001 (§2 for the
//! single-decree synod algorithm, §3 for the state-machine implementation, Multi-Paxos).
//!
//! ## The algorithm
//!
//! - [`single`]: one value is chosen. Every node is proposer, acceptor and learner.
//!   A proposer picks a ballot `(round, node)` higher than any it has seen and runs
//!   phase 1 (`Prepare` / `Promise`): a majority of acceptors promise to ignore lower
//!   ballots and report the highest-ballot value each has accepted. In phase 2
//!   (`Accept` / `Accepted`) it asks them to accept the value of the highest-ballot
//!   report, or its own value if there was none (§2.2, P2c). A value is chosen once a
//!   majority accepts it in one ballot; learners hear `Accepted` from every acceptor.
//!   A proposer that is refused (`Nack`) or times out retries with a higher round after a
//!   randomized, growing backoff, so duelling proposers eventually let one finish (§2.4).
//! - [`multi`]: a replicated log of KV commands. One node, the distinguished leader, runs
//!   phase 1 once for every slot from its first unchosen slot on, fills every slot it
//!   learned nothing about with a no-op, and then runs only phase 2 for each new command
//!   (§3). Heartbeats keep it leader; a node that misses them for an election timeout
//!   runs phase 1 with a higher ballot. Commands carry a client session and sequence
//!   number so that a retried command applies once.
//!
//! ## Fault and timing model
//!
//! Crash-recovery with a durable disk, and an asynchronous network that loses,
//! duplicates, reorders and partitions messages. Safety (agreement, validity,
//! integrity) holds under all of it; liveness needs a majority up and connected for long
//! enough (FLP: no deterministic algorithm guarantees termination otherwise).
//!
//! Acceptor state (the promise and the accepted ballot and value) is written through
//! [`synod_core::Storage`] and every message that depends on it is sent with
//! `ctx.send`, which the driver holds until the write is durable (group commit). That is
//! the "acceptor remembers" requirement of §2.3: a promise forgotten in a crash lets two
//! different values be chosen. The one unsynced send is a Multi-Paxos leader's `Accept`
//! to its peers, which claims nothing about the leader's disk; the leader's own vote
//! counts only once its acceptance is durable (it comes back through a held loopback
//! `Accept`), as a Raft leader replicates while it writes (Raft thesis §10.2.1). The broken variant that answers before persisting is
//! kept behind a test-only flag ([`Bug`]) so that the tests show the checker catching it.
//!
//! ## Invariants (checked in simulation)
//!
//! - Agreement: at most one value is chosen (per slot, for Multi-Paxos).
//! - Validity: a chosen value was proposed (by a node, or by a client; or is a no-op).
//! - Integrity: a node decides at most once, and never changes its decision.
//! - Multi-Paxos: the client history is linearizable.
//!
//! ## Differences from the chapter's sketch
//!
//! The sketch numbers proposals with a bare counter, so two proposers can use the same
//! number with different values; here a ballot is `(round, node id)` and totally
//! ordered. The sketch keeps acceptor state in memory; here it is durable and replies wait
//! for the fsync. The sketch's leader never fills gaps; here a new leader proposes a no-op
//! for every slot below its highest known slot that no acceptor reported.

use serde::{Deserialize, Serialize};
use std::fmt;
use synod_core::NodeId;

pub mod multi;
pub mod single;

#[cfg(any(test, feature = "harness"))]
pub mod harness;

#[cfg(test)]
mod tests;

/// A proposal number: a round and the proposer's id, so that two proposers never share
/// one (Paxos Made Simple §2.2: "different proposals have different numbers").
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Ballot {
    /// The round; compared first.
    pub round: u64,
    /// The proposer; breaks ties between equal rounds.
    pub node: NodeId,
}

impl Ballot {
    /// Below every real ballot: nothing promised, nothing accepted.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        node: NodeId(0),
    };
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.round, self.node)
    }
}

/// Deliberately broken variants, for tests that show the checkers catching them. Only
/// compiled into tests and the `harness` feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Acceptors send `Promise` and `Accepted` before the state they report is durable
    /// (`send_unsynced`), so a crash can make them forget a promise or an acceptance.
    ReplyBeforePersist,
    /// Proposers ignore the values reported in promises and propose their own (breaks
    /// P2c of §2.2).
    IgnoreAcceptedValues,
}

/// The smallest majority of `n` nodes.
pub(crate) fn majority(n: usize) -> usize {
    n / 2 + 1
}

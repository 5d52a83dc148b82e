//! # Leader election
//!
//! Three algorithms behind one read-only face, [`LeaderElection`], so that one simulation
//! harness and `synod compare election` serve all of them:
//!
//! | module | algorithm | model | messages per election |
//! |---|---|---|---|
//! | [`bully`] | Garcia-Molina 1982 | synchronous (timeouts), crash-recovery | O(N²) worst, N−1 best |
//! | [`chang_roberts`] | Chang & Roberts 1979 | asynchronous unidirectional ring, no faults | N(N+1)/2 worst, ≈N·H_N average, 2N−1 best (+N announcements) |
//! | [`candidate_ring`] | the chapter's candidate-list ring (Le Lann 1977) | same | 2N per initiator: O(N²) when all initiate |
//!
//! The property every suite checks: once the system is stable, the live nodes believe in
//! at most one leader, and it is the highest live id.

use serde::{Deserialize, Serialize};
use synod_core::{Actor, NodeId};

pub mod bully;
pub mod candidate_ring;
pub mod chang_roberts;

#[cfg(test)]
mod harness;

/// Per-node counters for comparing algorithms. Volatile: a crash resets them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionCounters {
    /// Election messages this node sent to other nodes (heartbeats not included).
    pub messages_sent: u64,
    /// Heartbeats this node sent (failure detection, not part of the election proper).
    pub heartbeats_sent: u64,
    /// Elections this node started.
    pub elections_started: u64,
}

/// The read-only face shared by every election actor.
pub trait LeaderElection: Actor {
    /// The node this node believes is the leader, if it believes in one.
    fn leader(&self) -> Option<NodeId>;
    /// Whether this node is taking part in an unfinished election.
    fn electing(&self) -> bool;
    /// This node's counters.
    fn counters(&self) -> ElectionCounters;
}

//! # Chord: a scalable peer-to-peer lookup protocol
//!
//! After Stoica, Morris, Karger, Kaashoek and Balakrishnan, *Chord: A Scalable Peer-to-peer
//! Lookup Service for Internet Applications* (SIGCOMM 2001), and the extended version by
//! Stoica, Morris, Liben-Nowell, Karger, Kaashoek, Dabek and Balakrishnan (IEEE/ACM
//! Transactions on Networking 11(1), 2003), cited below as "ToN".
//!
//! ## The algorithm
//!
//! Nodes and keys hash onto one identifier circle. A key belongs to its *successor*: the
//! first node at or after the key's identifier, clockwise (consistent hashing, §4.2). Each
//! node keeps
//!
//! - a *successor list* of its r nearest successors (ToN §IV-E), so that the ring survives
//!   the simultaneous failure of up to r−1 consecutive nodes;
//! - a *predecessor* pointer;
//! - a *finger table*: finger i is the successor of `id + 2^i` (§4.3), so that each
//!   routing step at least halves the remaining distance and a lookup takes O(log N) hops,
//!   about ½·log2 N on average (Fig. 10).
//!
//! Four periodic tasks keep this state correct as nodes come and go (ToN Fig. 6), each on
//! its own timer with a period drawn uniformly from 0.5× to 1.5× its mean:
//! **stabilize** asks the successor for its predecessor and successor list, adopts the
//! predecessor if it lies between, and **notify**s the successor; **fix_fingers** refreshes
//! one finger by a lookup; **check_predecessor** pings the predecessor and forgets it if
//! it does not answer; the **replica push** sends the keys this node owns to its first
//! `replicas` successors.
//!
//! **Lookups are iterative** (ToN §IV-B): the origin asks one node after another for the
//! next step ([`ChordMsg::FindSuccessor`]). A node answers *done* when the target lies
//! between it and its successor, with its successor list, or else with its fingers and
//! successors that most closely precede the target ([`StepAnswer::Closer`]). The origin
//! keeps every candidate it has heard of, ordered by distance to the target, and always
//! asks the closest untried one; a node that does not answer within `rpc_timeout` counts
//! as a *timeout*, is dropped from the origin's own tables, and the next-best candidate is
//! asked. This is how the lookup survives failed fingers before stabilization repairs
//! them (ToN Table II). The owner phase then contacts the first live entry of the final
//! successor list; an owner whose predecessor lies between answers *not responsible*, and
//! the origin tries that predecessor (a join that routing has not seen yet).
//!
//! **Joining** (§4.4, ToN §IV-C): the new node looks up its own identifier through any seed
//! it knows, takes the result as its successor and stabilizes at once. When the successor
//! accepts it as predecessor (notify), it sends the keys of the range
//! `(old predecessor, new node]` over: **migration on join**. It keeps its copies as the
//! new node's first replica.
//!
//! **Graceful leave** (ToN §IV-E): the leaving node hands its keys and its predecessor to
//! its successor ([`ChordMsg::Handoff`]) and its successor list to its predecessor
//! ([`ChordMsg::SuccessorLeaving`]).
//!
//! **Keys** are stored by the owner, pushed to its first `replicas` successors at once and
//! again every replica period, and appended to the node's storage log, so that a restarted
//! node comes back with its keys. When an owner fails, its successor already holds the
//! keys, owns their range as soon as it learns its new predecessor, and pushes them on to
//! its own successors. Writes carry a [`Version`] (the accepting node's clock, then its
//! id); replicas keep the newest. That is last-writer-wins, not linearizable: Chord is a
//! lookup service, and a store that needs more builds quorums on top.
//!
//! ## Choices
//!
//! - **64-bit identifiers**, [`ChordId`], hashed with [`crate::hashing::hash_bytes`]
//!   (FNV-1a with a SplitMix64 finish), not 160-bit SHA-1. The analysis only needs ids
//!   spread uniformly; 64 bits hold 2^64 positions, far beyond any ring here, and keep an
//!   id in a machine word. SHA-1's resistance to chosen keys is lost: a hostile client can
//!   aim keys at one node.
//! - Lookups are iterative, as in the paper's simulator, so that the origin sees every
//!   hop and every timeout and can retry around a dead node. The client face is one
//!   request and one reply ([`ChordMsg::Put`]/[`ChordMsg::Get`] from an
//!   `Endpoint::Client`, answered with `ctx.reply`), so that the same actor serves a CLI
//!   over the real transport.
//! - One node of a cluster is configured to create the ring (`create`); every other node,
//!   and the creator after a restart, joins through its seeds.
//!
//! ## Fault and timing model
//!
//! Crash-stop and crash-recovery nodes, lossy and reordering links, no Byzantine nodes.
//! Timeouts make failure detection unreliable: a slow node is taken for dead, dropped, and
//! re-learned through stabilize. Correctness of lookups holds once the ring is stable
//! (no joins or failures for a few stabilize periods, ToN Theorem IV.3); during churn a
//! lookup can end at the wrong node, which the churn experiment counts as the paper does.
//! Partitions can split the ring into two rings that never merge again: ToN §IV-F
//! discusses this and leaves it open, and so does this code.
//!
//! ## Invariants (tested in `tests.rs` over many seeds)
//!
//! - **Ring convergence**: after joins (and crashes that heal), every node's successor,
//!   successor list, predecessor and fingers match the true ring.
//! - **Lookup correctness**: once stable, every lookup ends at the true successor of its
//!   target, within about log2 N hops.
//! - **Durability**: with `replicas` ≥ 1, crashing any `replicas` nodes loses no key; keys
//!   migrate to a joining node, and a graceful leave hands them to the successor.
//!
//! ## Differences from the chapter's sketch
//!
//! The chapter's node calls other nodes' methods directly (recursive, synchronous, no
//! failures), keeps a single successor, recomputes every finger at join time, never moves
//! or replicates keys, and cannot detect a failed node. Here everything is a message with
//! a timeout, the successor list and replicas give fault tolerance, and keys migrate.

mod msg;
mod state;

#[cfg(any(test, feature = "harness"))]
pub mod harness;
#[cfg(test)]
mod tests;

pub use msg::{
    ChordId, ChordMsg, Item, OwnerReply, OwnerRequest, Peer, Route, RpcId, StepAnswer, Version,
};
pub use state::{Chord, ChordConfig, ChordCounters, ChordTimer, ID_BITS};

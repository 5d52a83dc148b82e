//! # MVCC: etcd v3.4's multi-version key-value store and leases as a Raft state machine
//!
//! The replicated state behind synod's etcd-compatible API. It follows etcd v3.4's data
//! model and its `mvcc`, `lease` and applier semantics, as documented in "etcd API"
//! (<https://etcd.io/docs/v3.4/learning/api/>) and "Data model"
//! (<https://etcd.io/docs/v3.4/learning/data_model/>). The multi-version design is
//! Reed's "Naming and synchronization in a decentralized computer system" (MIT
//! TR-205, 1978) as etcd applies it: every change is kept under a new revision until
//! compaction. Leases are Gray & Cheriton's "Leases: an efficient fault-tolerant mechanism
//! for distributed file cache consistency" (SOSP 1989), with the leader alone keeping time.
//!
//! ## The data model
//!
//! - The store has one **revision**, starting at 1. Every command that changes keys takes
//!   the next *main* revision. Each change within it (one per key) takes the next
//!   *sub*-revision. A command that changes nothing (a read, a failed delete, a
//!   read-only Txn) leaves the revision alone.
//! - Each key has a list of **generations**. A generation runs from the put that created
//!   the key to the delete that ended it. A key's `create_revision` is its generation's
//!   first revision, `mod_revision` its last change, and `version` the number of puts
//!   in the generation. A delete ends the generation, so the next put starts at version
//!   1 with a new create revision.
//! - A **Range** at revision `r` sees each key's last change at or before `r`. Range
//!   reads at any revision from the compacted revision up to the current one. Below it
//!   fails with "required revision has been compacted", above it with "required revision
//!   is a future revision". `count` counts every key in range at that revision, before
//!   the limit and the min/max filters. `more` says the limit cut the result.
//! - A **Txn** evaluates all its compares first, including those of nested Txns on the
//!   chosen branches (etcd's `compareToPath`). It then checks its chosen operations, then
//!   runs them, all under one main revision. Reads inside it see its own earlier writes.
//!   A key may not be put twice, or put and deleted, in one branch (etcd's
//!   `checkIntervals`).
//! - **Compaction** at `r` drops every version no read at `r` or later can see: the
//!   versions superseded at or before `r`, and generations deleted at or before `r`.
//! - A **lease** has a TTL and a set of attached keys. Revoking it, or the leader's
//!   decision that it expired (`LeaseExpire`), deletes the keys in one revision. The
//!   state machine reads no clock. The leader's [`Lessor`] keeps the deadlines. It turns
//!   them into `LeaseExpire` and `LeaseCheckpoint` commands, which go through the log.
//!   A new leader restarts each lease from its last checkpointed remaining TTL, or from
//!   its full TTL if it has none (etcd's lease checkpointing, 3.4).
//!
//! ## Watch
//!
//! Every change is an [`Event`] (put or delete, with the key's previous version).
//! [`MvccStateMachine::events_between`] replays retained history for a new watcher.
//! Delivery that is gap-free across leader changes comes from every node's own apply
//! loop. After each step, a node's server asks [`MvccStateMachine::events_after`] for
//! what followed the last revision it delivered. Every replica applies the same log, so
//! a node that takes over as leader produces the same events as before. A compaction
//! applied in the same step as the changes it compacts does not lose them: a journal of
//! the last [`MvccConfig::journal_revisions`] revisions of events outlives compaction.
//!
//! ## Fault model
//!
//! This is a deterministic state machine under Raft (crate::raft), so it inherits Raft's
//! model: crash-recovery, and a lossy, reordering and partitioning network. Replicas agree
//! because they apply the same commands in the same order. Nothing here reads a clock, so
//! lease expiry is exactly as safe as the leader's clock. A lease guarantees nothing about
//! mutual exclusion in an asynchronous network, as Jepsen showed for etcd 3.4.3. Use the
//! lock key's revision as a fencing token.
//!
//! ## Differences from etcd
//!
//! - Snapshots hold the whole retained history in one value, not a bbolt file.
//!   `db_size` is an exact count of retained bytes under a fixed per-record cost, not a
//!   file size.
//! - etcd proposes one revoke per expired lease. `LeaseExpire` carries a batch and gives
//!   each lease its own revision.
//! - When the state machine picks a lease id, it derives it from the Raft index. etcd's
//!   leader picks it from a generator before proposing.
//! - A watch from a compacted start fails when `start <= compacted`. etcd accepts
//!   `start == compacted` even though a delete at that revision may be gone.
//!
//! ## Differences from the chapter's sketch
//!
//! The chapter's replicated key-value store is a map from keys to values, with no
//! history, no revisions and no transactions. Here every version is kept until
//! compaction, reads at past revisions work, guarded multi-key transactions apply
//! atomically, and leases tie keys to liveness.

mod lessor;
mod msg;
mod state;
#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "harness"))]
pub mod harness;

pub use lessor::{Lessor, LessorConfig, LessorError, Renewal};
pub use msg::{
    CompactionRequest, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    DeleteRangeResponse, Event, EventKind, KeyValue, LeaseCheckpoint, LeaseId, MvccCommand,
    MvccError, MvccOutput, MvccResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseOp, Revision, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
pub use state::{
    EventSource, Lease, MvccConfig, MvccStateMachine, LEASE_OVERHEAD, MAX_LEASE_TTL,
    TOMBSTONE_OVERHEAD, VERSION_OVERHEAD,
};

//! # Transactions across Raft groups (multi-Raft, Percolator-style 2PC)
//!
//! The keyspace is split into **ranges**, each served by its own Raft group, and all
//! groups run on the same nodes (issue 11, parts 2–3). Cross-range transactions commit
//! with two-phase commit in which the coordinator's decision and every participant's
//! locks are replicated Raft state, so one node crash blocks nothing.
//!
//! Sources: Peng & Dabek, "Large-scale Incremental Processing Using Distributed
//! Transactions and Notifications" (Percolator), OSDI 2010, §2.2 (snapshot isolation
//! over a timestamp oracle, primary lock as commit point, lazy lock cleanup); Corbett et
//! al., "Spanner", OSDI 2012, §4.2.1 (2PC whose participants and coordinator are Paxos
//! groups); the CockroachDB design docs on transaction records, write intents and
//! `PushTxn`, range splits and the one-phase commit fast path; TiKV's documentation of
//! multi-Raft regions and region splits; Ongaro & Ousterhout (Raft) for every group.
//!
//! ## Multi-Raft: one actor per node, many groups
//!
//! [`TxnNode`] is one actor per node that hosts one replica of every range. Each
//! replica is the unchanged [`crate::raft::Raft`] over a [`RangeSm`]; the node gives it
//! a `Ctx` of its own (a storage namespace whose log lives in keys of the node's store,
//! a private random stream, re-addressed effects). Every range is replicated on every
//! node, as in a small CockroachDB or TiKV cluster with replication factor = nodes.
//!
//! - **Range descriptors and routing.** Range 0 is the *meta* group; it serves no keys
//!   and runs the timestamp oracle. Range 1 starts with the whole keyspace. Each range's
//!   descriptor (`[start, end)`, generation) is part of its replicated state; a node
//!   routes a client request to the local replica whose applied descriptor holds the
//!   key. Every reply carries the answering range's descriptor, so clients cache the
//!   layout; a command for a key outside the range (stale routing after a split) is
//!   answered `RangeMismatch` and retried.
//! - **Splits.** A leader whose range holds more than `split_max_keys` keys proposes
//!   `Split { generation, split_key }` (the median key) *through the range's own log*.
//!   On apply, every replica moves the right half (versions, intents, transaction
//!   records anchored there, read-cache entries) into a new range whose id is derived
//!   from the parent's (`id | 1 << depth`, unique without an allocator); the node writes
//!   that initial state durably and starts the new group. The generation makes a split
//!   proposed twice apply once.
//! - **Log compaction with splits.** Every range snapshots and truncates its log (§7).
//!   A range born from a split stores its initial state as its Raft snapshot at index 1
//!   (`Raft::seed_snapshot`), so the split travels like any snapshot: a replica that
//!   installs a parent's snapshot taken after a split never applies the split entry,
//!   learns the children from the parent's descriptor (the split at depth `d` created
//!   `id | 1 << d`) and hosts them *uninitialized* — empty log, no keys served, no
//!   election timer — until the child's leader, finding no entry at index 0 to match,
//!   sends its snapshot (TiKV's uninitialized peers, created on demand and filled by a
//!   snapshot). An uninitialized replica never campaigns: elected by other uninitialized
//!   replicas it would overwrite the seeded state. It still votes, as a follower with an
//!   empty log does, which the election restriction (§5.4.1) already covers.
//!
//! ## Transactions: snapshot isolation with a timestamp oracle
//!
//! Isolation is **snapshot isolation** with timestamps from a **timestamp oracle**
//! (Percolator), not HLC. Why: the oracle is a Raft group whose counter is replicated,
//! so timestamps are unique and increase in real time, and a snapshot read at a
//! timestamp taken after a commit returned always sees it. That gives real-time
//! (per-key linearizable) reads without clock-uncertainty restarts, which HLC needs
//! (CockroachDB's uncertainty intervals) under the simulator's skewed, drifting clocks.
//! The price is one oracle round per timestamp.
//!
//! A transaction (driven by its client, the coordinator, as in Percolator):
//! 1. takes `start_ts` from the oracle and reads at it; a read that meets another
//!    transaction's intent with `start_ts ≤ read_ts` must learn its fate first (below);
//! 2. buffers its writes. **Fast path**: if all writes fall in one range it takes
//!    `commit_ts` and sends one `OnePhase` command that checks conflicts and writes
//!    committed versions in one Raft round, with no intents and no record;
//! 3. otherwise **prewrites** an intent on every key (refused on another intent, or on
//!    a committed version newer than `start_ts`: first committer wins, which forbids
//!    lost updates), takes `commit_ts`, and sends `EndTxn` to the range of its first
//!    written key (the *anchor*), which holds the **transaction record**. The record's
//!    first decision wins; this replicated write is the commit point;
//! 4. resolves its intents into versions at `commit_ts` (or removes them).
//!
//! **Recovery (intent resolution after coordinator failure).** A client that meets an
//! intent sends `Push` to the anchor's range: a decided record tells it the outcome;
//! a pending (or missing) record past the transaction's `expires_at` is set to
//! *aborted* there, so the dead coordinator's later `EndTxn` fails. Either way the
//! pusher resolves the intent and retries. Safety never depends on clocks: only the
//! record decides, through one Raft log.
//!
//! The one-phase path writes no intent before its commit timestamp, so a reader at a
//! higher timestamp could have read the key first. Reads therefore go through the log
//! and leave a replicated **read-timestamp cache** (`max_read` per key); `OnePhase` is
//! refused with `TooOld` (retried with a fresh timestamp) if a read at or above its
//! `commit_ts` was served — CockroachDB's timestamp cache, made replicated.
//!
//! ## Byte values, scans and etcd metadata
//!
//! Values are bytes. `Scan` reads every live key of an interval (clipped to the range)
//! at a snapshot, with etcd's per-key metadata derived from the version chain
//! ([`RangeState::row_at`]: `mod_revision` = newest commit timestamp, `create_revision`
//! = first put since the last delete, `version` = puts since then); the coordinator
//! chains scans across ranges. Revisions are oracle timestamps: unique and ordered, not
//! dense. A multi-key scan raises the range's `scan_ts`, above which one-phase commits
//! must land (no phantoms under a served scan). The etcd KV API over ranges is built on
//! this in `synod_server` (etcd/ranges.rs).
//!
//! ## Fault model and invariants
//!
//! Crash-recovery nodes with durable storage, a lossy, duplicating, reordering network
//! with partitions, skewed and drifting clocks (Raft's model). Coordinators (clients)
//! may vanish at any point. Checked by the bank test in [`harness`] over many seeds:
//! the total of all balances never changes, no snapshot read sees part of a transfer,
//! and every key's history of reads and writes is linearizable (synod-check).
//!
//! ## Closed timestamps and watch feeds
//!
//! `Feed` is a rangefeed with a closed timestamp (CockroachDB's rangefeeds and closed
//! timestamps; the rule for where a range may close is TiKV's resolved-ts): a watcher
//! takes an oracle timestamp `t` and sends `Feed` through the log of every range of its
//! interval. On apply the range's `closed` rises to `min(t, oldest intent start - 1)`
//! (monotone, replicated, handed to both halves of a split), and the answer lists every
//! version of the interval in `(after, closed]`. Why nothing at or below `closed` can
//! appear later: a one-phase commit at or below it is refused (`TooOld`, retried at a
//! fresh timestamp); an intent pending at the `Feed` commits above its start, so above
//! `closed`; an intent laid after the `Feed` entry belongs to a transaction that takes
//! its commit timestamp only after all its prewrites are acknowledged, so after `t` was
//! handed out: it commits above `t`. A watcher therefore releases, in timestamp order,
//! exactly the events up to the smallest resolved timestamp of the ranges it covers.
//! Checked by [`harness::watch_scenario`] against the replicas' final history over many
//! seeds, with a planted bug (closing over intents) that the check catches.
//!
//! ## Garbage collection
//!
//! - **Transaction records.** A coordinator that learned the decision and had every
//!   intent it laid resolved (each `Resolve` acknowledged) sends `ForgetTxn`, which
//!   deletes the decided record (never a pending one). Why no later question can be
//!   answered differently: questions about a transaction `T` come from (1) `T`'s own
//!   coordinator, which is done (a network duplicate of its `EndTxn` is answered by the
//!   Raft session table), and (2) pushers and watchers that met an intent of `T`. After
//!   the resolution no intent of `T` exists: a committed `T` had all its prewrites
//!   acknowledged, hence all resolved; a late duplicate `Prewrite` of a committed `T`
//!   finds its own version and lays nothing. A pusher that saw an intent before the
//!   resolution and asks after the GC finds no record and gets the presumed-abort answer
//!   (pending, then aborted after expiry); the `Resolve(aborted)` it then sends is a
//!   no-op, since the key holds no intent of `T`. An aborted `T` may leave intents whose
//!   prewrite was never acknowledged: presumed abort decides them aborted, as before.
//!   Records of coordinators that vanished stay (a pusher decided them); CockroachDB
//!   collects those in a GC queue, not done here.
//! - **Read-timestamp cache.** Entries at or below `max(closed, compacted)` are dropped
//!   whenever either rises: a one-phase commit at or below either is refused anyway, so
//!   such an entry refuses nothing more.
//!
//! ## Not done
//!
//! Parallel commits (the record's STAGING state), transaction heartbeats (a record
//! expires a fixed time after the transaction started), GC of the records of vanished
//! coordinators, range merges and rebalancing replicas across nodes, leases. On a live cluster (`synod up --ranges`) this actor runs unchanged as node
//! service 13; see `synod_server::txn` and docs/multiraft.md.
//!
//! ## Differences from the chapter's sketch
//!
//! The chapter (§14.7) shows blocking 2PC with a single coordinator process: its
//! decision lives in one process's log, so a coordinator crash after the votes blocks
//! every participant. Here the decision is a replicated record and any client may
//! finish (or abort) an abandoned transaction.

#[cfg(any(test, feature = "harness"))]
pub mod harness;
pub mod lease;
mod msg;
mod node;
mod range;
#[cfg(test)]
mod tests;

pub use msg::{
    u64_value, value_u64, Event, Key, RangeCommand, RangeDescriptor, RangeId, RangeOutput,
    RangeRaftMsg, RangeResult, Route, Row, Timestamp, TxnId, TxnMeta, TxnMsg, TxnStatus, Value,
};
pub use node::{TxnConfig, TxnNode, TxnTimer, DEFAULT_SNAPSHOT_THRESHOLD};
pub use range::{Intent, RangeSm, RangeState, Version};

//! The types the transaction layer exchanges: ranges, timestamps, transaction metadata,
//! the commands a range's Raft group applies, and the node-level envelope.

use super::lease::LeaseInfo;
use crate::mvcc::LeaseId;
use crate::raft::RaftMsg;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A key of the transactional keyspace. Keys order as strings; ranges are intervals of it.
pub type Key = String;

/// A stored value: bytes (etcd values). Bank balances and register values, which are
/// `u64` in synod-check's models, are stored as their decimal text ([`u64_value`]).
pub type Value = Vec<u8>;

/// The stored form of a `u64` register: its decimal text.
pub fn u64_value(n: u64) -> Value {
    n.to_string().into_bytes()
}

/// A stored value read as a `u64` register (`None` if it is not decimal text).
pub fn value_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// One key of a [`RangeCommand::Scan`] answer, with etcd's per-key metadata. Revisions
/// are the oracle timestamps of the commits (see [`Timestamp`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The key.
    pub key: Key,
    /// The value at the snapshot (empty when the scan asked for keys only).
    pub value: Value,
    /// Commit timestamp of the put that created this incarnation of the key (the first
    /// put after the last delete): etcd's `create_revision`.
    pub create_ts: Timestamp,
    /// Commit timestamp of the newest version at the snapshot: etcd's `mod_revision`.
    pub mod_ts: Timestamp,
    /// Puts since that creation, starting at 1: etcd's `version`.
    pub version: u64,
}

/// One committed change of a key, as a watch delivers it (etcd's `mvccpb.Event`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The key.
    pub key: Key,
    /// The commit timestamp (etcd's revision of the event).
    pub ts: Timestamp,
    /// The key after the change, with etcd's metadata; `None`: a deletion.
    pub row: Option<Row>,
    /// The key just before the change (etcd's `prev_kv`); `None`: it was absent.
    pub prev: Option<Row>,
}

/// Identifies a range and the Raft group that serves it. Range 0 is the meta group,
/// which runs the timestamp oracle and serves only the lease table (`super::lease`).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct RangeId(pub u64);

impl RangeId {
    /// The meta group: timestamp oracle, no keys.
    pub const META: RangeId = RangeId(0);
    /// The first data range, which covers the whole keyspace until it splits.
    pub const ROOT: RangeId = RangeId(1);
}

impl fmt::Display for RangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// A timestamp from the timestamp oracle: start and commit timestamps of transactions,
/// and the versions of the MVCC store.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

/// A transaction's identity, chosen by its coordinator.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct TxnId(pub u64);

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "txn{:x}", self.0)
    }
}

/// The half-open key interval `[start, end)` a range serves (`end: None` is +∞), with
/// the generation that every split bumps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDescriptor {
    /// The range and its Raft group.
    pub id: RangeId,
    /// First key served.
    pub start: Key,
    /// First key not served; `None` means the end of the keyspace.
    pub end: Option<Key>,
    /// Bumped by every split, so a split proposed twice applies once.
    pub generation: u64,
    /// Number of splits in this range's ancestry; the next right-hand child gets the id
    /// `id | 1 << depth`, so ids are unique without a central allocator.
    pub depth: u32,
    /// False for the meta group, which serves no keys.
    pub serves_keys: bool,
}

impl RangeDescriptor {
    /// Whether `key` falls in this range.
    pub fn contains(&self, key: &str) -> bool {
        if let Some(served) = self.serves_lease_key(key) {
            return served;
        }
        let below_end = match self.end.as_deref() {
            Some(end) => key < end,
            None => true,
        };
        self.serves_keys && key >= self.start.as_str() && below_end
    }
}

/// What every intent and transaction record carries about its transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    /// The transaction.
    pub id: TxnId,
    /// The key whose range holds the transaction record (the first key written).
    pub anchor: Key,
    /// The snapshot the transaction reads; every write must not conflict past it.
    pub start_ts: Timestamp,
    /// Coordinator time (nanoseconds) after which any other client may abort the
    /// transaction if it is still pending. Only liveness depends on it.
    pub expires_at: u64,
}

/// The state of a transaction record, or of a transaction as a push found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStatus {
    /// Not decided yet (or no record exists yet).
    Pending,
    /// Committed at this timestamp.
    Committed(Timestamp),
    /// Aborted; its intents are to be removed.
    Aborted,
}

/// A command a range's Raft group applies. Every command is idempotent, so a retry that
/// reaches a different group after a split (whose session table is fresh) is harmless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeCommand {
    /// Meta group: hand out the next timestamp of the oracle.
    AllocTimestamp,
    /// Snapshot-read `key` at `read_ts`. Goes through the log, which also records the
    /// read in the range's read-timestamp cache (used by the one-phase fast path).
    Get {
        /// The key.
        key: Key,
        /// The snapshot.
        read_ts: Timestamp,
    },
    /// Snapshot-read every live key of `[start, end)` that this range serves (the part
    /// of the interval outside it is for other ranges), in key order, with etcd's
    /// metadata. At most `limit` rows (0: all); `count` in the answer counts all.
    /// Through the log like `Get`: a one-key interval (`end == start + "\0"`) records
    /// the read in the per-key cache, a wider one raises the range's `scan_ts`.
    Scan {
        /// First key.
        start: Key,
        /// First key not read; `None`: to the end of the keyspace.
        end: Option<Key>,
        /// The snapshot.
        read_ts: Timestamp,
        /// Most rows returned; 0: no limit.
        limit: u64,
        /// Leave values out of the rows.
        keys_only: bool,
    },
    /// Phase 1 of the cross-range commit: check `key` for conflicts and lay an intent.
    Prewrite {
        /// The writer.
        txn: TxnMeta,
        /// The key.
        key: Key,
        /// The new value (`None`: delete the key).
        value: Option<Value>,
    },
    /// The commit point: decide the transaction record that lives in the range of
    /// `txn.anchor`. The first decision wins; a later one learns it.
    EndTxn {
        /// The transaction.
        txn: TxnMeta,
        /// `Some(ts)`: commit at `ts`. `None`: abort.
        commit: Option<Timestamp>,
    },
    /// Another client met an intent of `txn`: learn its fate, and abort it if it is
    /// still pending after `txn.expires_at` (by the pusher's clock, `now`).
    Push {
        /// The transaction pushed.
        txn: TxnMeta,
        /// The pusher's clock.
        now: u64,
    },
    /// Turn `txn`'s intent on `key` into a committed version, or remove it.
    Resolve {
        /// The transaction.
        txn: TxnId,
        /// The key.
        key: Key,
        /// Its decided status (never `Pending`).
        status: TxnStatus,
    },
    /// The single-range fast path: check and write every key at `commit_ts` at once,
    /// with no intents and no record (one Raft round).
    OnePhase {
        /// The transaction.
        txn: TxnMeta,
        /// Its writes, all in this range (`None`: delete the key).
        writes: Vec<(Key, Option<Value>)>,
        /// Its commit timestamp, from the oracle.
        commit_ts: Timestamp,
    },
    /// The watch feed (a rangefeed with a closed timestamp, after CockroachDB's
    /// rangefeeds and TiKV's resolved-ts). First *close* the range at `close_ts`, an
    /// oracle timestamp the watcher took just before sending this: the range's closed
    /// timestamp rises to `min(close_ts, start_ts of its oldest intent - 1)`, and from then
    /// on no version at or below it can appear (one-phase commits below it are refused
    /// with `TooOld`; a two-phase commit's timestamp is above its intents' start).
    /// Then return every committed version of `[start, end)` (clipped to the range) with
    /// `after < ts <= closed`, in (timestamp, key) order: that part of the history is
    /// final. At most about `limit` events (0: all), cut at a timestamp boundary.
    Feed {
        /// First key watched.
        start: Key,
        /// First key not watched; `None`: to the end of the keyspace.
        end: Option<Key>,
        /// Events at or below this were delivered already.
        after: Timestamp,
        /// The timestamp to close the range at (from the oracle).
        close_ts: Timestamp,
        /// Most events returned (rounded up to a whole timestamp); 0: no limit.
        limit: u64,
    },
    /// MVCC compaction (etcd's Compact), applied to the whole range that holds `start`:
    /// raise the range's compact revision to `revision` (never down) and drop, for every
    /// key, the versions older than its newest version at or below `revision` — keeping
    /// that one, unless it is a tombstone (then the key's history up to it goes, and the
    /// key itself if nothing newer exists). Reads below the compact revision are then
    /// refused with `Compacted`. In the meta group it only records the cluster's compact
    /// revision (`revision` 0 reads it). Answers `Compacted(the range's revision)`.
    Compact {
        /// A key of the range (the range's start when sweeping the keyspace).
        start: Key,
        /// The compact revision.
        revision: Timestamp,
    },
    /// Garbage-collect `txn`'s record (in the range of `txn.anchor`) if it is decided;
    /// a pending record stays. Sent by the transaction's own coordinator once it has
    /// learned the decision and every one of its intents was resolved (acknowledged),
    /// so no intent of `txn` remains for anyone to push. Answers `Resolved`. See the
    /// module header ("Garbage collection") for why a later question cannot be answered
    /// differently.
    ForgetTxn {
        /// The transaction.
        txn: TxnMeta,
    },
    /// Meta group: create lease `id` with `ttl` seconds, as a version of its record at
    /// a fresh oracle timestamp (`LeaseExists` if it is live; `Locked` behind an intent
    /// on the record). Answers `Lease` with the grant's timestamp as `revision`.
    LeaseGrant {
        /// The lease (chosen by the caller; nonzero).
        id: LeaseId,
        /// Seconds.
        ttl: i64,
    },
    /// Meta group: the lease's record, through the log; the leader that applies it
    /// restarts the lease's deadline (etcd's `LeaseRenew`). `Lease(None)`: not found.
    LeaseKeepAlive {
        /// The lease.
        id: LeaseId,
    },
    /// Meta group: the lease's record and the leader's remaining TTL, through the log.
    LeaseTimeToLive {
        /// The lease.
        id: LeaseId,
    },
    /// Split this range at `split_key`; proposed by the leader when the range is too big.
    Split {
        /// The generation the split was planned against.
        generation: u64,
        /// First key of the new right-hand range.
        split_key: Key,
    },
}

/// What a [`RangeCommand`] returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeResult {
    /// A timestamp from the oracle.
    Timestamp(Timestamp),
    /// The value read (`None`: absent at the snapshot).
    Value(Option<Value>),
    /// A scan's rows (in key order) from the answering range, and how many live keys of
    /// the interval it holds (before `limit`).
    Rows {
        /// The rows, at most `limit`.
        rows: Vec<Row>,
        /// Live keys of the interval in this range.
        count: u64,
    },
    /// An intent of another transaction on `key` stands in the way: push it, resolve
    /// it, retry.
    Locked {
        /// The intent's transaction.
        txn: TxnMeta,
        /// The key it holds.
        key: Key,
    },
    /// A version newer than the writer's snapshot exists (first committer wins).
    WriteConflict,
    /// One-phase commit: a read at or after `commit_ts` already happened; retry with a
    /// newer timestamp.
    TooOld,
    /// The intent is laid.
    Prewritten,
    /// The fate of a transaction (from `EndTxn` or `Push`).
    Status(TxnStatus),
    /// The intent is resolved (or was already).
    Resolved,
    /// A split applied or was a no-op.
    Split,
    /// The answer to a `Feed`: the events of the interval in this range with
    /// `after < ts <= resolved`, in (timestamp, key) order, and the range's promise that
    /// no other version at or below `resolved` exists or will appear in it.
    Events {
        /// The events, oldest first.
        events: Vec<Event>,
        /// Every event of the interval in this range at or below this is in `events`
        /// (or was at or below `after`).
        resolved: Timestamp,
        /// When the range could not close at `close_ts`: the intent with the oldest
        /// start timestamp, which holds the closed timestamp back (push it if stuck).
        blocker: Option<(TxnMeta, Key)>,
    },
    /// The answer to `Compact`, and to a read (`Get`, `Scan`) or `Feed` below the range's
    /// compact revision: the range's compact revision.
    Compacted(Timestamp),
    /// A lease as the meta group's leader knows it (`None`: no such lease).
    Lease(Option<LeaseInfo>),
    /// `LeaseGrant` of a lease that exists.
    LeaseExists,
    /// The key is not (or no longer) in this range: refresh routing and retry.
    RangeMismatch,
}

/// A range's answer, with the descriptor of the range that answered, so clients can
/// cache the range layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeOutput {
    /// The range that applied the command.
    pub range: RangeDescriptor,
    /// The result.
    pub result: RangeResult,
}

/// A Raft message of one range's group.
pub type RangeRaftMsg = RaftMsg<RangeCommand, RangeOutput>;

/// Where a node sends a client request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Route {
    /// The meta group (timestamp oracle).
    Meta,
    /// Whichever local range serves this key.
    Key(Key),
}

/// Every message of the multi-Raft node service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnMsg {
    /// Node ↔ node: a Raft message of group `range`.
    Raft {
        /// The group.
        range: RangeId,
        /// The Raft message.
        msg: RangeRaftMsg,
    },
    /// Client → node: a Raft client request, routed by the node.
    Request {
        /// Which group should serve it.
        route: Route,
        /// A `ClientWrite` (reads also go through the log).
        msg: RangeRaftMsg,
    },
    /// Node → client: the group's answer (`ClientReply` or `NotLeader`).
    Reply {
        /// The group that answered.
        range: RangeId,
        /// The answer.
        msg: RangeRaftMsg,
    },
}

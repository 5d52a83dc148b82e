//! Transactions across Raft groups on a live cluster (`synod up --ranges`, issue 11).
//!
//! Every node runs the multi-Raft actor [`TxnNode`] of `synod_protocols::txn` unchanged,
//! as service [`TXN`] = 13, on its own [`synod_runtime::storage::DiskStorage`] (the
//! driver syncs a batch's writes before it sends the batch's messages or replies, so a
//! Raft vote, append or applied command is durable before anyone hears of it). The
//! actor hosts one replica of every range; ranges split by size as in the simulator.
//!
//! The transaction **coordinator** is the client of the ranges, as in Percolator and in
//! the simulator's bank clients: [`TxnHost`] runs it inside each node process for the
//! HTTP API on the admin port. A request for a range whose leader is elsewhere goes over
//! the peer transport to that node's actor ([`TXN_GATEWAY`] = 14), as the KV gateway
//! forwards to the Raft leader. A coordinator that dies with its node leaves intents
//! behind; any other coordinator that meets one pushes the transaction record, which
//! aborts it once it has expired, and resolves the intent (see the module header of
//! `synod_protocols::txn`).
//!
//! HTTP API (JSON), on every node's admin port:
//! - `GET /v1/txn/kv/{key}`: snapshot read at a fresh timestamp.
//! - `PUT /v1/txn/kv/{key}` (body: a u64), `DELETE /v1/txn/kv/{key}`: one-key
//!   transactions (a delete writes a tombstone version).
//! - `POST /v1/txn/read` `{"keys": [...]}`: one snapshot of many keys.
//! - `POST /v1/txn` `{"compare": [{"key", "value"}], "put": {key: value}, "add": {key:
//!   delta}, "delete": [key]}`: reads the compared and added keys at the transaction's snapshot and, if
//!   every compare holds (`null`: absent) and every add finds its key and stays within
//!   `0..=u64::MAX`, commits the puts, sums and deletes atomically, across ranges (etcd's Txn
//!   with value compares, plus read-modify-write). `succeeded: false` means a condition
//!   failed and nothing was written. Conflicts abort and retry the whole transaction at
//!   a newer snapshot, at most [`MAX_ATTEMPTS`] times.
//! - `GET /v1/txn/ranges`: this node's replicas; `GET /v1/txn/stats`: counters.

use crate::gateway::SessionPool;
use crate::node::NodeState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json_};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use synod_core::{codec, NodeId};
use synod_protocols::raft::{RaftMsg, Role, SessionId};
use synod_protocols::txn::{
    u64_value, value_u64, Event, Key, RangeCommand, RangeDescriptor, RangeId, RangeOutput,
    RangeResult, Route, Row, Timestamp, TxnConfig, TxnId, TxnMeta, TxnMsg, TxnNode, TxnStatus,
    Value,
};
use synod_runtime::driver::{ActorHandle, DriverError};
use synod_runtime::transport::{ServiceId, TransportHandle};
use thiserror::Error;
use tokio::sync::oneshot;

/// The multi-Raft actor's service id (Raft messages between the nodes' replicas).
pub const TXN: u16 = 13;
/// Client requests forwarded to another node's multi-Raft actor.
pub const TXN_GATEWAY: u16 = 14;

/// Whole transactions tried before a conflict is reported as an abort.
pub const MAX_ATTEMPTS: u32 = 8;
/// How long one attempt at a range request may take before another node is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a range request may take in all.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// A pending transaction may be aborted by others this long after it started.
const TXN_TTL: Duration = Duration::from_millis(500);
/// Pushes of live transactions and stale routes tolerated by one step.
const MAX_CONFLICTS: u32 = 400;
/// The most bytes a forwarded request or reply may decode from.
const MAX_FORWARD_BYTES: usize = 16 << 20;
/// The most keys one HTTP transaction or snapshot read may name.
const MAX_KEYS: usize = 1024;

/// The `[ranges]` section of the cluster file: run the multi-Raft ranges.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RangesConfig {
    /// A range with more distinct keys than this splits at its median key.
    #[serde(default = "default_split_keys")]
    pub split_keys: usize,
    /// Entries a range applies past its last snapshot before it takes another and
    /// discards its log up to it (0: never; the log then grows without bound).
    #[serde(default = "default_snapshot_entries")]
    pub snapshot_entries: u64,
}

fn default_split_keys() -> usize {
    64
}

fn default_snapshot_entries() -> u64 {
    synod_protocols::txn::DEFAULT_SNAPSHOT_THRESHOLD
}

impl Default for RangesConfig {
    fn default() -> Self {
        RangesConfig {
            split_keys: default_split_keys(),
            snapshot_entries: default_snapshot_entries(),
        }
    }
}

/// The actor every node runs: every range replicated on all `nodes`, Raft timing from the
/// cluster's tuning, a snapshot every `snapshot_entries` applied entries per range.
pub fn actor(nodes: Vec<NodeId>, ranges: &RangesConfig, tuning: &crate::config::Tuning) -> TxnNode {
    let mut config = TxnConfig::new(1, ranges.split_keys.max(1));
    let mut raft = synod_protocols::raft::RaftConfig::new(nodes);
    raft.election_timeout = Duration::from_millis(tuning.election_ms);
    raft.election_timeout_spread = Duration::from_millis(tuning.election_ms);
    raft.heartbeat_interval = Duration::from_millis(tuning.raft_heartbeat_ms);
    raft.snapshot_threshold = ranges.snapshot_entries;
    config.raft = raft;
    TxnNode::new(config)
}

/// What a coordinator sends to another node's [`TXN_GATEWAY`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TxnGatewayMsg {
    /// Hand `msg` (a [`TxnMsg::Request`]) to your actor and send back its answer.
    Request {
        /// Matches the reply.
        id: u64,
        /// The request.
        msg: TxnMsg,
    },
    /// The answer to request `id`.
    Reply {
        /// The request.
        id: u64,
        /// The actor's [`TxnMsg::Reply`].
        msg: TxnMsg,
    },
}

/// One round of a watch feed ([`TxnHost::feed`]).
#[derive(Debug, Clone)]
pub struct Feed {
    /// The events after the round's `after`, up to `resolved`, oldest first.
    pub events: Vec<Event>,
    /// Every event of the interval up to here is final and listed.
    pub resolved: Timestamp,
    /// The timestamp the ranges were asked to close at.
    pub close_ts: Timestamp,
    /// An intent that held a range below `close_ts`.
    pub blocker: Option<(TxnMeta, Key)>,
}

/// Why a transaction or request did not complete.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TxnError {
    /// No range answered before the deadline; the outcome of a commit is unknown.
    #[error("ranges: request timed out (the outcome is unknown)")]
    Timeout,
    /// The transaction lost every attempt to conflicting ones.
    #[error("ranges: transaction aborted after {0} conflicting attempts")]
    Aborted(u32),
    /// A range answered something the protocol never answers to that request.
    #[error("ranges: unexpected answer {0}")]
    Protocol(String),
    /// This node is shutting down.
    #[error("ranges: server stopped")]
    Stopped,
    /// A read or feed below a range's compact revision (which it carries).
    #[error("ranges: required revision has been compacted (compact revision {})", .0 .0)]
    Compacted(Timestamp),
}

/// What a committed (or compare-failed) transaction returns.
#[derive(Debug, Clone, Serialize)]
pub struct TxnOutcome {
    /// Whether every compare held (and so the puts committed).
    pub succeeded: bool,
    /// The snapshot the compares read.
    pub start_ts: u64,
    /// The commit timestamp (`None` if nothing was written).
    pub commit_ts: Option<u64>,
    /// The compared keys' values at the snapshot.
    pub values: BTreeMap<Key, Option<Value>>,
    /// `"1pc"`, `"2pc"`, or `"none"` (nothing written).
    pub path: &'static str,
    /// Attempts that aborted on a conflict before this one.
    pub aborted_attempts: u32,
}

/// Counters of the coordinator on this node.
#[derive(Debug, Default)]
pub struct TxnCounters {
    /// Transactions committed on the one-phase path.
    pub one_phase: AtomicU64,
    /// Transactions committed with two-phase commit.
    pub two_phase: AtomicU64,
    /// Attempts aborted on a conflict.
    pub aborted: AtomicU64,
    /// Transactions whose outcome is unknown (deadline passed).
    pub unknown: AtomicU64,
    /// Pushes of other transactions' records.
    pub pushes: AtomicU64,
    /// Snapshot reads served.
    pub reads: AtomicU64,
}

/// The node's multi-Raft actor and the coordinator in front of it.
pub struct TxnHost {
    me: NodeId,
    nodes: Vec<NodeId>,
    node: ActorHandle<TxnNode>,
    transport: TransportHandle,
    waiting: Mutex<BTreeMap<u64, oneshot::Sender<TxnMsg>>>,
    next_id: AtomicU64,
    sessions: SessionPool,
    next_txn: AtomicU64,
    leaders: Mutex<BTreeMap<RangeId, NodeId>>,
    ranges: Mutex<Vec<RangeDescriptor>>,
    /// What the coordinator did.
    pub counters: TxnCounters,
}

fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

enum Commit {
    Committed(Timestamp, &'static str),
    Conflict,
}

impl TxnHost {
    /// The coordinator of node `me` in front of `node`.
    pub fn new(
        me: NodeId,
        nodes: Vec<NodeId>,
        node: ActorHandle<TxnNode>,
        transport: TransportHandle,
    ) -> Arc<Self> {
        Arc::new(TxnHost {
            me,
            nodes,
            node,
            transport,
            waiting: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            sessions: SessionPool::default(),
            next_txn: AtomicU64::new(rand::random::<u64>() << 24),
            leaders: Mutex::new(BTreeMap::new()),
            ranges: Mutex::new(Vec::new()),
            counters: TxnCounters::default(),
        })
    }

    /// The actor, for inspection.
    pub fn node(&self) -> &ActorHandle<TxnNode> {
        &self.node
    }

    // ---- routing caches ------------------------------------------------------------

    fn learn_range(&self, desc: &RangeDescriptor) {
        if !desc.serves_keys {
            return;
        }
        let mut ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        let overlaps = |a: &RangeDescriptor| {
            let a_before = a.end.as_deref().is_some_and(|e| e <= desc.start.as_str());
            let d_before = desc.end.as_deref().is_some_and(|e| e <= a.start.as_str());
            !(a_before || d_before)
        };
        ranges.retain(|r| r.id != desc.id && !overlaps(r));
        ranges.push(desc.clone());
    }

    fn range_of(&self, key: &str) -> Option<RangeId> {
        if synod_protocols::txn::lease::is_lease_key(key) {
            return Some(RangeId::META);
        }
        let ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        ranges.iter().find(|r| r.contains(key)).map(|r| r.id)
    }

    fn route_range(&self, route: &Route) -> Option<RangeId> {
        match route {
            Route::Meta => Some(RangeId::META),
            Route::Key(k) => self.range_of(k),
        }
    }

    fn leader_of(&self, route: &Route) -> Option<NodeId> {
        let range = self.route_range(route)?;
        let leaders = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
        leaders.get(&range).copied()
    }

    fn set_leader(&self, range: RangeId, leader: Option<NodeId>) {
        let mut leaders = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
        match leader {
            Some(l) => leaders.insert(range, l),
            None => leaders.remove(&range),
        };
    }

    fn next_node(&self, after: NodeId) -> NodeId {
        let i = self.nodes.iter().position(|&n| n == after).unwrap_or(0);
        self.nodes
            .get((i + 1) % self.nodes.len().max(1))
            .copied()
            .unwrap_or(self.me)
    }

    // ---- the request layer -----------------------------------------------------------

    /// Apply `command` in the group that serves `route`, following leader hints and
    /// retrying on other nodes until it is answered or the deadline passes. A reply of
    /// `RangeMismatch` (stale routing after a split) is retried with a fresh sequence
    /// number, since the group that answered it would otherwise replay its answer.
    pub async fn request(
        &self,
        route: Route,
        command: RangeCommand,
    ) -> Result<RangeOutput, TxnError> {
        let (session, last) = self.sessions.take();
        let mut seq = last + 1;
        let outcome = self.request_in(session, &mut seq, route, command).await;
        self.sessions.give_back(session, seq);
        outcome
    }

    async fn request_in(
        &self,
        session: SessionId,
        seq: &mut u64,
        route: Route,
        command: RangeCommand,
    ) -> Result<RangeOutput, TxnError> {
        let started = Instant::now();
        let mut target = self.leader_of(&route).unwrap_or(self.me);
        let mut mismatches = 0;
        loop {
            let left = REQUEST_DEADLINE.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(TxnError::Timeout);
            }
            let timeout = left.min(ATTEMPT_TIMEOUT);
            let msg = TxnMsg::Request {
                route: route.clone(),
                msg: RaftMsg::ClientWrite {
                    session,
                    seq: *seq,
                    command: command.clone(),
                },
            };
            let reply = if target == self.me {
                self.node.call(msg, timeout).await
            } else {
                self.forward(target, msg, timeout).await
            };
            match reply {
                Ok(TxnMsg::Reply {
                    range,
                    msg: RaftMsg::ClientReply { output, .. },
                }) => {
                    self.set_leader(range, Some(target));
                    self.learn_range(&output.range);
                    if output.result == RangeResult::RangeMismatch && mismatches < MAX_CONFLICTS {
                        mismatches += 1;
                        *seq += 1;
                        // The replier's descriptor may be the stale one: ask its node's
                        // view again shortly.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    return Ok(output);
                }
                Ok(TxnMsg::Reply {
                    range,
                    msg:
                        RaftMsg::NotLeader {
                            leader_hint: Some(leader),
                            ..
                        },
                }) if leader != target => {
                    self.set_leader(range, Some(leader));
                    target = leader;
                }
                Ok(TxnMsg::Reply { range, .. }) => {
                    // No leader known here (an election is on): ask another node shortly.
                    self.set_leader(range, None);
                    target = self.next_node(target);
                    tokio::time::sleep(Duration::from_millis(10).min(left)).await;
                }
                Ok(_) => return Err(TxnError::Protocol("a non-reply message".into())),
                Err(DriverError::Timeout(_)) => {
                    // That node may be down or cut off: try the next one.
                    if let Some(range) = self.route_range(&route) {
                        self.set_leader(range, None);
                    }
                    target = self.next_node(target);
                }
                Err(_) => return Err(TxnError::Stopped),
            }
        }
    }

    async fn forward(
        &self,
        to: NodeId,
        msg: TxnMsg,
        timeout: Duration,
    ) -> Result<TxnMsg, DriverError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_waiting().insert(id, tx);
        let payload = Bytes::from(codec::encode(&TxnGatewayMsg::Request { id, msg }));
        if self
            .transport
            .try_send(to, ServiceId(TXN_GATEWAY), payload)
            .is_err()
        {
            // The peer is down or its queue is full: as if it never answered.
            tokio::time::sleep(timeout.min(Duration::from_millis(25))).await;
            self.lock_waiting().remove(&id);
            return Err(DriverError::Timeout(timeout));
        }
        let outcome = tokio::time::timeout(timeout, rx).await;
        self.lock_waiting().remove(&id);
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(DriverError::Timeout(timeout)),
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<TxnMsg>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handle what a peer's coordinator sent. Undecodable input is logged and dropped.
    pub fn on_peer_message(self: &Arc<Self>, from: NodeId, payload: &[u8]) {
        let msg: TxnGatewayMsg = match codec::decode_bounded(payload, MAX_FORWARD_BYTES) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(%from, error = %e, "undecodable txn gateway message dropped");
                return;
            }
        };
        match msg {
            TxnGatewayMsg::Request { id, msg } => {
                // Only client requests may come this way: a peer must not inject Raft
                // messages through the client path.
                if !matches!(
                    msg,
                    TxnMsg::Request {
                        msg: RaftMsg::ClientWrite { .. },
                        ..
                    }
                ) {
                    tracing::warn!(%from, "forwarded non-request txn message dropped");
                    return;
                }
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    if let Ok(reply) = this.node.call(msg, ATTEMPT_TIMEOUT).await {
                        let payload =
                            Bytes::from(codec::encode(&TxnGatewayMsg::Reply { id, msg: reply }));
                        let _ = this
                            .transport
                            .try_send(from, ServiceId(TXN_GATEWAY), payload);
                    }
                });
            }
            TxnGatewayMsg::Reply { id, msg } => {
                if let Some(tx) = self.lock_waiting().remove(&id) {
                    let _ = tx.send(msg);
                }
            }
        }
    }

    // ---- transactions ----------------------------------------------------------------

    /// A fresh timestamp from the oracle (the meta group).
    pub async fn timestamp(&self) -> Result<Timestamp, TxnError> {
        match self
            .request(Route::Meta, RangeCommand::AllocTimestamp)
            .await?
            .result
        {
            RangeResult::Timestamp(ts) => Ok(ts),
            other => Err(TxnError::Protocol(format!(
                "{other:?} to a timestamp request"
            ))),
        }
    }

    /// Another transaction's intent on `key` is in the way: push its record (which aborts
    /// it once expired) and, if it is decided, resolve the intent. Returns after a short
    /// wait if it is still live.
    pub(crate) async fn clear_blocker(&self, meta: TxnMeta, key: Key) -> Result<(), TxnError> {
        self.counters.pushes.fetch_add(1, Ordering::Relaxed);
        let push = RangeCommand::Push {
            txn: meta.clone(),
            now: wall_nanos(),
        };
        match self
            .request(Route::Key(meta.anchor.clone()), push)
            .await?
            .result
        {
            RangeResult::Status(TxnStatus::Pending) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(())
            }
            RangeResult::Status(status) => {
                let resolve = RangeCommand::Resolve {
                    txn: meta.id,
                    key: key.clone(),
                    status,
                };
                match self.request(Route::Key(key), resolve).await?.result {
                    RangeResult::Resolved | RangeResult::RangeMismatch => Ok(()),
                    other => Err(TxnError::Protocol(format!("{other:?} to a resolve"))),
                }
            }
            RangeResult::RangeMismatch => Ok(()),
            other => Err(TxnError::Protocol(format!("{other:?} to a push"))),
        }
    }

    /// Read `key` at snapshot `ts`, clearing intents of transactions that may commit
    /// below the snapshot.
    pub async fn read(&self, key: &str, ts: Timestamp) -> Result<Option<Value>, TxnError> {
        for _ in 0..MAX_CONFLICTS {
            let get = RangeCommand::Get {
                key: key.to_string(),
                read_ts: ts,
            };
            match self.request(Route::Key(key.to_string()), get).await?.result {
                RangeResult::Value(v) => return Ok(v),
                RangeResult::Compacted(c) => return Err(TxnError::Compacted(c)),
                RangeResult::Locked { txn, key } => self.clear_blocker(txn, key).await?,
                RangeResult::RangeMismatch => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => return Err(TxnError::Protocol(format!("{other:?} to a read"))),
            }
        }
        Err(TxnError::Timeout)
    }

    /// One snapshot of `keys` at a fresh timestamp.
    pub async fn snapshot(
        self: &Arc<Self>,
        keys: &[Key],
    ) -> Result<(Timestamp, BTreeMap<Key, Option<Value>>), TxnError> {
        let ts = self.timestamp().await?;
        let mut reads = tokio::task::JoinSet::new();
        for key in keys.iter().cloned() {
            let this = Arc::clone(self);
            reads.spawn(async move {
                let v = this.read(&key, ts).await;
                (key, v)
            });
        }
        let mut values = BTreeMap::new();
        while let Some(joined) = reads.join_next().await {
            let (key, v) = joined.map_err(|_| TxnError::Stopped)?;
            values.insert(key, v?);
        }
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        Ok((ts, values))
    }

    /// Every live key of `[start, end)` (`end: None`: to the end of the keyspace) at
    /// snapshot `ts`, across range boundaries: one `Scan` per range, each starting where
    /// the previous range's descriptor ends. At most `limit` rows (0: all); the count is
    /// of every live key of the interval, as etcd's `count`.
    pub async fn scan(
        &self,
        start: &str,
        end: Option<&str>,
        ts: Timestamp,
        limit: u64,
        keys_only: bool,
    ) -> Result<(Vec<Row>, u64), TxnError> {
        let mut rows = Vec::new();
        let mut count = 0;
        let mut cursor = start.to_string();
        let mut retries = 0;
        loop {
            let wanted = if limit == 0 {
                0
            } else {
                limit.saturating_sub(rows.len() as u64)
            };
            // Past the limit only the count is wanted: one key-only row per range.
            let command = RangeCommand::Scan {
                start: cursor.clone(),
                end: end.map(str::to_string),
                read_ts: ts,
                limit: if limit > 0 && wanted == 0 { 1 } else { wanted },
                keys_only: keys_only || (limit > 0 && wanted == 0),
            };
            let output = self.request(Route::Key(cursor.clone()), command).await?;
            match output.result {
                RangeResult::Rows {
                    rows: got,
                    count: n,
                } => {
                    count += n;
                    if limit == 0 || wanted > 0 {
                        rows.extend(got);
                    }
                    match output.range.end {
                        Some(next) if end.is_none_or(|e| next.as_str() < e) => cursor = next,
                        _ => return Ok((rows, count)),
                    }
                    retries = 0;
                }
                RangeResult::Locked { txn, key } => self.clear_blocker(txn, key).await?,
                RangeResult::Compacted(c) => return Err(TxnError::Compacted(c)),
                RangeResult::RangeMismatch => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => return Err(TxnError::Protocol(format!("{other:?} to a scan"))),
            }
            retries += 1;
            if retries > MAX_CONFLICTS {
                return Err(TxnError::Timeout);
            }
        }
    }

    /// One round of a watch over `[start, end)`: take an oracle timestamp, close every
    /// range of the interval at it (`RangeCommand::Feed`, one per range, each starting
    /// where the previous range's descriptor ends) and merge their events. Returns the
    /// events with `after < ts <= resolved` in (timestamp, key) order, where `resolved`
    /// is the smallest resolved timestamp of the ranges (every event of the interval up
    /// to it is in the list, and no other can appear), and an intent that held a range
    /// back, if any. Splits between two requests are harmless: the events of an interval
    /// and a timestamp window do not depend on how ranges cut it.
    pub async fn feed(
        &self,
        start: &str,
        end: &str,
        after: Timestamp,
        limit: u64,
    ) -> Result<Feed, TxnError> {
        let close_ts = self.timestamp().await?;
        let mut events = Vec::new();
        let mut resolved: Option<Timestamp> = None;
        let mut blocker = None;
        let mut cursor = start.to_string();
        let mut retries = 0;
        loop {
            let command = RangeCommand::Feed {
                start: cursor.clone(),
                end: Some(end.to_string()),
                after,
                close_ts,
                limit,
            };
            let output = self.request(Route::Key(cursor.clone()), command).await?;
            match output.result {
                RangeResult::Events {
                    events: got,
                    resolved: r,
                    blocker: b,
                } => {
                    events.extend(got);
                    resolved = Some(resolved.map_or(r, |x| x.min(r)));
                    if blocker.is_none() {
                        blocker = b;
                    }
                    match output.range.end {
                        Some(next) if next.as_str() < end => cursor = next,
                        _ => break,
                    }
                    retries = 0;
                }
                RangeResult::Compacted(c) => return Err(TxnError::Compacted(c)),
                RangeResult::RangeMismatch => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => return Err(TxnError::Protocol(format!("{other:?} to a feed"))),
            }
            retries += 1;
            if retries > MAX_CONFLICTS {
                return Err(TxnError::Timeout);
            }
        }
        let resolved = resolved.unwrap_or(after).max(after);
        events.retain(|e| e.ts <= resolved);
        events.sort_by(|a, b| (a.ts, &a.key).cmp(&(b.ts, &b.key)));
        Ok(Feed {
            events,
            resolved,
            close_ts,
            blocker,
        })
    }

    /// The cluster's compact revision, as the meta group recorded it (0: never compacted).
    pub async fn compacted_revision(&self) -> Result<Timestamp, TxnError> {
        self.compact_meta(Timestamp(0)).await
    }

    async fn compact_meta(&self, revision: Timestamp) -> Result<Timestamp, TxnError> {
        let command = RangeCommand::Compact {
            start: String::new(),
            revision,
        };
        match self.request(Route::Meta, command).await?.result {
            RangeResult::Compacted(c) => Ok(c),
            other => Err(TxnError::Protocol(format!("{other:?} to a compaction"))),
        }
    }

    /// etcd's Compact over the ranges: compact every range at `revision` through its own
    /// log (one `RangeCommand::Compact` per range, each starting where the previous
    /// range's descriptor ends), then record the cluster's compact revision in the meta
    /// group. Returns it: the smallest compact revision of the ranges (every range is at
    /// `revision` or above once this returns). A split between two requests is harmless:
    /// both halves inherit the parent's compact revision.
    pub async fn compact(&self, revision: Timestamp) -> Result<Timestamp, TxnError> {
        let mut cursor = String::new();
        let mut lowest: Option<Timestamp> = None;
        let mut retries = 0;
        loop {
            let command = RangeCommand::Compact {
                start: cursor.clone(),
                revision,
            };
            let output = self.request(Route::Key(cursor.clone()), command).await?;
            match output.result {
                RangeResult::Compacted(c) => {
                    lowest = Some(lowest.map_or(c, |l| l.min(c)));
                    match output.range.end {
                        Some(next) => cursor = next,
                        None => break,
                    }
                    retries = 0;
                }
                RangeResult::RangeMismatch => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => return Err(TxnError::Protocol(format!("{other:?} to a compaction"))),
            }
            retries += 1;
            if retries > MAX_CONFLICTS {
                return Err(TxnError::Timeout);
            }
        }
        self.compact_meta(lowest.unwrap_or(revision)).await
    }

    /// Commit `writes` as one transaction that read at `start_ts`: one phase if they
    /// fall in one range, else two. `Ok(None)`: a conflict aborted it (first committer
    /// wins, or a push); the caller retries at a newer snapshot.
    pub async fn commit_at(
        &self,
        start_ts: Timestamp,
        writes: &[(Key, Option<Value>)],
    ) -> Result<Option<Timestamp>, TxnError> {
        let Some((first, _)) = writes.first() else {
            return Ok(Some(start_ts));
        };
        let meta = TxnMeta {
            id: TxnId(self.next_txn.fetch_add(1, Ordering::Relaxed)),
            anchor: first.clone(),
            start_ts,
            expires_at: wall_nanos().saturating_add(u64::try_from(TXN_TTL.as_nanos()).unwrap_or(0)),
        };
        match self.counted_commit(meta, writes).await? {
            Commit::Committed(ts, _) => Ok(Some(ts)),
            Commit::Conflict => Ok(None),
        }
    }

    /// Run a transaction: read `compare`'s keys at a fresh snapshot and, if each holds its
    /// expected value, commit `puts` atomically. Conflicts retry the whole transaction.
    pub async fn transact(
        self: &Arc<Self>,
        compare: &[(Key, Option<u64>)],
        puts: &[(Key, u64)],
        adds: &[(Key, i64)],
        deletes: &[Key],
    ) -> Result<TxnOutcome, TxnError> {
        let mut keys: Vec<Key> = compare.iter().map(|(k, _)| k.clone()).collect();
        keys.extend(adds.iter().map(|(k, _)| k.clone()));
        keys.sort();
        keys.dedup();
        for attempt in 0..MAX_ATTEMPTS {
            let (start_ts, values) = self.snapshot(&keys).await?;
            let mut writes: BTreeMap<Key, Option<Value>> =
                deletes.iter().map(|k| (k.clone(), None)).collect();
            writes.extend(puts.iter().map(|(k, v)| (k.clone(), Some(u64_value(*v)))));
            let register = |k: &Key| values.get(k).cloned().flatten();
            let mut succeeded = compare.iter().all(|(k, v)| match (register(k), v) {
                (None, None) => true,
                (Some(got), Some(want)) => value_u64(&got) == Some(*want),
                _ => false,
            });
            for (key, delta) in adds {
                // An add needs the key present and the result within 0..=u64::MAX.
                let base = register(key).and_then(|b| value_u64(&b));
                let next = base.and_then(|b| b.checked_add_signed(*delta));
                match next {
                    Some(v) => {
                        writes.insert(key.clone(), Some(u64_value(v)));
                    }
                    None => succeeded = false,
                }
            }
            let puts: Vec<(Key, Option<Value>)> = writes.into_iter().collect();
            let mut outcome = TxnOutcome {
                succeeded,
                start_ts: start_ts.0,
                commit_ts: None,
                values,
                path: "none",
                aborted_attempts: attempt,
            };
            if !succeeded || puts.is_empty() {
                return Ok(outcome);
            }
            let meta = TxnMeta {
                id: TxnId(self.next_txn.fetch_add(1, Ordering::Relaxed)),
                anchor: puts[0].0.clone(),
                start_ts,
                expires_at: wall_nanos()
                    .saturating_add(u64::try_from(TXN_TTL.as_nanos()).unwrap_or(0)),
            };
            match self.counted_commit(meta, &puts).await? {
                Commit::Committed(ts, path) => {
                    outcome.commit_ts = Some(ts.0);
                    outcome.path = path;
                    return Ok(outcome);
                }
                Commit::Conflict => {
                    let backoff = rand::random::<u64>() % (2_000 << attempt.min(4));
                    tokio::time::sleep(Duration::from_micros(backoff)).await;
                }
            }
        }
        Err(TxnError::Aborted(MAX_ATTEMPTS))
    }

    /// Commit `writes` for `meta`: one phase if they fall in one range (as far as the
    /// routing cache knows), else prewrite, decide the record, resolve.
    /// [`TxnHost::commit`], counted in the metrics: commits by path, conflicts as
    /// aborts, timeouts as outcomes unknown.
    async fn counted_commit(
        &self,
        meta: TxnMeta,
        writes: &[(Key, Option<Value>)],
    ) -> Result<Commit, TxnError> {
        let result = self.commit(meta, writes).await;
        let counter = match &result {
            Ok(Commit::Committed(_, "1pc")) => &self.counters.one_phase,
            Ok(Commit::Committed(..)) => &self.counters.two_phase,
            Ok(Commit::Conflict) => &self.counters.aborted,
            Err(TxnError::Timeout) => &self.counters.unknown,
            Err(_) => return result,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn commit(
        &self,
        mut meta: TxnMeta,
        writes: &[(Key, Option<Value>)],
    ) -> Result<Commit, TxnError> {
        let first = self.range_of(&writes[0].0);
        if first.is_some() && writes.iter().all(|(k, _)| self.range_of(k) == first) {
            if let Some(done) = self.one_phase(&meta, writes).await? {
                return Ok(done);
            }
        }
        meta.anchor = writes[0].0.clone();
        let mut prewritten: Vec<Key> = Vec::new();
        for (key, value) in writes {
            let mut conflicts = 0;
            loop {
                conflicts += 1;
                if conflicts > MAX_CONFLICTS {
                    return self.abort(&meta, &prewritten).await;
                }
                let prewrite = RangeCommand::Prewrite {
                    txn: meta.clone(),
                    key: key.clone(),
                    value: value.clone(),
                };
                match self
                    .request(Route::Key(key.clone()), prewrite)
                    .await?
                    .result
                {
                    RangeResult::Prewritten => {
                        prewritten.push(key.clone());
                        break;
                    }
                    RangeResult::Locked { txn, key } => self.clear_blocker(txn, key).await?,
                    RangeResult::WriteConflict => return self.abort(&meta, &prewritten).await,
                    RangeResult::RangeMismatch => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    other => return Err(TxnError::Protocol(format!("{other:?} to a prewrite"))),
                }
            }
        }
        let commit_ts = self.timestamp().await?;
        let status = self.end_txn(&meta, Some(commit_ts)).await?;
        self.resolve_all(&meta, &prewritten, status).await;
        match status {
            TxnStatus::Committed(ts) => Ok(Commit::Committed(ts, "2pc")),
            // Pushed (aborted) by another client after it expired.
            _ => Ok(Commit::Conflict),
        }
    }

    /// The one-phase path. `None`: the writes turned out to span ranges (after a split).
    async fn one_phase(
        &self,
        meta: &TxnMeta,
        writes: &[(Key, Option<Value>)],
    ) -> Result<Option<Commit>, TxnError> {
        for _ in 0..MAX_CONFLICTS {
            let commit_ts = self.timestamp().await?;
            let command = RangeCommand::OnePhase {
                txn: meta.clone(),
                writes: writes.to_vec(),
                commit_ts,
            };
            match self
                .request(Route::Key(writes[0].0.clone()), command)
                .await?
                .result
            {
                RangeResult::Status(TxnStatus::Committed(ts)) => {
                    return Ok(Some(Commit::Committed(ts, "1pc")))
                }
                RangeResult::TooOld => continue,
                RangeResult::WriteConflict => return Ok(Some(Commit::Conflict)),
                RangeResult::Locked { txn, key } => self.clear_blocker(txn, key).await?,
                RangeResult::RangeMismatch => return Ok(None),
                other => return Err(TxnError::Protocol(format!("{other:?} to a commit"))),
            }
        }
        Ok(Some(Commit::Conflict))
    }

    async fn end_txn(
        &self,
        meta: &TxnMeta,
        commit: Option<Timestamp>,
    ) -> Result<TxnStatus, TxnError> {
        let end = RangeCommand::EndTxn {
            txn: meta.clone(),
            commit,
        };
        match self
            .request(Route::Key(meta.anchor.clone()), end)
            .await?
            .result
        {
            RangeResult::Status(s) => Ok(s),
            other => Err(TxnError::Protocol(format!("{other:?} to EndTxn"))),
        }
    }

    /// Abort before the commit point: decide the record aborted, remove the intents.
    async fn abort(&self, meta: &TxnMeta, prewritten: &[Key]) -> Result<Commit, TxnError> {
        if prewritten.is_empty() {
            return Ok(Commit::Conflict);
        }
        let status = self.end_txn(meta, None).await?;
        self.resolve_all(meta, prewritten, status).await;
        match status {
            // Cannot happen (only this coordinator commits it), but the record decides.
            TxnStatus::Committed(ts) => Ok(Commit::Committed(ts, "2pc")),
            _ => Ok(Commit::Conflict),
        }
    }

    /// Best effort: whatever is left, readers resolve through the record. Once every
    /// intent is resolved (each acknowledged), nobody can meet one and ask about the
    /// transaction any more, so its decided record is garbage-collected (`ForgetTxn`).
    async fn resolve_all(&self, meta: &TxnMeta, keys: &[Key], status: TxnStatus) {
        if status == TxnStatus::Pending {
            return;
        }
        let mut all = true;
        for key in keys {
            let resolve = RangeCommand::Resolve {
                txn: meta.id,
                key: key.clone(),
                status,
            };
            let done = self.request(Route::Key(key.clone()), resolve).await;
            all &= done.is_ok_and(|o| o.result == RangeResult::Resolved);
        }
        if all {
            let forget = RangeCommand::ForgetTxn { txn: meta.clone() };
            let _ = self.request(Route::Key(meta.anchor.clone()), forget).await;
        }
    }
}

// ---- HTTP ------------------------------------------------------------------------------

/// The `/v1/txn` routes of the admin endpoint.
pub fn routes() -> Router<Arc<NodeState>> {
    Router::new()
        .route("/v1/txn", post(txn))
        .route("/v1/txn/read", post(snapshot_read))
        .route(
            "/v1/txn/kv/{key}",
            get(kv_get).put(kv_put).delete(kv_delete),
        )
        .route("/v1/txn/ranges", get(ranges))
        .route("/v1/txn/stats", get(stats))
}

type Answer = (StatusCode, Json<Json_>);

fn error(code: StatusCode, message: impl std::fmt::Display) -> Answer {
    (code, Json(json!({ "error": message.to_string() })))
}

fn host(state: &NodeState) -> Result<Arc<TxnHost>, Answer> {
    state.txn.clone().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this cluster does not run ranges (start it with synod up --ranges)",
        )
    })
}

fn txn_error(e: TxnError) -> Answer {
    let code = match e {
        TxnError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        TxnError::Aborted(_) => StatusCode::CONFLICT,
        TxnError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        TxnError::Protocol(_) => StatusCode::INTERNAL_SERVER_ERROR,
        TxnError::Compacted(_) => StatusCode::GONE,
    };
    error(code, e)
}

fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, Answer> {
    serde_json::from_str(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad request: {e}")))
}

fn check_key(key: &str) -> Result<(), Answer> {
    if key.is_empty() || key.len() > 1024 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("a key must have 1 to 1024 bytes, not {}", key.len()),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareJson {
    key: Key,
    value: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnJson {
    #[serde(default)]
    compare: Vec<CompareJson>,
    #[serde(default)]
    put: BTreeMap<Key, u64>,
    #[serde(default)]
    add: BTreeMap<Key, i64>,
    #[serde(default)]
    delete: Vec<Key>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadJson {
    keys: Vec<Key>,
}

/// A stored value as JSON: a number if it is a u64's decimal text (what this API
/// writes), else its text (what the etcd API may have written), `null` if absent.
fn value_json(v: &Option<Value>) -> Json_ {
    match v {
        None => Json_::Null,
        Some(b) => match value_u64(b) {
            Some(n) => json!(n),
            None => json!(String::from_utf8_lossy(b)),
        },
    }
}

fn values_json(values: &BTreeMap<Key, Option<Value>>) -> Json_ {
    Json_::Object(
        values
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn outcome_json(o: &TxnOutcome) -> Json_ {
    json!({
        "succeeded": o.succeeded,
        "start_ts": o.start_ts,
        "commit_ts": o.commit_ts,
        "values": values_json(&o.values),
        "path": o.path,
        "aborted_attempts": o.aborted_attempts,
    })
}

async fn txn(State(state): State<Arc<NodeState>>, body: String) -> Answer {
    let run = async {
        let host = host(&state)?;
        let req: TxnJson = parse(&body)?;
        if req.compare.len() + req.put.len() + req.add.len() + req.delete.len() > MAX_KEYS {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("a transaction may name at most {MAX_KEYS} keys"),
            ));
        }
        for k in req
            .compare
            .iter()
            .map(|c| &c.key)
            .chain(req.put.keys())
            .chain(req.add.keys())
            .chain(req.delete.iter())
        {
            check_key(k)?;
        }
        let compare: Vec<(Key, Option<u64>)> =
            req.compare.into_iter().map(|c| (c.key, c.value)).collect();
        let puts: Vec<(Key, u64)> = req.put.into_iter().collect();
        let adds: Vec<(Key, i64)> = req.add.into_iter().collect();
        let outcome = host
            .transact(&compare, &puts, &adds, &req.delete)
            .await
            .map_err(txn_error)?;
        Ok((StatusCode::OK, Json(outcome_json(&outcome))))
    };
    run.await.unwrap_or_else(|e| e)
}

async fn snapshot_read(State(state): State<Arc<NodeState>>, body: String) -> Answer {
    let run = async {
        let host = host(&state)?;
        let req: ReadJson = parse(&body)?;
        if req.keys.len() > MAX_KEYS {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("a snapshot read may name at most {MAX_KEYS} keys"),
            ));
        }
        for k in &req.keys {
            check_key(k)?;
        }
        let (ts, values) = host.snapshot(&req.keys).await.map_err(txn_error)?;
        Ok((
            StatusCode::OK,
            Json(json!({ "ts": ts.0, "values": values_json(&values) })),
        ))
    };
    run.await.unwrap_or_else(|e| e)
}

async fn kv_get(State(state): State<Arc<NodeState>>, Path(key): Path<String>) -> Answer {
    let run = async {
        let host = host(&state)?;
        check_key(&key)?;
        let (ts, values) = host
            .snapshot(std::slice::from_ref(&key))
            .await
            .map_err(txn_error)?;
        let value = value_json(&values.get(&key).cloned().flatten());
        Ok((
            StatusCode::OK,
            Json(json!({ "key": key, "value": value, "ts": ts.0 })),
        ))
    };
    run.await.unwrap_or_else(|e| e)
}

async fn kv_put(
    State(state): State<Arc<NodeState>>,
    Path(key): Path<String>,
    body: String,
) -> Answer {
    let run = async {
        let host = host(&state)?;
        check_key(&key)?;
        let value: u64 = body.trim().parse().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the value must be an unsigned 64-bit integer, not {:?}",
                    body.chars().take(40).collect::<String>()
                ),
            )
        })?;
        let outcome = host
            .transact(&[], &[(key.clone(), value)], &[], &[])
            .await
            .map_err(txn_error)?;
        Ok((StatusCode::OK, Json(outcome_json(&outcome))))
    };
    run.await.unwrap_or_else(|e| e)
}

async fn kv_delete(State(state): State<Arc<NodeState>>, Path(key): Path<String>) -> Answer {
    let run = async {
        let host = host(&state)?;
        check_key(&key)?;
        let outcome = host
            .transact(&[], &[], &[], std::slice::from_ref(&key))
            .await
            .map_err(txn_error)?;
        Ok((StatusCode::OK, Json(outcome_json(&outcome))))
    };
    run.await.unwrap_or_else(|e| e)
}

/// `GET /v1/txn/ranges`: every replica this node hosts.
async fn ranges(State(state): State<Arc<NodeState>>) -> Answer {
    let run = async {
        let host = host(&state)?;
        let replicas = host
            .node()
            .inspect(|node| {
                node.groups()
                    .map(|(id, raft)| {
                        let s = raft.state_machine().state();
                        json!({
                            "id": id.0,
                            "start": s.desc.start,
                            "end": s.desc.end,
                            "serves_keys": s.desc.serves_keys,
                            "role": match raft.role() {
                                Role::Leader => "leader",
                                Role::Candidate => "candidate",
                                _ => "follower",
                            },
                            "leader": raft.leader().map(|l| l.0),
                            "term": raft.current_term().0,
                            "applied": raft.last_applied().0,
                            "keys": s.versions.len(),
                            "intents": s.intents.len(),
                            "records": s.records.len(),
                            "read_cache": s.max_read.len(),
                            "snapshot_index": raft.snapshot_index().0,
                            "log_entries": raft.last_log_index().0 - raft.snapshot_index().0,
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e))?;
        Ok((
            StatusCode::OK,
            Json(json!({ "node": state.me.0, "ranges": replicas })),
        ))
    };
    run.await.unwrap_or_else(|e| e)
}

/// `GET /v1/txn/stats`: this node's coordinator counters.
async fn stats(State(state): State<Arc<NodeState>>) -> Answer {
    match host(&state) {
        Ok(host) => {
            let c = &host.counters;
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            (
                StatusCode::OK,
                Json(json!({
                    "one_phase": get(&c.one_phase),
                    "two_phase": get(&c.two_phase),
                    "aborted": get(&c.aborted),
                    "unknown": get(&c.unknown),
                    "pushes": get(&c.pushes),
                    "reads": get(&c.reads),
                })),
            )
        }
        Err(e) => e,
    }
}

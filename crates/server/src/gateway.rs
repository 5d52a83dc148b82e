//! Client requests into the Raft group from any node.
//!
//! A client may talk to any node. A write goes to this node's Raft server first: a
//! follower that knows the leader proposes it through Raft (`RaftConfig::
//! follower_proposals`, etcd's `MsgProp`) and answers once the entry has applied on its
//! own replica, so no reply crosses the network. A read, or a write the local server
//! turns away with a leader hint, is forwarded to the leader over the peer transport,
//! and the leader's answer comes back the same way. Writes carry a (session, sequence number)
//! pair that the Raft state machine deduplicates (thesis §6.3), so a retry after a lost
//! reply or a leader change never applies a command twice.
//!
//! Sessions: each write borrows a session from a pool and returns it with its sequence
//! number advanced, so one session never has two writes in flight (the leader ignores a
//! sequence number older than the session's newest). The pool is drawn from a random
//! base at start, so a restarted node never reuses a session of its earlier life.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use synod_core::{codec, NodeId};
use synod_protocols::raft::{Raft, RaftMsg, SessionId, StateMachine};
use synod_runtime::driver::{ActorHandle, DriverError};
use synod_runtime::transport::{ServiceId, TransportHandle};
use thiserror::Error;
use tokio::sync::oneshot;

/// The most bytes a forwarded request or reply may decode from.
const MAX_FORWARD_BYTES: usize = 64 << 20;
/// How long one attempt (local or forwarded) may take before the gateway tries again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait before asking again when no leader is known.
const NO_LEADER_BACKOFF: Duration = Duration::from_millis(25);

/// What the gateway sends to another node's gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GatewayMsg<M> {
    /// Hand `msg` to your Raft server and send back what it answers.
    Request {
        /// Matches the reply to the request.
        id: u64,
        /// A client message for Raft.
        msg: M,
    },
    /// The answer to request `id`.
    Reply {
        /// The request.
        id: u64,
        /// What the Raft server answered.
        msg: M,
    },
}

/// Why a request did not complete. The messages are etcd's, which clients match on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// No leader was found before the deadline; nothing was applied.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The deadline passed with the outcome unknown: a write may still apply.
    #[error("etcdserver: request timed out")]
    Timeout,
    /// This node is shutting down.
    #[error("etcdserver: server stopped")]
    Stopped,
}

type Msg<S> = RaftMsg<<S as StateMachine>::Command, <S as StateMachine>::Output>;

/// Raft client sessions for exactly-once writes (thesis §6.3), lent one write at a time so
/// that one session never has two writes in flight. Ids start from a random base, so a
/// restarted node never reuses a session of its earlier life.
pub struct SessionPool {
    free: Mutex<Vec<(SessionId, u64)>>,
    next: AtomicU64,
}

impl Default for SessionPool {
    fn default() -> Self {
        // 40 random bits above a 24-bit counter: distinct across nodes and restarts.
        SessionPool {
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(rand::random::<u64>() << 24),
        }
    }
}

impl SessionPool {
    /// A free session and the last sequence number it used (0 for a new one).
    pub fn take(&self) -> (SessionId, u64) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.pop()
            .unwrap_or_else(|| (SessionId(self.next.fetch_add(1, Ordering::Relaxed)), 0))
    }

    /// Give `session` back with the last sequence number it used.
    pub fn give_back(&self, session: SessionId, seq: u64) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.push((session, seq));
    }
}

/// Routes client commands to the leader of the group, from any node.
pub struct Gateway<S: StateMachine> {
    me: NodeId,
    service: u16,
    raft: ActorHandle<Raft<S>>,
    transport: TransportHandle,
    waiting: Mutex<BTreeMap<u64, oneshot::Sender<Msg<S>>>>,
    next_id: AtomicU64,
    sessions: SessionPool,
    /// The leader the last request found (`u32::MAX`: none known).
    leader: AtomicU32,
    /// How long a request may take in all.
    deadline: Duration,
}

impl<S: StateMachine> Gateway<S> {
    /// A gateway in front of `raft`, reached by peers at `service`.
    pub fn new(
        me: NodeId,
        service: u16,
        raft: ActorHandle<Raft<S>>,
        transport: TransportHandle,
        deadline: Duration,
    ) -> Arc<Self> {
        Arc::new(Gateway {
            me,
            service,
            raft,
            transport,
            waiting: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            sessions: SessionPool::default(),
            leader: AtomicU32::new(u32::MAX),
            deadline,
        })
    }

    /// The leader the last request found, if any.
    pub fn known_leader(&self) -> Option<NodeId> {
        match self.leader.load(Ordering::Relaxed) {
            u32::MAX => None,
            id => Some(NodeId(id)),
        }
    }

    /// Apply `command` through the log, exactly once, and return its output.
    pub async fn write(&self, command: S::Command) -> Result<S::Output, GatewayError> {
        let (session, last) = self.sessions.take();
        let seq = last + 1;
        let outcome = self
            .submit(
                RaftMsg::ClientWrite {
                    session,
                    seq,
                    command,
                },
                crate::node_runtime::follower_proposals(),
            )
            .await;
        self.sessions.give_back(session, seq);
        outcome
    }

    /// Answer a read-only command linearizably (ReadIndex on the leader).
    pub async fn read(&self, command: S::Command) -> Result<S::Output, GatewayError> {
        self.submit(RaftMsg::ClientRead { seq: 0, command }, false)
            .await
    }

    /// Try the known leader (or this node; always this node first with `local_first`),
    /// follow `NotLeader` hints, and retry the same message until it is answered or the
    /// deadline passes.
    async fn submit(&self, msg: Msg<S>, local_first: bool) -> Result<S::Output, GatewayError> {
        let started = Instant::now();
        let mut target = match local_first {
            true => self.me,
            false => self.known_leader().unwrap_or(self.me),
        };
        let mut answered_no_leader = false;
        loop {
            let left = self.deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(if answered_no_leader {
                    GatewayError::NoLeader
                } else {
                    GatewayError::Timeout
                });
            }
            let timeout = left.min(ATTEMPT_TIMEOUT);
            let reply = if target == self.me {
                self.raft.call(msg.clone(), timeout).await
            } else {
                self.forward(target, msg.clone(), timeout).await
            };
            match reply {
                Ok(RaftMsg::ClientReply { output, .. }) => {
                    if !local_first {
                        self.leader.store(target.0, Ordering::Relaxed);
                    }
                    return Ok(output);
                }
                Ok(RaftMsg::NotLeader {
                    leader_hint: Some(leader),
                    ..
                }) if leader != target => {
                    target = leader;
                }
                Ok(_) => {
                    // No leader known (an election is on): ask again shortly.
                    answered_no_leader = true;
                    self.leader.store(u32::MAX, Ordering::Relaxed);
                    target = self.me;
                    tokio::time::sleep(NO_LEADER_BACKOFF.min(left)).await;
                }
                Err(DriverError::Timeout(_)) => {
                    // The leader may have died: start again from this node's view.
                    answered_no_leader = false;
                    self.leader.store(u32::MAX, Ordering::Relaxed);
                    target = self.me;
                }
                Err(_) => return Err(GatewayError::Stopped),
            }
        }
    }

    async fn forward(
        &self,
        to: NodeId,
        msg: Msg<S>,
        timeout: Duration,
    ) -> Result<Msg<S>, DriverError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_waiting().insert(id, tx);
        let payload = Bytes::from(codec::encode(&GatewayMsg::Request { id, msg }));
        if self
            .transport
            .try_send(to, ServiceId(self.service), payload)
            .is_err()
        {
            // The peer is down or its queue is full: as if it never answered.
            tokio::time::sleep(timeout.min(NO_LEADER_BACKOFF)).await;
        }
        let outcome = tokio::time::timeout(timeout, rx).await;
        self.lock_waiting().remove(&id);
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(DriverError::Timeout(timeout)),
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, oneshot::Sender<Msg<S>>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handle what a peer's gateway sent. Undecodable input is logged and dropped.
    pub fn on_peer_message(self: &Arc<Self>, from: NodeId, payload: &[u8]) {
        let msg: GatewayMsg<Msg<S>> = match codec::decode_bounded(payload, MAX_FORWARD_BYTES) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(%from, error = %e, "undecodable gateway message dropped");
                return;
            }
        };
        match msg {
            GatewayMsg::Request { id, msg } => {
                // Only client messages may be forwarded: a peer must not inject Raft RPCs
                // through the client path.
                if !matches!(
                    msg,
                    RaftMsg::ClientWrite { .. } | RaftMsg::ClientRead { .. }
                ) {
                    tracing::warn!(%from, "forwarded non-client message dropped");
                    return;
                }
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    if let Ok(reply) = this.raft.call(msg, ATTEMPT_TIMEOUT).await {
                        let payload = Bytes::from(codec::encode(&GatewayMsg::<Msg<S>>::Reply {
                            id,
                            msg: reply,
                        }));
                        let _ = this
                            .transport
                            .try_send(from, ServiceId(this.service), payload);
                    }
                });
            }
            GatewayMsg::Reply { id, msg } => {
                if let Some(tx) = self.lock_waiting().remove(&id) {
                    let _ = tx.send(msg);
                }
            }
        }
    }
}

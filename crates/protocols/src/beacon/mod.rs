//! # Beacon: durable incarnations, heartbeats and a durable append log
//!
//! The smallest service that exercises everything a real node needs, used to smoke-test
//! the runtime before the consensus protocols arrive:
//!
//! - **Incarnations.** On every start the node bumps a durable incarnation number and
//!   announces it before anything else can leave (group commit holds the announcement
//!   until the bump is on disk). A restarted node therefore never reuses an incarnation,
//!   the property SWIM's refutation relies on (Das, Gupta & Motivala 2002, §4.2).
//! - **Heartbeats.** Every `interval` the node sends `Heartbeat { incarnation, seq }` to
//!   every peer. Each node keeps, per peer, the newest incarnation, the last sequence
//!   number and the local time it last heard from it.
//! - **A durable append log.** A client's `Append(bytes)` is appended to the actor's log
//!   and acknowledged with its index only after the write is durable. Many appends in one
//!   batch share one fsync: this is what the group-commit benchmark drives.
//!
//! Fault model: crash-recovery nodes, a lossy and reordering network. Invariants:
//! incarnations strictly increase across restarts of a node; an acknowledged append is
//! never lost; a peer never hears an incarnation that its sender could lose in a crash.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use synod_core::{Actor, Ctx, Endpoint, Instant, LogIndex, NodeId, StorageExt};

const INCARNATION_KEY: &[u8] = b"incarnation";

/// Largest append accepted from a client.
pub const MAX_APPEND_BYTES: usize = 1 << 20;

/// Messages of the beacon service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BeaconMsg {
    /// Peer → peer: "I am alive in this incarnation; this is my `seq`-th beat in it."
    Heartbeat {
        /// The sender's incarnation.
        incarnation: u64,
        /// Beats sent in this incarnation.
        seq: u64,
    },
    /// Client → node: append these bytes durably.
    Append(Vec<u8>),
    /// Node → client: the append is durable at this index.
    Appended(LogIndex),
    /// Node → client: the request was refused.
    Refused(String),
}

/// Timers of the beacon service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BeaconTimer {
    /// Time to send heartbeats.
    Beat,
}

/// What a node knows about one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// The newest incarnation heard.
    pub incarnation: u64,
    /// The last sequence number heard in that incarnation.
    pub seq: u64,
    /// When (local clock) it was last heard from.
    pub last_heard: Instant,
}

/// A node of the beacon service.
#[derive(Debug)]
pub struct Beacon {
    peers: Vec<NodeId>,
    interval: Duration,
    incarnation: u64,
    seq: u64,
    views: BTreeMap<NodeId, PeerView>,
    appends: u64,
}

impl Beacon {
    /// A node that beats to `peers` every `interval`.
    pub fn new(peers: Vec<NodeId>, interval: Duration) -> Self {
        Beacon {
            peers,
            interval,
            incarnation: 0,
            seq: 0,
            views: BTreeMap::new(),
            appends: 0,
        }
    }

    /// This node's incarnation (0 before `on_start`).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// What this node knows about each peer it has heard from.
    pub fn views(&self) -> &BTreeMap<NodeId, PeerView> {
        &self.views
    }

    /// Appends accepted since this incarnation started.
    pub fn appends(&self) -> u64 {
        self.appends
    }
}

impl Actor for Beacon {
    type Msg = BeaconMsg;
    type Timer = BeaconTimer;

    fn on_start(&mut self, ctx: &mut Ctx<'_, BeaconMsg, BeaconTimer>) {
        // A value that does not decode is a damaged disk, not a fresh node: refuse to
        // guess, and start above anything this node could have used (u64::MAX / 2).
        let previous: u64 = match ctx.storage().get_value(INCARNATION_KEY) {
            Ok(v) => v.unwrap_or(0),
            Err(_) => u64::MAX / 2,
        };
        self.incarnation = previous.saturating_add(1);
        ctx.storage().put_value(INCARNATION_KEY, &self.incarnation);
        self.seq = 0;
        self.beat(ctx);
    }

    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_, BeaconMsg, BeaconTimer>,
        from: Endpoint,
        msg: BeaconMsg,
    ) {
        match (from, msg) {
            (Endpoint::Node(peer), BeaconMsg::Heartbeat { incarnation, seq }) => {
                let now = ctx.now();
                let view = self.views.entry(peer).or_insert(PeerView {
                    incarnation,
                    seq,
                    last_heard: now,
                });
                // Reordered beats from an older incarnation or an older seq say nothing new.
                if (incarnation, seq) >= (view.incarnation, view.seq) {
                    *view = PeerView {
                        incarnation,
                        seq,
                        last_heard: now,
                    };
                }
            }
            (Endpoint::Client(client), BeaconMsg::Append(bytes)) => {
                if bytes.len() > MAX_APPEND_BYTES {
                    ctx.reply(
                        client,
                        BeaconMsg::Refused(format!(
                            "append of {} bytes exceeds the limit of {MAX_APPEND_BYTES}",
                            bytes.len()
                        )),
                    );
                    return;
                }
                let index = ctx.storage().append(&bytes);
                self.appends += 1;
                // Held by the driver until the append is durable.
                ctx.reply(client, BeaconMsg::Appended(index));
            }
            (Endpoint::Client(client), other) => {
                ctx.reply(
                    client,
                    BeaconMsg::Refused(format!("not a client request: {other:?}")),
                );
            }
            (Endpoint::Node(_), _) => {}
        }
    }

    fn on_timer(
        &mut self,
        ctx: &mut Ctx<'_, BeaconMsg, BeaconTimer>,
        BeaconTimer::Beat: BeaconTimer,
    ) {
        self.beat(ctx);
    }
}

impl Beacon {
    fn beat(&mut self, ctx: &mut Ctx<'_, BeaconMsg, BeaconTimer>) {
        self.seq += 1;
        let msg = BeaconMsg::Heartbeat {
            incarnation: self.incarnation,
            seq: self.seq,
        };
        ctx.send_all(self.peers.iter().copied(), msg);
        ctx.set_timer(BeaconTimer::Beat, self.interval);
    }
}

#[cfg(test)]
mod tests;

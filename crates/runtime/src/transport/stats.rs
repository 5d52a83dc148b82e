//! Per-peer counters, kept in atomics and read as a snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use synod_core::NodeId;

/// A snapshot of one peer link. Byte counts are frame bytes (length prefix included)
/// before TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// A handshake has completed and the connection has not failed since.
    pub connected: bool,
    /// `Data` frames written to the peer.
    pub messages_sent: u64,
    /// Frame bytes written to the peer (messages, stream frames and keepalives).
    pub bytes_sent: u64,
    /// `Data` frames read from the peer.
    pub messages_received: u64,
    /// Frame bytes read from the peer.
    pub bytes_received: u64,
    /// Messages refused because the queue was full (`try_send` returned `Full`, or `send`
    /// found the peer down with a full queue).
    pub dropped: u64,
    /// Connections established after the first one.
    pub reconnects: u64,
    /// Failed dial attempts (TCP, TLS or handshake), on the dialing side only.
    pub connect_failures: u64,
    /// Streams this node finished sending to the peer.
    pub streams_sent: u64,
    /// Streams the peer finished sending to this node, checksum verified.
    pub streams_received: u64,
    /// Messages waiting in the outbound queue.
    pub queue_depth: usize,
    /// The outbound queue's capacity.
    pub queue_capacity: usize,
    /// The last reason the link failed or a dial was refused.
    pub last_error: Option<String>,
}

/// A snapshot of the whole transport.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// One entry per configured peer.
    pub peers: BTreeMap<NodeId, PeerStats>,
    /// Inbound connections refused before they were attributed to a peer: TLS failures,
    /// bad handshakes, garbage.
    pub rejected_connections: u64,
    /// The reason of the last such refusal.
    pub last_rejection: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) streams_sent: AtomicU64,
    pub(crate) streams_received: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

impl PeerCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_last_error(&self, error: String) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = Some(error);
        }
    }

    /// The previous last error, to log a repeated failure at a lower level.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|slot| slot.clone())
    }

    pub(crate) fn snapshot(&self, connected: bool, depth: usize, capacity: usize) -> PeerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PeerStats {
            connected,
            messages_sent: get(&self.messages_sent),
            bytes_sent: get(&self.bytes_sent),
            messages_received: get(&self.messages_received),
            bytes_received: get(&self.bytes_received),
            dropped: get(&self.dropped),
            reconnects: get(&self.connects).saturating_sub(1),
            connect_failures: get(&self.connect_failures),
            streams_sent: get(&self.streams_sent),
            streams_received: get(&self.streams_received),
            queue_depth: depth,
            queue_capacity: capacity,
            last_error: self.last_error(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct ListenerCounters {
    pub(crate) rejected: AtomicU64,
    pub(crate) last_rejection: Mutex<Option<String>>,
}

impl ListenerCounters {
    pub(crate) fn reject(&self, reason: String) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slot) = self.last_rejection.lock() {
            *slot = Some(reason);
        }
    }
}

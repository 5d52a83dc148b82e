//! # Node-to-node transport
//!
//! Every actor of a node (Raft groups, SWIM, Chord, job workers, ...) talks to its peers
//! through one TCP connection per pair of nodes, protected by mutual TLS 1.3 (RFC 8446).
//! Messages are opaque bytes addressed to a [`ServiceId`]; the driver encodes them with
//! `synod_core::codec`. Large payloads (snapshots) travel as chunked streams beside them.
//!
//! ## Wire format (protocol version 1)
//!
//! Inside TLS, the connection is a sequence of length-delimited frames. All integers are
//! big-endian; text is UTF-8.
//!
//! ```text
//! frame := len:u32 body                 1 ≤ len ≤ max_frame (16 MiB by default;
//!                                       4 KiB until the handshake completes)
//! body  := kind:u8 fields
//!
//! kind  frame        fields
//! 0x01  Hello        magic "SYND", version:u16, cluster_len:u8, cluster_id,
//!                    from:u32, to:u32                 (appended fields are ignored)
//! 0x02  Reject       code:u16, len:u16, message (≤ 1 KiB)  (appended fields are ignored)
//! 0x03  Keepalive    (none)
//! 0x10  Data         service:u16, payload (the rest of the body)
//! 0x20  StreamStart  stream:u64, service:u16, has_len:u8 (0|1), total_len:u64
//! 0x21  StreamChunk  stream:u64, bytes (the rest of the body)
//! 0x22  StreamEnd    stream:u64, len:u64, crc32c:u32
//! 0x23  StreamAbort  stream:u64, len:u16, reason (≤ 1 KiB)
//! ```
//!
//! Decoding is bounded: a length prefix above the bound is refused from its four bytes,
//! before any buffer grows; every field is length-checked, and malformed input is a
//! [`FrameError`] naming what was wrong, never a panic. [`decode_frame`] and
//! [`decode_handshake`] are the pure entry points (the fuzz targets in `fuzz/` drive
//! them), and [`FrameCodec`] is the same decoder for `tokio_util::codec`.
//!
//! ## Handshake and versioning
//!
//! After TLS, the dialer sends `Hello { version, cluster_id, from: itself, to: the node
//! it dialed }`. The acceptor checks, in order: the protocol version, the cluster id, that
//! `to` is itself, that `from` is a configured peer with a lower id (the connection rule
//! below), and that the client certificate names `from`. It answers with its own `Hello`,
//! which the dialer checks the same way (and that `from` is the node it dialed). On any
//! mismatch the refusing side sends `Reject { code, message }`, logs a warning, and closes;
//! the other side logs the message it got. After the handshake the frame bound rises from
//! 4 KiB to `max_frame`, and a malformed frame closes the connection after a `Reject`
//! with code `Protocol`.
//!
//! The envelope, the magic and the layouts of `Hello` and `Reject` are frozen: a later
//! version may only append fields to them, which older readers skip. So two nodes of any
//! versions can always read each other's `Hello` and refuse each other with a clear
//! message. Every other frame is defined by the [`PROTOCOL_VERSION`] both sides agreed on.
//!
//! ## One connection per pair
//!
//! Of each pair of nodes, **the one with the lower id dials and the other accepts**. The
//! rule needs no tie-breaking and never yields two connections for a pair; an acceptor
//! refuses a dial from a higher id (`WrongDirection`). A node therefore uses the address
//! of its higher peers only. If the accepting side gets a new connection from a peer it
//! is already connected to (the dialer restarted, or saw the old one die first), the newer
//! connection replaces the older. Sockets set `TCP_NODELAY`: batching is done here.
//!
//! The dialer reconnects with exponential backoff and full jitter ([`BackoffConfig`]).
//! Each side sends a `Keepalive` after `keepalive_interval` without writing, and closes a
//! connection on which nothing arrived for `idle_timeout`, so a half-open connection to a
//! crashed host is noticed.
//!
//! ## Queues, backpressure and loss
//!
//! Each peer has a bounded outbound queue of `queue_capacity` messages.
//! [`TransportHandle::try_send`] fails with [`SendError::Full`] when it is full;
//! [`TransportHandle::send`] waits for room while the peer is connected (backpressure).
//! While the peer is **down**, the queue keeps the oldest `queue_capacity` messages for
//! the next connection, and newer ones are dropped: `send` returns
//! [`SendError::PeerDown`] instead of waiting for a peer that may be gone for good.
//! Messages in a write that fails are lost too. Delivery is thus at most once and in order
//! per connection; the protocols above tolerate loss, as they must on any network.
//!
//! The writer takes a message, drains whatever else is queued (up to 256 KiB), and writes
//! the batch with one write and one flush: a burst of small messages costs one TLS record
//! run and one syscall, not one per message.
//!
//! ## Streams
//!
//! [`TransportHandle::send_stream`] reads an `AsyncRead` in chunks of `stream_chunk`
//! bytes (1 MiB by default) and sends `StreamStart`, `StreamChunk`s and `StreamEnd` with
//! the length and CRC-32C; the receiver gets an [`IncomingStream`] to copy into any
//! `AsyncWrite`. Chunks go through a separate lane of two pieces per peer, and the writer
//! puts at most one piece in each batch, so heartbeats wait behind at most one chunk and
//! memory stays bounded by a few chunks whatever the stream's size. A stream lives and dies
//! with its connection: it is not resumed after a reconnect.
//!
//! ## Security model
//!
//! Nodes authenticate each other with mutual TLS 1.3 (RFC 8446 §4.3.2 for the client
//! certificate request), using rustls with the ring provider. The only trusted root is the
//! cluster CA made by [`certs::init_cluster_certs`]; a peer with no certificate, or one
//! from another CA, fails the TLS handshake. A node's certificate names it as
//! `n<id>.<cluster>.synod`: the dialer uses that as the TLS server name, and the acceptor
//! checks that the client certificate names the `from` of the `Hello`, so a node holding
//! a valid certificate cannot claim another node's id. Plaintext ([`TlsMode::Insecure`])
//! is allowed only if it is chosen explicitly *and* every address (listen and peers) is
//! loopback; anything else is a configuration error. Inside the cluster every
//! authenticated peer is trusted to run synod faithfully (Byzantine protocols carry their
//! own signatures).
//!
//! ## Use
//!
//! [`Transport::start`] validates a [`TransportConfig`], binds, and returns a
//! [`TransportHandle`] (cheap to clone) and the receiver of [`Inbound`] messages and
//! streams. [`TransportHandle::stats`] returns per-peer counters.

mod backoff;
pub mod certs;
mod frame;
mod handshake;
mod listener;
mod peer;
mod stats;
mod stream;
mod tls;

#[cfg(test)]
mod tests;

pub use backoff::BackoffConfig;
pub use certs::{CertError, TlsFiles};
pub use frame::{
    decode_frame, encode_frame, Frame, FrameCodec, FrameError, Hello, RejectCode, ServiceId,
    StreamId, DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME, MAGIC, PROTOCOL_VERSION,
};
pub use handshake::{decode_handshake, HandshakeError};
pub use stats::{PeerStats, TransportStats};
pub use stream::{IncomingStream, StreamError};

use bytes::Bytes;
use frame::{CHUNK_OVERHEAD, DATA_OVERHEAD};
use peer::{run_peer, Outgoing, PeerQueues, PeerShared};
use stats::ListenerCounters;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stream::{StreamPiece, LANE_CAPACITY};
use synod_core::NodeId;
use thiserror::Error;
use tls::TlsContext;
use tokio::io::AsyncRead;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How connections are protected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext. Allowed only when the listen address and every peer address are
    /// loopback; meant for tests and `synod up` on one machine with `--insecure`.
    Insecure,
    /// Mutual TLS 1.3 with the cluster CA as the only root.
    Mutual(TlsFiles),
}

/// Everything [`Transport::start`] needs. [`TransportConfig::new`] fills in defaults.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// The cluster's id: a DNS label, also used in certificate names.
    pub cluster_id: String,
    /// This node.
    pub node_id: NodeId,
    /// The address to listen on; port 0 picks a free port
    /// ([`TransportHandle::local_addr`] tells which).
    pub listen: SocketAddr,
    /// Every other node and its address. Only the addresses of higher ids are dialed.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Mutual TLS or explicit plaintext.
    pub tls: TlsMode,
    /// Largest frame body accepted or sent. Default [`DEFAULT_MAX_FRAME`]; a message
    /// payload may be up to 3 bytes shorter. All nodes should agree on it.
    pub max_frame: usize,
    /// Messages each peer's outbound queue holds. Default 8192.
    pub queue_capacity: usize,
    /// Arrivals the [`Inbound`] channel holds before connections wait. Default 8192.
    pub inbound_capacity: usize,
    /// Bytes per stream chunk. Default 1 MiB.
    pub stream_chunk: usize,
    /// How long a connection waits for an [`IncomingStream`]'s consumer before dropping
    /// the stream. Default 5 s.
    pub stream_stall_timeout: Duration,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// Limit on connect, TLS and `Hello` exchange together. Default 5 s.
    pub handshake_timeout: Duration,
    /// A side that has written nothing for this long sends a `Keepalive`. Default 1 s.
    pub keepalive_interval: Duration,
    /// A connection on which nothing arrives for this long is closed. At least twice
    /// `keepalive_interval`. Default 10 s.
    pub idle_timeout: Duration,
}

impl TransportConfig {
    /// A configuration with default limits and timeouts.
    pub fn new(
        cluster_id: impl Into<String>,
        node_id: NodeId,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        tls: TlsMode,
    ) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            node_id,
            listen,
            peers,
            tls,
            max_frame: DEFAULT_MAX_FRAME,
            queue_capacity: 8192,
            inbound_capacity: 8192,
            stream_chunk: 1 << 20,
            stream_stall_timeout: Duration::from_secs(5),
            backoff: BackoffConfig::default(),
            handshake_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
        }
    }

    /// Check the configuration; [`Transport::start`] calls this first.
    pub fn validate(&self) -> Result<(), TransportError> {
        let fail = |message: String| Err(TransportError::Config(message));
        certs::validate_cluster_id(&self.cluster_id)
            .map_err(|e| TransportError::Config(e.to_string()))?;
        if self.peers.contains_key(&self.node_id) {
            return fail(format!("node {} lists itself as a peer", self.node_id));
        }
        if !(HANDSHAKE_MAX_FRAME..=1 << 30).contains(&self.max_frame) {
            return fail(format!(
                "max_frame is {} bytes; it must be between {HANDSHAKE_MAX_FRAME} and {}",
                self.max_frame,
                1 << 30
            ));
        }
        if self.stream_chunk == 0 || self.stream_chunk > self.max_frame - CHUNK_OVERHEAD {
            return fail(format!(
                "stream_chunk is {} bytes; it must be between 1 and max_frame - {CHUNK_OVERHEAD}",
                self.stream_chunk
            ));
        }
        if self.queue_capacity == 0 || self.inbound_capacity == 0 {
            return fail("queue_capacity and inbound_capacity must be at least 1".to_owned());
        }
        for (name, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("stream_stall_timeout", self.stream_stall_timeout),
            ("backoff.base", self.backoff.base),
        ] {
            if value.is_zero() {
                return fail(format!("{name} must be positive"));
            }
        }
        if self.idle_timeout < self.keepalive_interval * 2 {
            return fail(format!(
                "idle_timeout ({:?}) must be at least twice keepalive_interval ({:?})",
                self.idle_timeout, self.keepalive_interval
            ));
        }
        if self.backoff.base > self.backoff.cap {
            return fail(format!(
                "backoff.base ({:?}) exceeds backoff.cap ({:?})",
                self.backoff.base, self.backoff.cap
            ));
        }
        if self.tls == TlsMode::Insecure {
            let addresses = std::iter::once((self.node_id, self.listen))
                .chain(self.peers.iter().map(|(&id, &addr)| (id, addr)));
            for (node, addr) in addresses {
                if !addr.ip().is_loopback() {
                    return fail(format!(
                        "insecure (plaintext) mode is allowed only on loopback, but node \
                         {node} has address {addr}; use mutual TLS (`synod certs`)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Why the transport could not start.
#[derive(Debug, Error)]
pub enum TransportError {
    /// The configuration is inconsistent or unsafe.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// Loading certificates or keys failed.
    #[error("TLS certificates: {0}")]
    Certs(#[from] CertError),
    /// rustls refused the certificates, key or settings.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Why a message was not queued.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The destination is not a configured peer.
    #[error("node {0} is not a configured peer")]
    UnknownPeer(NodeId),
    /// The peer's outbound queue is full (`try_send` only).
    #[error("the outbound queue to node {0} is full")]
    Full(NodeId),
    /// The peer is not connected and its queue is full: the message was dropped.
    #[error("node {0} is not connected and its outbound queue is full; the message was dropped")]
    PeerDown(NodeId),
    /// The payload exceeds what one frame carries; send it as a stream.
    #[error("a payload of {len} bytes exceeds the message limit of {max} bytes; use a stream")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload a message may carry.
        max: usize,
    },
    /// The transport is shut down.
    #[error("the transport is shut down")]
    Closed,
}

/// What arrives from peers, in order per connection.
#[derive(Debug)]
pub enum Inbound {
    /// A message.
    Message {
        /// The sending node (authenticated by its certificate under TLS).
        from: NodeId,
        /// The service it is for.
        service: ServiceId,
        /// The payload.
        payload: Bytes,
    },
    /// The start of a stream; read the rest from it.
    Stream(IncomingStream),
}

/// The entry point: see [`Transport::start`].
#[derive(Debug)]
pub struct Transport;

impl Transport {
    /// Validate `config`, load TLS material, bind the listener, and start one task per
    /// peer and one for the listener. Returns the handle and the receiver of everything
    /// peers send. Must be called within a tokio runtime.
    pub async fn start(
        config: TransportConfig,
    ) -> Result<(TransportHandle, mpsc::Receiver<Inbound>), TransportError> {
        config.validate()?;
        let me = config.node_id;
        let tls = match &config.tls {
            TlsMode::Insecure => {
                tracing::warn!(node = %me, "transport: plaintext mode (insecure, loopback only)");
                None
            }
            TlsMode::Mutual(files) => Some(TlsContext::load(files, &config.cluster_id, me)?),
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| TransportError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| TransportError::Bind {
                addr: config.listen,
                source,
            })?;
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_capacity);
        let core = Arc::new(Core {
            config,
            tls,
            cancel: CancellationToken::new(),
            listener_counters: ListenerCounters::default(),
        });
        let mut tasks = JoinSet::new();
        let mut peers = BTreeMap::new();
        let mut routes = BTreeMap::new();
        for (&id, &addr) in &core.config.peers {
            let (messages_tx, messages) = mpsc::channel(core.config.queue_capacity);
            let (lane_tx, lane) = mpsc::channel(LANE_CAPACITY);
            let accepted = if handshake::dials(me, id) {
                None
            } else {
                let (tx, rx) = mpsc::channel(1);
                routes.insert(id, tx);
                Some(rx)
            };
            let shared = Arc::new(PeerShared::new(id, addr));
            let queues = PeerQueues {
                messages,
                lane,
                accepted,
            };
            tasks.spawn(run_peer(
                core.clone(),
                shared.clone(),
                queues,
                inbound_tx.clone(),
            ));
            peers.insert(
                id,
                PeerHandle {
                    shared,
                    messages: messages_tx,
                    lane: lane_tx,
                },
            );
        }
        tasks.spawn(listener::run_listener(core.clone(), listener, routes));
        tracing::info!(
            node = %me,
            %local_addr,
            tls = core.tls.is_some(),
            peers = core.config.peers.len(),
            "transport: listening"
        );
        let handle = TransportHandle {
            inner: Arc::new(HandleInner {
                core,
                local_addr,
                peers,
                tasks: tokio::sync::Mutex::new(tasks),
                next_stream: AtomicU64::new(1),
            }),
        };
        Ok((handle, inbound_rx))
    }
}

/// What every task of one transport shares.
pub(crate) struct Core {
    pub(crate) config: TransportConfig,
    pub(crate) tls: Option<TlsContext>,
    pub(crate) cancel: CancellationToken,
    pub(crate) listener_counters: ListenerCounters,
}

struct PeerHandle {
    shared: Arc<PeerShared>,
    messages: mpsc::Sender<Outgoing>,
    lane: mpsc::Sender<StreamPiece>,
}

struct HandleInner {
    core: Arc<Core>,
    local_addr: SocketAddr,
    peers: BTreeMap<NodeId, PeerHandle>,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
    next_stream: AtomicU64,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        // The last handle is gone: stop every task (the JoinSet aborts them as well).
        self.core.cancel.cancel();
    }
}

/// Sends to peers and reports on them. Clones share one transport; dropping the last
/// clone shuts it down.
#[derive(Clone)]
pub struct TransportHandle {
    inner: Arc<HandleInner>,
}

impl fmt::Debug for TransportHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportHandle")
            .field("node_id", &self.node_id())
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl TransportHandle {
    /// This node.
    pub fn node_id(&self) -> NodeId {
        self.inner.core.config.node_id
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The configured peers.
    pub fn peers(&self) -> Vec<NodeId> {
        self.inner.peers.keys().copied().collect()
    }

    /// The largest payload one message may carry.
    pub fn max_payload(&self) -> usize {
        self.inner.core.config.max_frame - DATA_OVERHEAD
    }

    fn peer(&self, to: NodeId) -> Result<&PeerHandle, SendError> {
        if self.inner.core.cancel.is_cancelled() {
            return Err(SendError::Closed);
        }
        self.inner.peers.get(&to).ok_or(SendError::UnknownPeer(to))
    }

    fn check_size(&self, payload: &Bytes) -> Result<(), SendError> {
        let max = self.max_payload();
        if payload.len() > max {
            return Err(SendError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        Ok(())
    }

    /// Whether `peer` has a live connection.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.inner
            .peers
            .get(&peer)
            .is_some_and(|p| p.shared.link.borrow().up)
    }

    /// Wait until `peer` has a live connection.
    pub async fn wait_connected(&self, peer: NodeId) -> Result<(), SendError> {
        let handle = self.peer(peer)?;
        let mut link = handle.shared.link.subscribe();
        tokio::select! {
            _ = self.inner.core.cancel.cancelled() => Err(SendError::Closed),
            up = link.wait_for(|state| state.up) => up.map(|_| ()).map_err(|_| SendError::Closed),
        }
    }

    /// Queue a message, waiting for room while the peer is connected (backpressure). If
    /// the peer is down and its queue full, the message is dropped and
    /// [`SendError::PeerDown`] returned.
    pub async fn send(
        &self,
        to: NodeId,
        service: ServiceId,
        payload: Bytes,
    ) -> Result<(), SendError> {
        let peer = self.peer(to)?;
        self.check_size(&payload)?;
        let permit = match peer.messages.try_reserve() {
            Ok(permit) => permit,
            Err(TrySendError::Closed(())) => return Err(SendError::Closed),
            Err(TrySendError::Full(())) => {
                let mut link = peer.shared.link.subscribe();
                loop {
                    if !link.borrow_and_update().up {
                        stats::PeerCounters::add(&peer.shared.counters.dropped, 1);
                        return Err(SendError::PeerDown(to));
                    }
                    tokio::select! {
                        permit = peer.messages.reserve() => {
                            break permit.map_err(|_| SendError::Closed)?;
                        }
                        changed = link.changed() => {
                            if changed.is_err() {
                                return Err(SendError::Closed);
                            }
                        }
                    }
                }
            }
        };
        permit.send(Outgoing { service, payload });
        Ok(())
    }

    /// Queue a message without waiting: [`SendError::Full`] when the queue is full.
    pub fn try_send(
        &self,
        to: NodeId,
        service: ServiceId,
        payload: Bytes,
    ) -> Result<(), SendError> {
        let peer = self.peer(to)?;
        self.check_size(&payload)?;
        match peer.messages.try_send(Outgoing { service, payload }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                stats::PeerCounters::add(&peer.shared.counters.dropped, 1);
                Err(SendError::Full(to))
            }
            Err(TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// Send everything `reader` yields to `to` as one stream, reading `stream_chunk`
    /// bytes at a time; at most a few chunks are in memory at once. `total_len`, if
    /// given, is announced to the receiver and checked. Returns the number of bytes once
    /// the `StreamEnd` has been written to the connection (not when the receiver has
    /// consumed it). Fails with [`StreamError::PeerDown`] if the peer is not connected,
    /// and [`StreamError::ConnectionLost`] if the connection fails before the end.
    pub async fn send_stream<R: AsyncRead + Unpin>(
        &self,
        to: NodeId,
        service: ServiceId,
        reader: R,
        total_len: Option<u64>,
    ) -> Result<u64, StreamError> {
        let peer = self.peer(to).map_err(|e| match e {
            SendError::UnknownPeer(node) => StreamError::UnknownPeer(node),
            _ => StreamError::Closed,
        })?;
        let id = StreamId(self.inner.next_stream.fetch_add(1, Ordering::Relaxed));
        stream::send_stream(
            &peer.shared,
            &peer.lane,
            id,
            service,
            reader,
            total_len,
            self.inner.core.config.stream_chunk,
        )
        .await
    }

    /// A snapshot of the counters of every peer and of the listener.
    pub fn stats(&self) -> TransportStats {
        let peers = self
            .inner
            .peers
            .iter()
            .map(|(&id, peer)| {
                let capacity = peer.messages.max_capacity();
                let depth = capacity - peer.messages.capacity();
                let connected = peer.shared.link.borrow().up;
                (
                    id,
                    peer.shared.counters.snapshot(connected, depth, capacity),
                )
            })
            .collect();
        let listener = &self.inner.core.listener_counters;
        TransportStats {
            peers,
            rejected_connections: listener.rejected.load(Ordering::Relaxed),
            last_rejection: listener
                .last_rejection
                .lock()
                .ok()
                .and_then(|slot| slot.clone()),
        }
    }

    /// Stop listening, close every connection and wait for every task to finish. Queued
    /// messages are dropped. Afterwards sends fail with [`SendError::Closed`] and the
    /// [`Inbound`] receiver ends once drained.
    pub async fn shutdown(&self) {
        self.inner.core.cancel.cancel();
        let mut tasks = self.inner.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
        tracing::info!(node = %self.node_id(), "transport: shut down");
    }
}

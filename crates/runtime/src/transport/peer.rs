//! One task per peer: it owns the outbound queue and the stream lane, gets a connection
//! (by dialing with backoff, or from the listener), and runs it: a writer that batches, and
//! a reader task that delivers.

use super::backoff::Backoff;
use super::frame::{
    encode_frame, Frame, FrameCodec, FrameError, Hello, RejectCode, ServiceId, HANDSHAKE_MAX_FRAME,
    PROTOCOL_VERSION,
};
use super::handshake::{check_as_dialer, hello_from_frame, HandshakeError};
use super::stats::PeerCounters;
use super::stream::{open_incoming, IncomingState, StreamError, StreamPiece, MAX_OPEN_STREAMS};
use super::tls::{check_peer_identity, server_name};
use super::{Core, Inbound};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use synod_core::NodeId;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{Framed, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A batch is written once it holds this many bytes, even if more messages wait.
const BATCH_BYTES: usize = 256 << 10;

/// Initial size of a connection's read buffer: many small frames per read syscall.
const READ_BUFFER: usize = 64 << 10;

/// How long a parting `Reject` frame may take to write.
const REJECT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection, TLS or not, as the rest of the transport sees it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
pub(crate) type BoxIo = Box<dyn Io>;

/// A connection whose handshake has succeeded.
pub(crate) struct Established {
    pub(crate) io: BoxIo,
    /// Bytes read past the peer's `Hello`; the first frames of the session.
    pub(crate) read_buf: BytesMut,
    pub(crate) remote: SocketAddr,
}

/// Whether a peer has a live connection; `generation` counts connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LinkState {
    pub(crate) up: bool,
    pub(crate) generation: u64,
}

/// What the handle and the peer task share about one peer.
#[derive(Debug)]
pub(crate) struct PeerShared {
    pub(crate) id: NodeId,
    pub(crate) addr: SocketAddr,
    pub(crate) counters: PeerCounters,
    pub(crate) link: watch::Sender<LinkState>,
}

impl PeerShared {
    pub(crate) fn new(id: NodeId, addr: SocketAddr) -> Self {
        Self {
            id,
            addr,
            counters: PeerCounters::default(),
            link: watch::Sender::new(LinkState::default()),
        }
    }
}

/// A message waiting in a peer's outbound queue.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) service: ServiceId,
    pub(crate) payload: Bytes,
}

/// Why a dial failed.
#[derive(Debug, Error)]
pub(crate) enum LinkError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("connection failed during the handshake: {0}")]
    Io(std::io::Error),
    #[error("the peer closed the connection during the handshake")]
    Closed,
    #[error("the handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot dial: {0}")]
    Config(String),
}

impl From<FrameError> for LinkError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => LinkError::Io(e),
            other => LinkError::Handshake(other.into()),
        }
    }
}

pub(crate) type HandshakeFramed = Framed<BoxIo, FrameCodec>;

pub(crate) fn handshake_framed(io: BoxIo) -> HandshakeFramed {
    Framed::new(io, FrameCodec::new(HANDSHAKE_MAX_FRAME))
}

/// Read the peer's first frame as a `Hello`.
pub(crate) async fn read_hello(framed: &mut HandshakeFramed) -> Result<Hello, LinkError> {
    match framed.next().await {
        None => Err(LinkError::Closed),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(frame)) => Ok(hello_from_frame(frame)?),
    }
}

/// Tell the peer why we refuse it, without waiting long: it may be what broke.
pub(crate) async fn send_reject(framed: &mut HandshakeFramed, error: &HandshakeError) {
    if matches!(error, HandshakeError::Rejected { .. }) {
        return;
    }
    let reject = Frame::Reject {
        code: error.reject_code(),
        message: error.to_string(),
    };
    let _ = tokio::time::timeout(REJECT_WRITE_TIMEOUT, framed.send(reject)).await;
}

pub(crate) fn established(framed: HandshakeFramed, remote: SocketAddr) -> Established {
    let parts = framed.into_parts();
    Established {
        io: parts.io,
        read_buf: parts.read_buf,
        remote,
    }
}

/// Dial `peer`, set up TLS and run the dialer's half of the handshake.
async fn dial(core: &Core, peer: &PeerShared) -> Result<Established, LinkError> {
    let cluster_id = &core.config.cluster_id;
    let me = core.config.node_id;
    let tcp = TcpStream::connect(peer.addr)
        .await
        .map_err(|source| LinkError::Connect {
            addr: peer.addr,
            source,
        })?;
    tcp.set_nodelay(true).map_err(LinkError::Io)?;
    let io: BoxIo = match &core.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let name = server_name(cluster_id, peer.id).map_err(LinkError::Config)?;
            let stream = tls
                .connector
                .connect(name, tcp)
                .await
                .map_err(LinkError::Tls)?;
            // rustls checked the server name already; this states the rule in one place.
            check_peer_identity(stream.get_ref().1.peer_certificates(), cluster_id, peer.id)
                .map_err(|detail| HandshakeError::Identity {
                    claimed: peer.id,
                    cluster: cluster_id.clone(),
                    detail,
                })?;
            Box::new(stream)
        }
    };
    let mut framed = handshake_framed(io);
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        cluster_id: cluster_id.clone(),
        from: me,
        to: peer.id,
    });
    framed.send(hello).await?;
    let theirs = match read_hello(&mut framed).await {
        Ok(hello) => hello,
        Err(LinkError::Handshake(e)) => {
            send_reject(&mut framed, &e).await;
            return Err(e.into());
        }
        Err(e) => return Err(e),
    };
    if let Err(e) = check_as_dialer(&theirs, cluster_id, me, peer.id) {
        send_reject(&mut framed, &e).await;
        return Err(e.into());
    }
    Ok(established(framed, peer.addr))
}

/// Sleep unless the transport shuts down first; returns whether to carry on.
async fn sleep_or_cancel(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// The next connection the listener hands over; pending forever on the dialing side.
async fn next_accepted(accepted: &mut Option<mpsc::Receiver<Established>>) -> Established {
    match accepted {
        Some(rx) => match rx.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The queues a peer task drains.
pub(crate) struct PeerQueues {
    pub(crate) messages: mpsc::Receiver<Outgoing>,
    pub(crate) lane: mpsc::Receiver<StreamPiece>,
    /// Connections from the listener; `None` when this node dials the peer.
    pub(crate) accepted: Option<mpsc::Receiver<Established>>,
}

/// The life of one peer link, until shutdown.
pub(crate) async fn run_peer(
    core: Arc<Core>,
    peer: Arc<PeerShared>,
    mut queues: PeerQueues,
    inbound: mpsc::Sender<Inbound>,
) {
    let dialer = queues.accepted.is_none();
    let me = core.config.node_id;
    let stream_no = (u64::from(me.0) << 32) | u64::from(peer.id.0);
    let mut backoff = Backoff::new(core.config.backoff, stream_no);
    let mut generation = 0u64;
    loop {
        let mut conn = if dialer {
            let limit = core.config.handshake_timeout;
            let attempt = tokio::select! {
                _ = core.cancel.cancelled() => return,
                r = tokio::time::timeout(limit, dial(&core, &peer)) => {
                    r.unwrap_or(Err(LinkError::Timeout(limit)))
                }
            };
            match attempt {
                Ok(conn) => conn,
                Err(e) => {
                    let error = e.to_string();
                    PeerCounters::add(&peer.counters.connect_failures, 1);
                    // Log a failure once at warn, and its repetitions at debug.
                    if peer.counters.last_error().as_deref() != Some(error.as_str()) {
                        warn!(node = %me, peer = %peer.id, addr = %peer.addr, %error, "transport: dial failed");
                    } else {
                        debug!(node = %me, peer = %peer.id, %error, "transport: dial failed again");
                    }
                    peer.counters.set_last_error(error);
                    if !sleep_or_cancel(&core.cancel, backoff.next_delay()).await {
                        return;
                    }
                    continue;
                }
            }
        } else {
            tokio::select! {
                _ = core.cancel.cancelled() => return,
                conn = next_accepted(&mut queues.accepted) => conn,
            }
        };
        loop {
            generation += 1;
            PeerCounters::add(&peer.counters.connects, 1);
            peer.link.send_replace(LinkState {
                up: true,
                generation,
            });
            info!(node = %me, peer = %peer.id, remote = %conn.remote, generation, "transport: connected");
            let since = Instant::now();
            let end = run_connection(&core, &peer, conn, generation, &mut queues, &inbound).await;
            peer.link.send_replace(LinkState {
                up: false,
                generation,
            });
            match end {
                ConnEnd::Shutdown => return,
                ConnEnd::Replaced(next) => {
                    info!(node = %me, peer = %peer.id, "transport: a newer connection from the peer replaces the current one");
                    conn = next;
                }
                ConnEnd::Lost(reason) => {
                    warn!(node = %me, peer = %peer.id, %reason, "transport: connection lost");
                    peer.counters
                        .set_last_error(format!("connection lost: {reason}"));
                    if since.elapsed() >= backoff.cap() {
                        backoff.reset();
                    }
                    break;
                }
            }
        }
        if dialer && !sleep_or_cancel(&core.cancel, backoff.next_delay()).await {
            return;
        }
    }
}

enum ConnEnd {
    Shutdown,
    Replaced(Established),
    Lost(String),
}

/// Why a reader stopped.
#[derive(Debug)]
enum ReadExit {
    Shutdown,
    Eof,
    Idle(Duration),
    Failed(String),
    /// The peer broke the protocol; we tell it why before closing.
    Protocol(String),
    Rejected {
        code: RejectCode,
        message: String,
    },
}

async fn run_connection(
    core: &Arc<Core>,
    peer: &Arc<PeerShared>,
    conn: Established,
    generation: u64,
    queues: &mut PeerQueues,
    inbound: &mpsc::Sender<Inbound>,
) -> ConnEnd {
    let (read_half, mut write_half) = tokio::io::split(conn.io);
    let mut frames = FramedRead::with_capacity(
        read_half,
        FrameCodec::new(core.config.max_frame),
        READ_BUFFER,
    );
    frames.read_buffer_mut().extend_from_slice(&conn.read_buf);
    let reader_core = core.clone();
    let reader_peer = peer.clone();
    let reader_inbound = inbound.clone();
    let mut reader = tokio::spawn(async move {
        let cancel = reader_core.cancel.clone();
        tokio::select! {
            _ = cancel.cancelled() => ReadExit::Shutdown,
            exit = read_loop(frames, &reader_core, &reader_peer, reader_inbound) => exit,
        }
    });
    let mut writer = Writer {
        core,
        peer,
        generation,
        out: &mut write_half,
        buf: BytesMut::with_capacity(64 << 10),
        stream_acks: Vec::new(),
    };
    let mut reader_done = false;
    let end = writer.run(queues, &mut reader, &mut reader_done).await;
    if !reader_done {
        reader.abort();
        let _ = reader.await;
    }
    if matches!(end, ConnEnd::Shutdown) {
        // Best effort: a TLS close_notify and a FIN rather than a reset.
        let _ = tokio::time::timeout(Duration::from_millis(100), write_half.shutdown()).await;
    }
    end
}

struct Writer<'a> {
    core: &'a Core,
    peer: &'a PeerShared,
    generation: u64,
    out: &'a mut WriteHalf<BoxIo>,
    buf: BytesMut,
    /// `StreamEnd`s in the current batch, answered once it is flushed.
    stream_acks: Vec<oneshot::Sender<Result<(), StreamError>>>,
}

enum First {
    Message(Outgoing),
    Piece(StreamPiece),
    Keepalive,
}

impl Writer<'_> {
    async fn run(
        &mut self,
        queues: &mut PeerQueues,
        reader: &mut JoinHandle<ReadExit>,
        reader_done: &mut bool,
    ) -> ConnEnd {
        let core = self.core;
        let keepalive = core.config.keepalive_interval;
        let mut last_write = Instant::now();
        loop {
            let first = tokio::select! {
                biased;
                _ = core.cancel.cancelled() => return ConnEnd::Shutdown,
                exit = &mut *reader => {
                    *reader_done = true;
                    return self.after_reader(exit).await;
                }
                conn = next_accepted(&mut queues.accepted) => return ConnEnd::Replaced(conn),
                msg = queues.messages.recv() => match msg {
                    Some(msg) => First::Message(msg),
                    None => return ConnEnd::Shutdown,
                },
                piece = queues.lane.recv() => match piece {
                    Some(piece) => First::Piece(piece),
                    None => return ConnEnd::Shutdown,
                },
                _ = tokio::time::sleep_until(last_write + keepalive) => First::Keepalive,
            };
            let mut messages = 0u64;
            let mut took_piece = false;
            match first {
                First::Message(msg) => {
                    self.encode_message(msg);
                    messages += 1;
                }
                First::Piece(piece) => {
                    took_piece = true;
                    self.encode_piece(piece);
                }
                First::Keepalive => self.encode(&Frame::Keepalive),
            }
            // Batch: whatever else is queued, up to a size, then one write and one flush.
            while self.buf.len() < BATCH_BYTES {
                match queues.messages.try_recv() {
                    Ok(msg) => {
                        self.encode_message(msg);
                        messages += 1;
                    }
                    Err(_) => break,
                }
            }
            // At most one stream piece per batch, so messages never wait behind more
            // than one chunk.
            if !took_piece {
                if let Ok(piece) = queues.lane.try_recv() {
                    self.encode_piece(piece);
                }
            }
            if self.buf.is_empty() {
                continue;
            }
            let bytes = self.buf.len() as u64;
            let written = {
                let out = &mut *self.out;
                let buf = &self.buf;
                let write = async move {
                    out.write_all(buf).await?;
                    out.flush().await
                };
                tokio::select! {
                    biased;
                    _ = core.cancel.cancelled() => return ConnEnd::Shutdown,
                    exit = &mut *reader => {
                        *reader_done = true;
                        return self.after_reader(exit).await;
                    }
                    conn = next_accepted(&mut queues.accepted) => return ConnEnd::Replaced(conn),
                    written = write => written,
                }
            };
            if let Err(e) = written {
                return ConnEnd::Lost(format!("write failed: {e}"));
            }
            let counters = &self.peer.counters;
            PeerCounters::add(&counters.messages_sent, messages);
            PeerCounters::add(&counters.bytes_sent, bytes);
            for ack in self.stream_acks.drain(..) {
                PeerCounters::add(&counters.streams_sent, 1);
                let _ = ack.send(Ok(()));
            }
            self.buf.clear();
            last_write = Instant::now();
        }
    }

    fn encode(&mut self, frame: &Frame) {
        if let Err(e) = encode_frame(frame, self.core.config.max_frame, &mut self.buf) {
            // The handle checks sizes before queueing, so this is a bug, not traffic.
            warn!(peer = %self.peer.id, error = %e, "transport: dropping a frame that cannot be encoded");
        }
    }

    fn encode_message(&mut self, msg: Outgoing) {
        self.encode(&Frame::Data {
            service: msg.service,
            payload: msg.payload,
        });
    }

    fn encode_piece(&mut self, piece: StreamPiece) {
        if piece.generation() != self.generation {
            // Started on an earlier connection: the receiver has dropped that stream.
            if let StreamPiece::End { done, .. } = piece {
                let _ = done.send(Err(StreamError::ConnectionLost));
            }
            return;
        }
        let frame = match piece {
            StreamPiece::Start {
                id,
                service,
                total_len,
                ..
            } => Frame::StreamStart {
                stream: id,
                service,
                total_len,
            },
            StreamPiece::Chunk { id, bytes, .. } => Frame::StreamChunk { stream: id, bytes },
            StreamPiece::End {
                id,
                len,
                crc32c,
                done,
                ..
            } => {
                self.stream_acks.push(done);
                Frame::StreamEnd {
                    stream: id,
                    len,
                    crc32c,
                }
            }
            StreamPiece::Abort { id, reason, .. } => Frame::StreamAbort { stream: id, reason },
        };
        self.encode(&frame);
    }

    async fn after_reader(&mut self, exit: Result<ReadExit, tokio::task::JoinError>) -> ConnEnd {
        let exit = match exit {
            Ok(exit) => exit,
            Err(e) => return ConnEnd::Lost(format!("reader task failed: {e}")),
        };
        match exit {
            ReadExit::Shutdown => ConnEnd::Shutdown,
            ReadExit::Eof => ConnEnd::Lost("the peer closed the connection".to_owned()),
            ReadExit::Idle(after) => {
                ConnEnd::Lost(format!("nothing received for {after:?} (idle timeout)"))
            }
            ReadExit::Failed(e) => ConnEnd::Lost(format!("read failed: {e}")),
            ReadExit::Rejected { code, message } => ConnEnd::Lost(format!(
                "the peer closed the connection ({code}): {message}"
            )),
            ReadExit::Protocol(message) => {
                // Say why before closing, so that the peer's log names the problem.
                self.buf.clear();
                self.encode(&Frame::Reject {
                    code: RejectCode::Protocol,
                    message: message.clone(),
                });
                let out = &mut *self.out;
                let buf = &self.buf;
                let write = async move {
                    out.write_all(buf).await?;
                    out.flush().await
                };
                let _ = tokio::time::timeout(REJECT_WRITE_TIMEOUT, write).await;
                ConnEnd::Lost(format!("protocol violation by the peer: {message}"))
            }
        }
    }
}

async fn read_loop(
    mut frames: FramedRead<ReadHalf<BoxIo>, FrameCodec>,
    core: &Core,
    peer: &PeerShared,
    inbound: mpsc::Sender<Inbound>,
) -> ReadExit {
    let idle = core.config.idle_timeout;
    let counters = &peer.counters;
    let mut streams: HashMap<super::frame::StreamId, IncomingState> = HashMap::new();
    // Once the application drops its receiver, arrivals are discarded.
    let mut deliver = true;
    // Bytes of a partial frame already buffered: a large frame that is still arriving is
    // progress, so the idle timeout counts bytes, not whole frames. (`next` is cancel
    // safe: a timed-out read keeps what it buffered.)
    let mut buffered = 0usize;
    loop {
        let frame = match tokio::time::timeout(idle, frames.next()).await {
            Err(_) => {
                let now = frames.read_buffer().len();
                if now > buffered {
                    buffered = now;
                    continue;
                }
                return ReadExit::Idle(idle);
            }
            Ok(None) => return ReadExit::Eof,
            Ok(Some(Err(FrameError::Io(e)))) => return ReadExit::Failed(e.to_string()),
            Ok(Some(Err(e))) => return ReadExit::Protocol(e.to_string()),
            Ok(Some(Ok(frame))) => frame,
        };
        buffered = frames.read_buffer().len();
        PeerCounters::add(&counters.bytes_received, frame.wire_len() as u64);
        match frame {
            Frame::Data { service, payload } => {
                PeerCounters::add(&counters.messages_received, 1);
                if deliver {
                    let msg = Inbound::Message {
                        from: peer.id,
                        service,
                        payload,
                    };
                    deliver = inbound.send(msg).await.is_ok();
                }
            }
            Frame::Keepalive => {}
            Frame::StreamStart {
                stream,
                service,
                total_len,
            } => {
                if streams.contains_key(&stream) {
                    return ReadExit::Protocol(format!("{stream} was opened twice"));
                }
                if streams.len() >= MAX_OPEN_STREAMS {
                    return ReadExit::Protocol(format!(
                        "more than {MAX_OPEN_STREAMS} streams open at once"
                    ));
                }
                let (incoming, state) = open_incoming(
                    peer.id,
                    service,
                    stream,
                    total_len,
                    core.config.stream_stall_timeout,
                );
                streams.insert(stream, state);
                if deliver {
                    deliver = inbound.send(Inbound::Stream(incoming)).await.is_ok();
                }
            }
            Frame::StreamChunk { stream, bytes } => match streams.get_mut(&stream) {
                Some(state) => state.on_chunk(bytes).await,
                None => return ReadExit::Protocol(format!("chunk for unknown {stream}")),
            },
            Frame::StreamEnd {
                stream,
                len,
                crc32c,
            } => match streams.remove(&stream) {
                Some(state) => {
                    if state.on_end(len, crc32c).await {
                        PeerCounters::add(&counters.streams_received, 1);
                    }
                }
                None => return ReadExit::Protocol(format!("end of unknown {stream}")),
            },
            Frame::StreamAbort { stream, reason } => match streams.remove(&stream) {
                Some(state) => state.on_abort(reason),
                None => debug!(peer = %peer.id, %stream, "transport: abort of an unknown stream"),
            },
            Frame::Reject { code, message } => return ReadExit::Rejected { code, message },
            Frame::Hello(_) => {
                return ReadExit::Protocol("a second Hello after the handshake".to_owned())
            }
        }
    }
}

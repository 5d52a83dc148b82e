//! Chunked transfers of large payloads (snapshots) over the low-priority lane.
//!
//! The sender reads its source in chunks of `stream_chunk` bytes inside the caller's task
//! and pushes them into a per-peer lane of [`LANE_CAPACITY`] pieces, so at most a few
//! chunks exist at once whatever the payload size. The connection writer takes at most one
//! lane piece per batch of ordinary messages, so a heartbeat waits for at most one chunk.
//! All pieces of one stream travel on one connection: each piece carries the connection
//! generation it was started on, and the writer drops pieces of an older generation.
//!
//! The receiver hands each chunk to the [`IncomingStream`] through a channel of
//! [`RECEIVE_BUFFER`] chunks and checks the length and CRC-32C at `StreamEnd`.

use super::frame::{ServiceId, StreamId};
use super::peer::{LinkState, PeerShared};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use synod_core::NodeId;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

/// Pieces of outgoing streams that may wait for the writer, per peer.
pub(crate) const LANE_CAPACITY: usize = 2;

/// Chunks an incoming stream buffers before the connection waits for its consumer.
pub(crate) const RECEIVE_BUFFER: usize = 4;

/// Streams one connection may have open at once in each direction.
pub(crate) const MAX_OPEN_STREAMS: usize = 64;

/// Why a stream failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// The destination is not a configured peer.
    #[error("node {0} is not a configured peer")]
    UnknownPeer(NodeId),
    /// The destination has no live connection; streams are not queued.
    #[error("node {0} is not connected")]
    PeerDown(NodeId),
    /// The transport is shut down.
    #[error("the transport is shut down")]
    Closed,
    /// The connection carrying the stream failed or was replaced before the stream ended.
    #[error("the connection carrying the stream was lost")]
    ConnectionLost,
    /// Reading the sender's source failed.
    #[error("reading the stream source failed: {0}")]
    Read(String),
    /// Writing to the receiver's destination failed.
    #[error("writing the received stream failed: {0}")]
    Write(String),
    /// The stream's length differs from the announced one.
    #[error("stream length mismatch: expected {expected} bytes, got {actual}")]
    LengthMismatch {
        /// The announced length.
        expected: u64,
        /// The length seen.
        actual: u64,
    },
    /// The CRC-32C of the bytes received differs from the sender's.
    #[error(
        "stream checksum mismatch: sender says {expected:08x}, received bytes give {actual:08x}"
    )]
    Checksum {
        /// The sender's CRC-32C.
        expected: u32,
        /// The CRC-32C of the bytes received.
        actual: u32,
    },
    /// The sender gave up.
    #[error("the sender aborted the stream: {0}")]
    Aborted(String),
    /// The consumer did not take a chunk within the stall timeout, so the connection
    /// dropped the stream to keep other traffic moving.
    #[error("the stream consumer stalled for more than {0:?}; the stream was dropped")]
    Stalled(Duration),
}

/// One piece of an outgoing stream, queued in a peer's lane.
#[derive(Debug)]
pub(crate) enum StreamPiece {
    Start {
        id: StreamId,
        service: ServiceId,
        total_len: Option<u64>,
        generation: u64,
    },
    Chunk {
        id: StreamId,
        bytes: Bytes,
        generation: u64,
    },
    End {
        id: StreamId,
        len: u64,
        crc32c: u32,
        generation: u64,
        /// Told once the `StreamEnd` frame has been written and flushed.
        done: oneshot::Sender<Result<(), StreamError>>,
    },
    Abort {
        id: StreamId,
        reason: String,
        generation: u64,
    },
}

impl StreamPiece {
    pub(crate) fn generation(&self) -> u64 {
        match self {
            StreamPiece::Start { generation, .. }
            | StreamPiece::Chunk { generation, .. }
            | StreamPiece::End { generation, .. }
            | StreamPiece::Abort { generation, .. } => *generation,
        }
    }
}

/// Send `reader`'s bytes to `peer` as one stream; see
/// [`crate::transport::TransportHandle::send_stream`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_stream<R: AsyncRead + Unpin>(
    peer: &PeerShared,
    lane: &mpsc::Sender<StreamPiece>,
    id: StreamId,
    service: ServiceId,
    mut reader: R,
    total_len: Option<u64>,
    chunk_size: usize,
) -> Result<u64, StreamError> {
    let mut link = peer.link.subscribe();
    let state = *link.borrow_and_update();
    if !state.up {
        return Err(StreamError::PeerDown(peer.id));
    }
    let mut sender = LaneSender {
        lane,
        link,
        generation: state.generation,
    };
    sender
        .push(StreamPiece::Start {
            id,
            service,
            total_len,
            generation: state.generation,
        })
        .await?;
    // From here on, leaving early (an error, or the caller dropping this future) must tell
    // the receiver, or it would wait for the rest until the connection closes.
    let mut guard = AbortOnDrop {
        lane: lane.clone(),
        id,
        generation: state.generation,
        reason: Some("the sender dropped the stream".to_owned()),
    };
    let mut sent = 0u64;
    let mut crc = 0u32;
    loop {
        let mut chunk = BytesMut::with_capacity(chunk_size);
        let mut eof = false;
        while chunk.len() < chunk_size {
            let room = chunk_size - chunk.len();
            match reader.read_buf(&mut (&mut chunk).limit(room)).await {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    let error = StreamError::Read(e.to_string());
                    guard.reason = Some(error.to_string());
                    return Err(error);
                }
            }
        }
        if !chunk.is_empty() {
            sent += chunk.len() as u64;
            crc = crc32c::crc32c_append(crc, &chunk);
            if let Some(expected) = total_len.filter(|&t| sent > t) {
                let error = StreamError::LengthMismatch {
                    expected,
                    actual: sent,
                };
                guard.reason = Some(error.to_string());
                return Err(error);
            }
            sender
                .push(StreamPiece::Chunk {
                    id,
                    bytes: chunk.freeze(),
                    generation: state.generation,
                })
                .await?;
        }
        if eof {
            break;
        }
    }
    if let Some(expected) = total_len.filter(|&t| t != sent) {
        let error = StreamError::LengthMismatch {
            expected,
            actual: sent,
        };
        guard.reason = Some(error.to_string());
        return Err(error);
    }
    let (done, written) = oneshot::channel();
    sender
        .push(StreamPiece::End {
            id,
            len: sent,
            crc32c: crc,
            generation: state.generation,
            done,
        })
        .await?;
    // The End is queued: the receiver will see it or lose the connection.
    guard.reason = None;
    sender.wait_written(written).await?;
    Ok(sent)
}

/// Pushes pieces into the lane while the connection the stream started on is up.
struct LaneSender<'a> {
    lane: &'a mpsc::Sender<StreamPiece>,
    link: watch::Receiver<LinkState>,
    generation: u64,
}

impl LaneSender<'_> {
    /// Wait for the writer to flush the `StreamEnd`, or for the connection to go: if the
    /// peer stays down, no writer would ever answer.
    async fn wait_written(
        &mut self,
        mut written: oneshot::Receiver<Result<(), StreamError>>,
    ) -> Result<(), StreamError> {
        loop {
            tokio::select! {
                biased;
                result = &mut written => {
                    return result.unwrap_or(Err(StreamError::ConnectionLost));
                }
                changed = self.link.changed() => {
                    let state = *self.link.borrow_and_update();
                    if changed.is_err() || !state.up || state.generation != self.generation {
                        return Err(StreamError::ConnectionLost);
                    }
                }
            }
        }
    }

    async fn push(&mut self, piece: StreamPiece) -> Result<(), StreamError> {
        loop {
            let state = *self.link.borrow_and_update();
            if !state.up || state.generation != self.generation {
                return Err(StreamError::ConnectionLost);
            }
            tokio::select! {
                permit = self.lane.reserve() => {
                    permit.map_err(|_| StreamError::Closed)?.send(piece);
                    return Ok(());
                }
                changed = self.link.changed() => {
                    if changed.is_err() {
                        return Err(StreamError::Closed);
                    }
                }
            }
        }
    }
}

struct AbortOnDrop {
    lane: mpsc::Sender<StreamPiece>,
    id: StreamId,
    generation: u64,
    reason: Option<String>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(reason) = self.reason.take() else {
            return;
        };
        let piece = StreamPiece::Abort {
            id: self.id,
            reason,
            generation: self.generation,
        };
        match self.lane.try_send(piece) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(piece)) => {
                // The lane is full: queue the abort from a task rather than block in drop.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let lane = self.lane.clone();
                    runtime.spawn(async move {
                        let _ = lane.send(piece).await;
                    });
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// What the connection reader hands to an [`IncomingStream`].
#[derive(Debug)]
pub(crate) enum StreamItem {
    Chunk(Bytes),
    End,
}

/// A stream arriving from a peer, delivered as [`crate::transport::Inbound::Stream`].
///
/// Consume it concurrently with the inbound channel (for example in its own task): until
/// the consumer takes a chunk, the connection it arrives on waits, for at most the stall
/// timeout, after which the stream fails with [`StreamError::Stalled`]. Dropping it
/// discards the rest of the stream.
#[derive(Debug)]
pub struct IncomingStream {
    from: NodeId,
    service: ServiceId,
    id: StreamId,
    total_len: Option<u64>,
    chunks: mpsc::Receiver<StreamItem>,
    failure: Arc<OnceLock<StreamError>>,
    finished: bool,
}

impl IncomingStream {
    /// The sending node.
    pub fn from(&self) -> NodeId {
        self.from
    }

    /// The service the stream is for.
    pub fn service(&self) -> ServiceId {
        self.service
    }

    /// The sender's id for the stream.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The total length, if the sender announced it.
    pub fn total_len(&self) -> Option<u64> {
        self.total_len
    }

    /// The next chunk, or `Ok(None)` once the whole stream has arrived and its length and
    /// CRC-32C checked out.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, StreamError> {
        if self.finished {
            return Ok(None);
        }
        match self.chunks.recv().await {
            Some(StreamItem::Chunk(bytes)) => Ok(Some(bytes)),
            Some(StreamItem::End) => {
                self.finished = true;
                Ok(None)
            }
            None => Err(self
                .failure
                .get()
                .cloned()
                .unwrap_or(StreamError::ConnectionLost)),
        }
    }

    /// Write the whole stream to `dst` chunk by chunk, flush it, and return the number of
    /// bytes written. On error `dst` holds a prefix of the stream.
    pub async fn copy_to<W: AsyncWrite + Unpin + ?Sized>(
        mut self,
        dst: &mut W,
    ) -> Result<u64, StreamError> {
        let mut written = 0u64;
        while let Some(chunk) = self.next_chunk().await? {
            dst.write_all(&chunk)
                .await
                .map_err(|e| StreamError::Write(e.to_string()))?;
            written += chunk.len() as u64;
        }
        dst.flush()
            .await
            .map_err(|e| StreamError::Write(e.to_string()))?;
        Ok(written)
    }
}

/// The reader's side of one incoming stream.
pub(crate) struct IncomingState {
    /// `None` once the stream failed or its consumer went away: later chunks are dropped.
    chunks: Option<mpsc::Sender<StreamItem>>,
    failure: Arc<OnceLock<StreamError>>,
    total_len: Option<u64>,
    received: u64,
    crc: u32,
    stall_timeout: Duration,
}

/// Open an incoming stream: the consumer's half and the reader's half.
pub(crate) fn open_incoming(
    from: NodeId,
    service: ServiceId,
    id: StreamId,
    total_len: Option<u64>,
    stall_timeout: Duration,
) -> (IncomingStream, IncomingState) {
    let (tx, rx) = mpsc::channel(RECEIVE_BUFFER);
    let failure = Arc::new(OnceLock::new());
    (
        IncomingStream {
            from,
            service,
            id,
            total_len,
            chunks: rx,
            failure: failure.clone(),
            finished: false,
        },
        IncomingState {
            chunks: Some(tx),
            failure,
            total_len,
            received: 0,
            crc: 0,
            stall_timeout,
        },
    )
}

impl IncomingState {
    fn fail(&mut self, error: StreamError) {
        tracing::warn!(%error, "transport: incoming stream failed");
        let _ = self.failure.set(error);
        self.chunks = None;
    }

    async fn deliver(&mut self, item: StreamItem) -> bool {
        let Some(chunks) = &self.chunks else {
            return false;
        };
        match tokio::time::timeout(self.stall_timeout, chunks.send(item)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => {
                // The consumer dropped the stream: discard the rest quietly.
                self.chunks = None;
                false
            }
            Err(_) => {
                self.fail(StreamError::Stalled(self.stall_timeout));
                false
            }
        }
    }

    /// Account for and deliver one chunk.
    pub(crate) async fn on_chunk(&mut self, bytes: Bytes) {
        if self.chunks.is_none() {
            return;
        }
        self.received += bytes.len() as u64;
        self.crc = crc32c::crc32c_append(self.crc, &bytes);
        if let Some(expected) = self.total_len.filter(|&t| self.received > t) {
            self.fail(StreamError::LengthMismatch {
                expected,
                actual: self.received,
            });
            return;
        }
        self.deliver(StreamItem::Chunk(bytes)).await;
    }

    /// Check the sender's totals; returns whether the stream completed intact.
    pub(crate) async fn on_end(mut self, len: u64, crc32c: u32) -> bool {
        if self.chunks.is_none() {
            return false;
        }
        let expected = self.total_len.unwrap_or(len);
        if self.received != len || self.received != expected {
            self.fail(StreamError::LengthMismatch {
                expected,
                actual: self.received,
            });
            return false;
        }
        if self.crc != crc32c {
            self.fail(StreamError::Checksum {
                expected: crc32c,
                actual: self.crc,
            });
            return false;
        }
        self.deliver(StreamItem::End).await
    }

    /// The sender aborted.
    pub(crate) fn on_abort(mut self, reason: String) {
        if self.chunks.is_some() {
            self.fail(StreamError::Aborted(reason));
        }
    }
}

//! The frame envelope, every frame body, and the bounded codec (see the module header of
//! [`crate::transport`] for the layout table).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;
use synod_core::NodeId;
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

/// Default bound on a frame body: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Bound on a frame body before the handshake has completed. A `Hello` is under 300
/// bytes, so an unauthenticated peer can never make a node buffer more than this.
pub const HANDSHAKE_MAX_FRAME: usize = 4 << 10;

/// The four bytes that open every `Hello`: a peer that does not send them does not speak
/// this protocol.
pub const MAGIC: [u8; 4] = *b"SYND";

/// The protocol version this build speaks. Bumped on any incompatible change to a frame
/// layout after `Hello`; peers with different versions refuse each other cleanly.
pub const PROTOCOL_VERSION: u16 = 1;

/// Length of the big-endian `u32` length prefix.
pub(crate) const HEADER_LEN: usize = 4;

/// Longest cluster id a `Hello` can carry (its length prefix is one byte).
pub(crate) const MAX_CLUSTER_ID: usize = 255;

/// Longest human-readable text (reject message, abort reason) put on the wire.
pub(crate) const MAX_TEXT: usize = 1024;

const KIND_HELLO: u8 = 0x01;
const KIND_REJECT: u8 = 0x02;
const KIND_KEEPALIVE: u8 = 0x03;
const KIND_DATA: u8 = 0x10;
const KIND_STREAM_START: u8 = 0x20;
const KIND_STREAM_CHUNK: u8 = 0x21;
const KIND_STREAM_END: u8 = 0x22;
const KIND_STREAM_ABORT: u8 = 0x23;

/// Bytes a `Data` frame body spends before its payload: kind and service.
pub(crate) const DATA_OVERHEAD: usize = 1 + 2;
/// Bytes a `StreamChunk` frame body spends before its bytes: kind and stream id.
pub(crate) const CHUNK_OVERHEAD: usize = 1 + 8;

/// Which actor on a node a message is for: the transport multiplexes every service of a
/// node (Raft groups, SWIM, ...) over one connection per peer pair. The driver assigns the
/// numbers; the transport only carries them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct ServiceId(pub u16);

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// Names one chunked transfer on a connection. The sender picks it; it is unique among
/// the streams the sender has open.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream#{}", self.0)
    }
}

/// The first frame each side sends on a connection.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The cluster the sender belongs to.
    pub cluster_id: String,
    /// The sender's node id. Under TLS its certificate must name this id.
    pub from: NodeId,
    /// The node the sender believes it is talking to.
    pub to: NodeId,
}

/// Why a connection was refused, as carried by a `Reject` frame. Unknown codes from a
/// newer peer decode as [`RejectCode::Other`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RejectCode {
    /// The first frame was not a well-formed `Hello`.
    BadHandshake,
    /// Different protocol versions.
    Version,
    /// Different cluster ids.
    Cluster,
    /// The `Hello` addressed a different node than the one that received it.
    WrongNode,
    /// The sender is not a configured peer of the receiver.
    UnknownNode,
    /// The sender's TLS certificate does not name the node id it claims.
    Identity,
    /// The sender dialed a peer that it should have waited for (the lower id dials).
    WrongDirection,
    /// A frame after the handshake was malformed or out of place.
    Protocol,
    /// A code this version does not know.
    Other(u16),
}

impl RejectCode {
    fn to_wire(self) -> u16 {
        match self {
            RejectCode::BadHandshake => 1,
            RejectCode::Version => 2,
            RejectCode::Cluster => 3,
            RejectCode::WrongNode => 4,
            RejectCode::UnknownNode => 5,
            RejectCode::Identity => 6,
            RejectCode::WrongDirection => 7,
            RejectCode::Protocol => 8,
            RejectCode::Other(code) => code,
        }
    }

    fn from_wire(code: u16) -> Self {
        match code {
            1 => RejectCode::BadHandshake,
            2 => RejectCode::Version,
            3 => RejectCode::Cluster,
            4 => RejectCode::WrongNode,
            5 => RejectCode::UnknownNode,
            6 => RejectCode::Identity,
            7 => RejectCode::WrongDirection,
            8 => RejectCode::Protocol,
            other => RejectCode::Other(other),
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectCode::BadHandshake => f.write_str("bad handshake"),
            RejectCode::Version => f.write_str("version mismatch"),
            RejectCode::Cluster => f.write_str("cluster mismatch"),
            RejectCode::WrongNode => f.write_str("wrong node"),
            RejectCode::UnknownNode => f.write_str("unknown node"),
            RejectCode::Identity => f.write_str("identity mismatch"),
            RejectCode::WrongDirection => f.write_str("wrong direction"),
            RejectCode::Protocol => f.write_str("protocol violation"),
            RejectCode::Other(code) => write!(f, "code {code}"),
        }
    }
}

/// One unit on the wire.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Frame {
    /// The handshake; first frame in each direction.
    Hello(Hello),
    /// The sender refuses the connection and is about to close it.
    Reject {
        /// The machine-readable reason.
        code: RejectCode,
        /// The human-readable reason, at most 1 KiB.
        message: String,
    },
    /// Sent when a side has written nothing for a while, so that the other side can tell
    /// an idle link from a dead one.
    Keepalive,
    /// One message for one service.
    Data {
        /// The service the payload is for.
        service: ServiceId,
        /// Opaque bytes (a postcard-encoded actor message, for the driver).
        payload: Bytes,
    },
    /// Opens a chunked transfer.
    StreamStart {
        /// The transfer's id.
        stream: StreamId,
        /// The service the transfer is for.
        service: ServiceId,
        /// The total length, when the sender knows it in advance.
        total_len: Option<u64>,
    },
    /// The next bytes of a transfer.
    StreamChunk {
        /// The transfer's id.
        stream: StreamId,
        /// The bytes.
        bytes: Bytes,
    },
    /// Closes a transfer; the receiver checks the length and checksum.
    StreamEnd {
        /// The transfer's id.
        stream: StreamId,
        /// Bytes sent in all chunks.
        len: u64,
        /// CRC-32C (Castagnoli) of all the bytes.
        crc32c: u32,
    },
    /// The sender gave up on a transfer (its source failed).
    StreamAbort {
        /// The transfer's id.
        stream: StreamId,
        /// Why, at most 1 KiB.
        reason: String,
    },
}

impl Frame {
    /// A short name for logs and errors.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Reject { .. } => "Reject",
            Frame::Keepalive => "Keepalive",
            Frame::Data { .. } => "Data",
            Frame::StreamStart { .. } => "StreamStart",
            Frame::StreamChunk { .. } => "StreamChunk",
            Frame::StreamEnd { .. } => "StreamEnd",
            Frame::StreamAbort { .. } => "StreamAbort",
        }
    }

    /// Length of the body (what the length prefix counts).
    pub fn body_len(&self) -> usize {
        1 + match self {
            Frame::Hello(hello) => 4 + 2 + 1 + clip(&hello.cluster_id, MAX_CLUSTER_ID).len() + 8,
            Frame::Reject { message, .. } => 2 + 2 + clip(message, MAX_TEXT).len(),
            Frame::Keepalive => 0,
            Frame::Data { payload, .. } => 2 + payload.len(),
            Frame::StreamStart { .. } => 8 + 2 + 1 + 8,
            Frame::StreamChunk { bytes, .. } => 8 + bytes.len(),
            Frame::StreamEnd { .. } => 8 + 8 + 4,
            Frame::StreamAbort { reason, .. } => 8 + 2 + clip(reason, MAX_TEXT).len(),
        }
    }

    /// Bytes the frame takes on the wire, length prefix included.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    fn put_body(&self, dst: &mut BytesMut) {
        match self {
            Frame::Hello(hello) => {
                let cluster = clip(&hello.cluster_id, MAX_CLUSTER_ID);
                dst.put_u8(KIND_HELLO);
                dst.put_slice(&MAGIC);
                dst.put_u16(hello.version);
                dst.put_u8(cluster.len() as u8);
                dst.put_slice(cluster.as_bytes());
                dst.put_u32(hello.from.0);
                dst.put_u32(hello.to.0);
            }
            Frame::Reject { code, message } => {
                let message = clip(message, MAX_TEXT);
                dst.put_u8(KIND_REJECT);
                dst.put_u16(code.to_wire());
                dst.put_u16(message.len() as u16);
                dst.put_slice(message.as_bytes());
            }
            Frame::Keepalive => dst.put_u8(KIND_KEEPALIVE),
            Frame::Data { service, payload } => {
                dst.put_u8(KIND_DATA);
                dst.put_u16(service.0);
                dst.put_slice(payload);
            }
            Frame::StreamStart {
                stream,
                service,
                total_len,
            } => {
                dst.put_u8(KIND_STREAM_START);
                dst.put_u64(stream.0);
                dst.put_u16(service.0);
                dst.put_u8(u8::from(total_len.is_some()));
                dst.put_u64(total_len.unwrap_or(0));
            }
            Frame::StreamChunk { stream, bytes } => {
                dst.put_u8(KIND_STREAM_CHUNK);
                dst.put_u64(stream.0);
                dst.put_slice(bytes);
            }
            Frame::StreamEnd {
                stream,
                len,
                crc32c,
            } => {
                dst.put_u8(KIND_STREAM_END);
                dst.put_u64(stream.0);
                dst.put_u64(*len);
                dst.put_u32(*crc32c);
            }
            Frame::StreamAbort { stream, reason } => {
                let reason = clip(reason, MAX_TEXT);
                dst.put_u8(KIND_STREAM_ABORT);
                dst.put_u64(stream.0);
                dst.put_u16(reason.len() as u16);
                dst.put_slice(reason.as_bytes());
            }
        }
    }
}

/// Why bytes could not be framed or a frame could not be decoded. Every variant names what
/// was wrong; none of them is ever a panic.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The length prefix announces more than the bound. Raised before any allocation.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced body length.
        len: usize,
        /// The bound in force.
        max: usize,
    },
    /// A length prefix of zero: every frame has at least a kind byte.
    #[error("empty frame: a length prefix of 0")]
    Empty,
    /// A kind byte this version does not know.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The body ends before a field does.
    #[error("truncated {0} frame")]
    Truncated(&'static str),
    /// Bytes after the last field of a frame whose layout is exact.
    #[error("{extra} trailing bytes after a {kind} frame")]
    Trailing {
        /// The frame kind.
        kind: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A `Hello` without the magic bytes: the peer does not speak this protocol.
    #[error("bad magic {0:02x?} in Hello: the peer does not speak the synod transport protocol")]
    BadMagic([u8; 4]),
    /// A text field longer than the protocol allows.
    #[error("the {field} text is {len} bytes, more than the limit of {max}")]
    TextTooLong {
        /// Which field.
        field: &'static str,
        /// Its announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A text field that is not UTF-8.
    #[error("the {0} text is not valid UTF-8")]
    Utf8(&'static str),
    /// A flag byte outside its defined values.
    #[error("invalid flag byte 0x{0:02x} in StreamStart")]
    BadFlag(u8),
    /// The underlying connection failed (only from the tokio codec).
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// The codec for a connection: a [`Decoder`] and [`Encoder`] of [`Frame`]s with a bound on
/// the body length. The bound is checked on the length prefix alone, before the buffer
/// grows, so an attacker's 4 GiB prefix costs nothing.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    /// A codec that accepts bodies of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    /// The bound in force.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Change the bound: the transport raises it from [`HANDSHAKE_MAX_FRAME`] once the
    /// handshake succeeds.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(len) = body_len(src, self.max_frame)? else {
            return Ok(None);
        };
        if src.len() < HEADER_LEN + len {
            // The bound was checked above, so this reservation is at most one frame.
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(len).freeze();
        parse_body(body).map(Some)
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(&frame, self.max_frame, dst)
    }
}

/// Append one frame (length prefix and body) to `dst`, refusing a body over `max_frame`.
pub fn encode_frame(frame: &Frame, max_frame: usize, dst: &mut BytesMut) -> Result<(), FrameError> {
    let len = frame.body_len();
    if len > max_frame || len > u32::MAX as usize {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    dst.reserve(HEADER_LEN + len);
    dst.put_u32(len as u32);
    frame.put_body(dst);
    Ok(())
}

/// Decode the first frame in `buf`, a pure function of its input.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame, and `Ok(Some((frame, n)))`
/// when the frame took the first `n` bytes. A length prefix above `max_frame` is an error
/// as soon as its four bytes are present. This is the entry point the fuzz target and the
/// property tests drive; [`FrameCodec`] applies the same rules to a stream.
pub fn decode_frame(buf: &[u8], max_frame: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(len) = body_len(buf, max_frame)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let frame = parse_body(Bytes::copy_from_slice(body))?;
    Ok(Some((frame, HEADER_LEN + len)))
}

/// Read and check the length prefix, if all four bytes are there.
fn body_len(buf: &[u8], max_frame: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(prefix);
    let len = u32::from_be_bytes(raw) as usize;
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    Ok(Some(len))
}

/// Parse a frame body (kind byte and fields). Payload fields share `body`'s allocation.
fn parse_body(mut body: Bytes) -> Result<Frame, FrameError> {
    if body.is_empty() {
        return Err(FrameError::Empty);
    }
    let kind = body.get_u8();
    let mut r = FieldReader { kind: "", body };
    let frame = match kind {
        KIND_HELLO => {
            r.kind = "Hello";
            let mut magic = [0u8; 4];
            magic.copy_from_slice(&r.take(4)?);
            if magic != MAGIC {
                return Err(FrameError::BadMagic(magic));
            }
            let version = r.u16()?;
            let cluster_len = usize::from(r.u8()?);
            let cluster_id = r.text(cluster_len, "cluster id")?;
            let from = NodeId(r.u32()?);
            let to = NodeId(r.u32()?);
            // Later versions may append fields to Hello; this version ignores them, so
            // any two versions can read each other's Hello and refuse cleanly.
            return Ok(Frame::Hello(Hello {
                version,
                cluster_id,
                from,
                to,
            }));
        }
        KIND_REJECT => {
            r.kind = "Reject";
            let code = RejectCode::from_wire(r.u16()?);
            let len = usize::from(r.u16()?);
            let message = r.text(len, "reject message")?;
            // Frozen like Hello: appended fields are ignored.
            return Ok(Frame::Reject { code, message });
        }
        KIND_KEEPALIVE => {
            r.kind = "Keepalive";
            Frame::Keepalive
        }
        KIND_DATA => {
            r.kind = "Data";
            let service = ServiceId(r.u16()?);
            return Ok(Frame::Data {
                service,
                payload: r.rest(),
            });
        }
        KIND_STREAM_START => {
            r.kind = "StreamStart";
            let stream = StreamId(r.u64()?);
            let service = ServiceId(r.u16()?);
            let flag = r.u8()?;
            let len = r.u64()?;
            let total_len = match flag {
                0 => None,
                1 => Some(len),
                other => return Err(FrameError::BadFlag(other)),
            };
            Frame::StreamStart {
                stream,
                service,
                total_len,
            }
        }
        KIND_STREAM_CHUNK => {
            r.kind = "StreamChunk";
            let stream = StreamId(r.u64()?);
            return Ok(Frame::StreamChunk {
                stream,
                bytes: r.rest(),
            });
        }
        KIND_STREAM_END => {
            r.kind = "StreamEnd";
            Frame::StreamEnd {
                stream: StreamId(r.u64()?),
                len: r.u64()?,
                crc32c: r.u32()?,
            }
        }
        KIND_STREAM_ABORT => {
            r.kind = "StreamAbort";
            let stream = StreamId(r.u64()?);
            let len = usize::from(r.u16()?);
            let reason = r.text(len, "abort reason")?;
            Frame::StreamAbort { stream, reason }
        }
        other => return Err(FrameError::UnknownKind(other)),
    };
    r.finish()?;
    Ok(frame)
}

/// Reads fields off a frame body, turning every short read into [`FrameError::Truncated`].
struct FieldReader {
    kind: &'static str,
    body: Bytes,
}

impl FieldReader {
    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.body.remaining() < n {
            Err(FrameError::Truncated(self.kind))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        self.need(1)?;
        Ok(self.body.get_u8())
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        self.need(2)?;
        Ok(self.body.get_u16())
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.need(4)?;
        Ok(self.body.get_u32())
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.need(8)?;
        Ok(self.body.get_u64())
    }

    fn take(&mut self, n: usize) -> Result<Bytes, FrameError> {
        self.need(n)?;
        Ok(self.body.split_to(n))
    }

    fn text(&mut self, n: usize, field: &'static str) -> Result<String, FrameError> {
        if n > MAX_TEXT {
            return Err(FrameError::TextTooLong {
                field,
                len: n,
                max: MAX_TEXT,
            });
        }
        let raw = self.take(n)?;
        String::from_utf8(raw.to_vec()).map_err(|_| FrameError::Utf8(field))
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }

    fn finish(self) -> Result<(), FrameError> {
        match self.body.len() {
            0 => Ok(()),
            extra => Err(FrameError::Trailing {
                kind: self.kind,
                extra,
            }),
        }
    }
}

/// The longest prefix of `s` that fits in `max` bytes and ends on a character boundary.
pub(crate) fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                cluster_id: "alpha".into(),
                from: NodeId(1),
                to: NodeId(2),
            }),
            Frame::Reject {
                code: RejectCode::Cluster,
                message: "cluster mismatch: \"a\" vs \"b\"".into(),
            },
            Frame::Reject {
                code: RejectCode::Other(999),
                message: String::new(),
            },
            Frame::Keepalive,
            Frame::Data {
                service: ServiceId(7),
                payload: Bytes::from_static(b"hello raft"),
            },
            Frame::Data {
                service: ServiceId(0),
                payload: Bytes::new(),
            },
            Frame::StreamStart {
                stream: StreamId(3),
                service: ServiceId(9),
                total_len: Some(64 << 20),
            },
            Frame::StreamStart {
                stream: StreamId(4),
                service: ServiceId(9),
                total_len: None,
            },
            Frame::StreamChunk {
                stream: StreamId(3),
                bytes: Bytes::from(vec![0xab; 1000]),
            },
            Frame::StreamEnd {
                stream: StreamId(3),
                len: 1000,
                crc32c: 0xdead_beef,
            },
            Frame::StreamAbort {
                stream: StreamId(3),
                reason: "disk read failed".into(),
            },
        ]
    }

    fn encode(frame: &Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_frame(frame, DEFAULT_MAX_FRAME, &mut buf).expect("sample frames fit");
        buf
    }

    #[test]
    fn every_frame_kind_round_trips() {
        for frame in samples() {
            let buf = encode(&frame);
            assert_eq!(buf.len(), frame.wire_len(), "{frame:?}");
            let (decoded, used) = decode_frame(&buf, DEFAULT_MAX_FRAME)
                .expect("valid")
                .expect("complete");
            assert_eq!(decoded, frame);
            assert_eq!(used, buf.len());
        }
    }

    #[test]
    fn every_strict_prefix_of_a_frame_asks_for_more_bytes() {
        for frame in samples() {
            let buf = encode(&frame);
            for cut in 0..buf.len() {
                assert!(
                    matches!(decode_frame(&buf[..cut], DEFAULT_MAX_FRAME), Ok(None)),
                    "{frame:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn oversize_length_prefix_is_rejected_before_allocating() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::with_capacity(8);
        buf.put_u32(u32::MAX);
        let capacity = buf.capacity();
        let err = codec.decode(&mut buf).expect_err("oversize");
        assert!(
            matches!(err, FrameError::TooLarge { len, max: 1024 } if len == u32::MAX as usize),
            "{err}"
        );
        assert_eq!(
            buf.capacity(),
            capacity,
            "no reservation for a rejected frame"
        );
        assert!(err.to_string().contains("exceeds the limit of 1024"));

        // The pure decoder needs only the four prefix bytes to refuse.
        let err = decode_frame(&1025u32.to_be_bytes(), 1024).expect_err("oversize");
        assert!(matches!(err, FrameError::TooLarge { len: 1025, .. }));
        // The bound applies to the encoder too.
        let big = Frame::Data {
            service: ServiceId(1),
            payload: Bytes::from(vec![0; 2048]),
        };
        assert!(matches!(
            encode_frame(&big, 1024, &mut BytesMut::new()),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_bodies_name_what_is_wrong() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0, 0, 0], "empty frame"),
            (vec![0, 0, 0, 1, 0x7f], "unknown frame kind 0x7f"),
            (
                vec![0, 0, 0, 2, KIND_KEEPALIVE, 0],
                "trailing bytes after a Keepalive",
            ),
            (vec![0, 0, 0, 2, KIND_DATA, 0], "truncated Data"),
            (
                vec![0, 0, 0, 9, KIND_HELLO, b'G', b'E', b'T', b' ', 0, 1, 0, 0],
                "bad magic",
            ),
            (
                vec![0, 0, 0, 6, KIND_REJECT, 0, 1, 0, 1, 0xff],
                "not valid UTF-8",
            ),
            (
                vec![0, 0, 0, 5, KIND_REJECT, 0, 1, 0xff, 0xff],
                "65535 bytes, more than the limit of 1024",
            ),
        ];
        for (bytes, expected) in cases {
            let err = decode_frame(&bytes, DEFAULT_MAX_FRAME).expect_err("malformed");
            assert!(err.to_string().contains(expected), "{err} for {bytes:?}");
        }
        let mut start = encode(&Frame::StreamStart {
            stream: StreamId(1),
            service: ServiceId(1),
            total_len: None,
        });
        start[4 + 1 + 8 + 2] = 7;
        assert!(matches!(
            decode_frame(&start, DEFAULT_MAX_FRAME),
            Err(FrameError::BadFlag(7))
        ));
    }

    #[test]
    fn hello_and_reject_ignore_fields_appended_by_later_versions() {
        let hello = Hello {
            version: 9,
            cluster_id: "c".into(),
            from: NodeId(5),
            to: NodeId(6),
        };
        let mut buf = encode(&Frame::Hello(hello.clone()));
        buf.extend_from_slice(b"future extension");
        let new_len = (buf.len() - HEADER_LEN) as u32;
        buf[..4].copy_from_slice(&new_len.to_be_bytes());
        let (frame, _) = decode_frame(&buf, HANDSHAKE_MAX_FRAME)
            .expect("valid")
            .expect("complete");
        assert_eq!(frame, Frame::Hello(hello));
    }

    #[test]
    fn long_text_is_clipped_on_a_character_boundary() {
        let frame = Frame::StreamAbort {
            stream: StreamId(1),
            reason: "é".repeat(MAX_TEXT),
        };
        let buf = encode(&frame);
        let (decoded, _) = decode_frame(&buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        let Frame::StreamAbort { reason, .. } = decoded else {
            panic!("wrong kind")
        };
        assert_eq!(reason.len(), MAX_TEXT);
        assert!(reason.chars().all(|c| c == 'é'));
    }

    /// Feed `bytes` to the codec in pieces of the given sizes; collect what it yields.
    fn decode_in_pieces(bytes: &[u8], pieces: &[usize], max: usize) -> (Vec<Frame>, bool) {
        let mut codec = FrameCodec::new(max);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut offset = 0;
        let mut sizes = pieces.iter().copied().cycle();
        while offset < bytes.len() {
            let n = sizes.next().unwrap_or(1).max(1).min(bytes.len() - offset);
            buf.extend_from_slice(&bytes[offset..offset + n]);
            offset += n;
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(_) => return (frames, true),
                }
            }
        }
        (frames, false)
    }

    /// The pure decoder applied repeatedly, as a reference for the streaming codec.
    fn decode_all(bytes: &[u8], max: usize) -> (Vec<Frame>, bool) {
        let mut frames = Vec::new();
        let mut rest = bytes;
        loop {
            match decode_frame(rest, max) {
                Ok(Some((frame, used))) => {
                    assert!(used > 0 && used <= rest.len());
                    // Whatever decodes re-encodes within the bound to the same frame.
                    let mut again = BytesMut::new();
                    encode_frame(&frame, max, &mut again).expect("a decoded frame fits");
                    let (round, n) = decode_frame(&again, max).unwrap().unwrap();
                    assert_eq!((&round, n), (&frame, again.len()));
                    frames.push(frame);
                    rest = &rest[used..];
                }
                Ok(None) => return (frames, false),
                Err(_) => return (frames, true),
            }
        }
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from);
        prop_oneof![
            ("[a-z0-9-]{0,40}", any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
                |(cluster_id, version, from, to)| Frame::Hello(Hello {
                    version,
                    cluster_id,
                    from: NodeId(from),
                    to: NodeId(to),
                })
            ),
            (1u16..20, ".{0,50}").prop_map(|(code, message)| Frame::Reject {
                code: RejectCode::from_wire(code),
                message,
            }),
            Just(Frame::Keepalive),
            (any::<u16>(), bytes.clone()).prop_map(|(s, payload)| Frame::Data {
                service: ServiceId(s),
                payload,
            }),
            (
                any::<u64>(),
                any::<u16>(),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(id, s, total_len)| Frame::StreamStart {
                    stream: StreamId(id),
                    service: ServiceId(s),
                    total_len,
                }),
            (any::<u64>(), bytes).prop_map(|(id, bytes)| Frame::StreamChunk {
                stream: StreamId(id),
                bytes,
            }),
            (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(id, len, crc32c)| {
                Frame::StreamEnd {
                    stream: StreamId(id),
                    len,
                    crc32c,
                }
            }),
            (any::<u64>(), ".{0,50}").prop_map(|(id, reason)| Frame::StreamAbort {
                stream: StreamId(id),
                reason,
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Random bytes never panic either decoder, and both agree on what they yield.
        #[test]
        fn garbage_never_panics_and_both_decoders_agree(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            pieces in proptest::collection::vec(1usize..64, 1..8),
            max in prop_oneof![Just(16usize), Just(HANDSHAKE_MAX_FRAME), Just(DEFAULT_MAX_FRAME)],
        ) {
            let (reference, reference_failed) = decode_all(&bytes, max);
            let (streamed, streamed_failed) = decode_in_pieces(&bytes, &pieces, max);
            prop_assert_eq!(&streamed, &reference);
            if streamed_failed {
                prop_assert!(reference_failed);
            }
            let _ = crate::transport::decode_handshake(&bytes);
        }

        /// Valid frames survive any split into pieces, and the re-encoding of what was
        /// decoded decodes to the same frame.
        #[test]
        fn valid_frame_sequences_round_trip_through_any_split(
            frames in proptest::collection::vec(arb_frame(), 0..12),
            pieces in proptest::collection::vec(1usize..97, 1..8),
        ) {
            let mut wire = BytesMut::new();
            for frame in &frames {
                encode_frame(frame, DEFAULT_MAX_FRAME, &mut wire).unwrap();
            }
            let (decoded, failed) = decode_in_pieces(&wire, &pieces, DEFAULT_MAX_FRAME);
            prop_assert!(!failed);
            prop_assert_eq!(decoded.len(), frames.len());
            for (got, sent) in decoded.iter().zip(&frames) {
                let mut again = BytesMut::new();
                encode_frame(got, DEFAULT_MAX_FRAME, &mut again).unwrap();
                let (round, _) = decode_frame(&again, DEFAULT_MAX_FRAME).unwrap().unwrap();
                prop_assert_eq!(&round, got);
                if let (Frame::Reject { message: a, .. }, Frame::Reject { message: b, .. }) =
                    (got, sent)
                {
                    prop_assert_eq!(a.as_str(), clip(b, MAX_TEXT));
                } else if let (
                    Frame::StreamAbort { reason: a, .. },
                    Frame::StreamAbort { reason: b, .. },
                ) = (got, sent)
                {
                    prop_assert_eq!(a.as_str(), clip(b, MAX_TEXT));
                } else {
                    prop_assert_eq!(got, sent);
                }
            }
        }

        /// Flipping bytes of valid frames never panics the decoder.
        #[test]
        fn mutated_frames_never_panic(
            frame in arb_frame(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut wire = BytesMut::new();
            encode_frame(&frame, DEFAULT_MAX_FRAME, &mut wire).unwrap();
            for (at, byte) in flips {
                let at = at % wire.len();
                wire[at] ^= byte;
            }
            let _ = decode_all(&wire, DEFAULT_MAX_FRAME);
            let _ = decode_in_pieces(&wire, &[3, 1, 7], DEFAULT_MAX_FRAME);
        }
    }
}

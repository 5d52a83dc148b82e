//! The lean HTTP/1.1 path: nginx's model of a proxied exchange. The client connection's
//! own task reads a request (httparse), picks an instance, writes the request to a pooled
//! keep-alive upstream connection it owns for the exchange, reads the response head and
//! streams the body back (content-length, chunked or until close), with no second task, no
//! channel and no wake-up of anyone else on the way. hyper serves what this path does not
//! cover: HTTP/2 (the connection preface), HTTP/1.0, upgrades, `Expect`, CONNECT and
//! absolute-form targets, and every connection of a hedged or h2c-upstream service; such a
//! connection is handed to hyper with the bytes already read.
//!
//! Semantics are the hyper path's (`Service::handle_inner`): the same balancer pick,
//! breaker permits, outlier ejection, retry budget and backoff, deadline propagation,
//! `x-synod-upstream` and `x-synod-attempts`, metrics, and 502/503/504 for the proxy's own
//! failures. Request bodies are buffered (up to `max_body_bytes`) so that a retry can
//! replay them; response bodies are streamed, never buffered whole.
//!
//! Framing follows RFC 9112 §6: a response to HEAD, and 1xx, 204 and 304 responses, have
//! no body; otherwise `Transfer-Encoding: chunked` (§7.1), else `Content-Length`, else the
//! body runs until the upstream closes. A request with both, or with a Transfer-Encoding
//! whose last coding is not chunked, is refused with 400 (§6.3), as request smuggling
//! defences do.

use super::{hash_bytes, is_idempotent, serve_hyper, Attempt, Outcome, Service, HOP_BY_HOP};
use crate::lb::hash_str;
use crate::resilience::{
    format_grpc_timeout, parse_grpc_timeout, parse_timeout_millis, Deadline, DeadlineError,
    GRPC_TIMEOUT_HEADER, TIMEOUT_HEADER,
};
use bytes::{Buf, Bytes, BytesMut};
use hyper::header::HeaderValue;
use hyper::StatusCode;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The largest request or response head.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a head.
const MAX_HEADERS: usize = 100;
/// How much a read asks for.
const READ_SIZE: usize = 16 * 1024;
/// Bodies at most this large go out in the same write as the head.
const COALESCE: usize = 64 * 1024;
/// Idle upstream connections a worker thread keeps per address.
const MAX_IDLE: usize = 512;

/// An upstream connection with what has been read from it and not yet used.
struct UpConn {
    stream: TcpStream,
    buf: BytesMut,
    address: SocketAddr,
}

thread_local! {
    static IDLE: RefCell<BTreeMap<SocketAddr, Vec<UpConn>>> = const { RefCell::new(BTreeMap::new()) };
}

/// An idle connection to `address` that the upstream has not closed.
fn take_idle(address: SocketAddr) -> Option<UpConn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&address)?;
        while let Some(conn) = list.pop() {
            // A closed connection reads end of stream; an idle one has nothing to read. Any
            // bytes would be a protocol error by the upstream. (No syscall when the reactor
            // has seen no readiness since the last read.)
            let mut probe = [0u8; 1];
            if let Err(e) = conn.stream.try_read(&mut probe) {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Some(conn);
                }
            }
        }
        None
    })
}

fn put_idle(conn: UpConn) {
    if !conn.buf.is_empty() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(conn.address).or_default();
        if list.len() < MAX_IDLE {
            list.push(conn);
        }
    });
}

async fn connect(address: SocketAddr, timeout: Duration) -> Result<UpConn, LeanError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(LeanError::Connect(e.to_string())),
        Err(_) => {
            return Err(LeanError::Connect(format!(
                "connect timed out after {timeout:?}"
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(UpConn {
        stream,
        buf: BytesMut::with_capacity(READ_SIZE),
        address,
    })
}

/// Read more into `buf`; `Ok(0)` is end of stream.
async fn fill<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    buf.reserve(READ_SIZE);
    stream.read_buf(buf).await
}

/// Why an exchange with an upstream produced no response head.
#[derive(Debug)]
enum LeanError {
    /// No connection: nothing was sent.
    Connect(String),
    /// The connection broke; `received` says whether any response bytes came back.
    Broken { received: bool, why: String },
    /// The upstream's response was not HTTP/1.1.
    Malformed(String),
}

impl std::fmt::Display for LeanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeanError::Connect(e) => write!(f, "cannot connect: {e}"),
            LeanError::Broken { why, .. } => write!(f, "{why}"),
            LeanError::Malformed(e) => write!(f, "malformed response: {e}"),
        }
    }
}

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// An incremental decoder of the chunked transfer coding (RFC 9112 §7.1), fed raw bytes. It
/// reports how many of them belong to the body and hands each chunk's data to a callback.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u32,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    EndLf,
    Done,
}

impl Chunked {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consume a prefix of `data` (all of it unless the body ends inside it) and return its
    /// length.
    fn feed(&mut self, data: &[u8], mut on_data: impl FnMut(&[u8])) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or(0);
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + u64::from(digit);
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = ChunkState::Extension,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err("bad chunk size"),
                },
                ChunkState::Extension => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => return Err("bare LF in chunk extension"),
                    _ => {
                        self.trailer_bytes += 1;
                        if self.trailer_bytes > MAX_HEAD {
                            return Err("chunk extension too long");
                        }
                    }
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err("expected LF after the chunk size");
                    }
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data(self.size)
                    };
                    self.size = 0;
                    self.digits = 0;
                }
                ChunkState::Data(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    on_data(&data[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left)
                    };
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err("chunk data longer than its size");
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err("expected LF after chunk data");
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    self.state = if b == b'\r' {
                        ChunkState::EndLf
                    } else {
                        ChunkState::Trailer
                    };
                }
                ChunkState::Trailer => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_HEAD {
                        return Err("trailer section too long");
                    }
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err("expected LF at the end of the chunked body");
                    }
                    self.state = ChunkState::Done;
                    return Ok(i + 1);
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

/// Where `part`, a slice httparse returned, lies in `base` (empty if it does not).
fn range_in(base: &[u8], part: &[u8]) -> Range<usize> {
    match (part.as_ptr() as usize).checked_sub(base.as_ptr() as usize) {
        Some(start) if start + part.len() <= base.len() => start..start + part.len(),
        _ => 0..0,
    }
}

/// A client's request head, as received.
struct RequestHead {
    raw: Bytes,
    method: Range<usize>,
    target: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

impl RequestHead {
    fn method(&self) -> &[u8] {
        &self.raw[self.method.clone()]
    }

    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

/// What the bytes at the front of a client connection hold.
enum Next {
    NeedMore,
    Lean(RequestHead),
    /// Something for hyper: the bytes stay where they are.
    Fallback,
    Reject(StatusCode, &'static str),
}

fn next_request(buf: &mut BytesMut) -> Next {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let length = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Next::Reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            )
        }
        Ok(httparse::Status::Partial) => return Next::NeedMore,
        Err(httparse::Error::TooManyHeaders) => {
            return Next::Reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            )
        }
        // "PRI * HTTP/2.0": the HTTP/2 connection preface.
        Err(httparse::Error::Version) => return Next::Fallback,
        Err(_) => return Next::Reject(StatusCode::BAD_REQUEST, "malformed request"),
    };
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Next::Reject(StatusCode::BAD_REQUEST, "malformed request");
    };
    if request.version != Some(1) || method == "CONNECT" || !target.starts_with('/') {
        return Next::Fallback;
    }
    let mut headers = Vec::with_capacity(request.headers.len());
    for field in request.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"expect") {
            return Next::Fallback;
        }
        headers.push((range_in(buf, name), range_in(buf, field.value)));
    }
    let method = range_in(buf, method.as_bytes());
    let target = range_in(buf, target.as_bytes());
    let raw = buf.split_to(length).freeze();
    Next::Lean(RequestHead {
        raw,
        method,
        target,
        headers,
    })
}

/// Whether a comma-separated header value lists `token`.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .next_back()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A message's `Content-Length`: every field (and list element) must agree.
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, ()> {
    let mut length = None;
    for value in values {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n: u64 = std::str::from_utf8(part)
                .map_err(|_| ())?
                .parse()
                .map_err(|_| ())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

fn request_framing(head: &RequestHead) -> Result<Framing, &'static str> {
    let mut chunked = None;
    for (name, value) in head.fields() {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = Some(last_coding_is_chunked(value));
        }
    }
    let length = content_length(
        head.fields()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
            .map(|(_, v)| v),
    )
    .map_err(|()| "invalid content-length")?;
    match (chunked, length) {
        (Some(_), Some(_)) => Err("both transfer-encoding and content-length"),
        (Some(true), None) => Ok(Framing::Chunked),
        (Some(false), None) => Err("unsupported transfer-encoding"),
        (None, Some(n)) => Ok(Framing::Length(n)),
        (None, None) => Ok(Framing::Empty),
    }
}

fn incoming_timeout(head: &RequestHead) -> Result<Option<Duration>, DeadlineError> {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let mut timeout: Option<Duration> = None;
    if let Some(value) = head.header(GRPC_TIMEOUT_HEADER) {
        timeout = Some(parse_grpc_timeout(&text(value))?);
    }
    if let Some(value) = head.header(TIMEOUT_HEADER) {
        let t = parse_timeout_millis(&text(value))?;
        timeout = Some(timeout.map_or(t, |g| g.min(t)));
    }
    Ok(timeout)
}

/// Read the request body: buffered, as the hyper path does, so that a retry can send it
/// again.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    framing: Framing,
    max: usize,
) -> Result<Bytes, (StatusCode, &'static str)> {
    let too_large = (StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    let cut = (StatusCode::BAD_REQUEST, "request body cut short");
    match framing {
        Framing::Empty | Framing::UntilClose => Ok(Bytes::new()),
        Framing::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= max)
                .ok_or(too_large)?;
            while buf.len() < n {
                buf.reserve(n - buf.len());
                if !matches!(stream.read_buf(buf).await, Ok(1..)) {
                    return Err(cut);
                }
            }
            Ok(buf.split_to(n).freeze())
        }
        Framing::Chunked => {
            let mut decoder = Chunked::default();
            let mut body = Vec::new();
            loop {
                let used = decoder
                    .feed(buf, |data| body.extend_from_slice(data))
                    .map_err(|why| (StatusCode::BAD_REQUEST, why))?;
                buf.advance(used);
                if body.len() > max {
                    return Err(too_large);
                }
                if decoder.done() {
                    return Ok(Bytes::from(body));
                }
                if !matches!(fill(stream, buf).await, Ok(1..)) {
                    return Err(cut);
                }
            }
        }
    }
}

/// A request ready to forward: everything of the upstream head but the per-attempt fields.
struct Forward {
    head: Vec<u8>,
    has_host: bool,
    has_length: bool,
    body: Bytes,
    grpc: bool,
    idempotent: bool,
    head_method: bool,
}

impl Forward {
    fn new(head: &RequestHead, framing: Framing, body: Bytes) -> Self {
        let mut out = Vec::with_capacity(head.raw.len() + 96);
        out.extend_from_slice(head.method());
        out.push(b' ');
        out.extend_from_slice(&head.raw[head.target.clone()]);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut has_host = false;
        let mut grpc = false;
        for (name, value) in head.fields() {
            let skip = HOP_BY_HOP
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
                || name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(TIMEOUT_HEADER.as_bytes())
                || name.eq_ignore_ascii_case(GRPC_TIMEOUT_HEADER.as_bytes());
            if name.eq_ignore_ascii_case(GRPC_TIMEOUT_HEADER.as_bytes())
                || (name.eq_ignore_ascii_case(b"content-type")
                    && value.starts_with(b"application/grpc"))
            {
                grpc = true;
            }
            if skip {
                continue;
            }
            has_host |= name.eq_ignore_ascii_case(b"host");
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        let method = hyper::Method::from_bytes(head.method()).unwrap_or(hyper::Method::POST);
        Forward {
            head: out,
            has_host,
            has_length: framing != Framing::Empty || !body.is_empty(),
            body,
            grpc,
            idempotent: is_idempotent(&method),
            head_method: method == hyper::Method::HEAD,
        }
    }

    /// The upstream head for one attempt: the deadline left, and Host if the client sent
    /// none.
    fn encode(&self, attempt: &Attempt, remaining: Duration) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + 96 + self.coalesced_body().len());
        out.extend_from_slice(&self.head);
        if !self.has_host {
            if let Some(authority) = &attempt.authority {
                out.extend_from_slice(b"host: ");
                out.extend_from_slice(authority.as_str().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        let millis = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
        let _ = write!(out, "{TIMEOUT_HEADER}: {millis}\r\n");
        if self.grpc {
            let _ = write!(
                out,
                "{GRPC_TIMEOUT_HEADER}: {}\r\n",
                format_grpc_timeout(remaining)
            );
        }
        if self.has_length {
            let _ = write!(out, "content-length: {}\r\n", self.body.len());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.coalesced_body());
        out
    }

    fn coalesced_body(&self) -> &[u8] {
        if self.body.len() <= COALESCE {
            &self.body
        } else {
            &[]
        }
    }

    /// The body bytes that `encode` did not include.
    fn separate_body(&self) -> &[u8] {
        if self.body.len() <= COALESCE {
            &[]
        } else {
            &self.body
        }
    }
}

/// An upstream's response head.
struct ResponseHead {
    raw: Bytes,
    status: u16,
    reason: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    framing: Framing,
    keep_alive: bool,
}

impl ResponseHead {
    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }
}

/// A response head, with its connection holding the body.
struct Exchange {
    conn: UpConn,
    head: ResponseHead,
}

impl Exchange {
    /// Give up on this response: its connection goes back to the pool if the body has
    /// already arrived whole, and is closed otherwise.
    fn discard(mut self) {
        let whole = match self.head.framing {
            Framing::Empty => Some(0),
            Framing::Length(n) => usize::try_from(n)
                .ok()
                .filter(|&n| n == self.conn.buf.len()),
            Framing::Chunked | Framing::UntilClose => None,
        };
        if let (Some(n), true) = (whole, self.head.keep_alive) {
            self.conn.buf.advance(n);
            put_idle(self.conn);
        }
    }
}

/// Parse a response head at the front of `buf`; `None` needs more bytes. Interim 1xx
/// responses are skipped.
fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, LeanError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        let length = match response.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(LeanError::Malformed("response head too large".into()))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(LeanError::Malformed(e.to_string())),
        };
        let status = response.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            buf.advance(length);
            continue;
        }
        if !(200..1000).contains(&status) {
            return Err(LeanError::Malformed(format!("unexpected status {status}")));
        }
        let base: &[u8] = buf;
        let mut headers = Vec::with_capacity(response.headers.len());
        let mut chunked = None;
        let mut close = response.version == Some(0);
        let mut lengths = Vec::new();
        for field in response.headers.iter() {
            let name = field.name.as_bytes();
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = Some(last_coding_is_chunked(field.value));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                lengths.push(field.value);
            } else if name.eq_ignore_ascii_case(b"connection") {
                if has_token(field.value, b"close") {
                    close = true;
                } else if has_token(field.value, b"keep-alive") {
                    close = false;
                }
            }
            headers.push((range_in(base, name), range_in(base, field.value)));
        }
        let reason = range_in(base, response.reason.unwrap_or("").as_bytes());
        let length_value = content_length(lengths.into_iter())
            .map_err(|()| LeanError::Malformed("invalid content-length".into()))?;
        let framing = if head_request || status == 204 || status == 304 {
            Framing::Empty
        } else {
            match (chunked, length_value) {
                (Some(true), _) => Framing::Chunked,
                (Some(false), _) | (None, None) => Framing::UntilClose,
                (None, Some(n)) => Framing::Length(n),
            }
        };
        let raw = buf.split_to(length).freeze();
        return Ok(Some(ResponseHead {
            raw,
            status,
            reason,
            headers,
            framing,
            keep_alive: !close && framing != Framing::UntilClose,
        }));
    }
}

/// Send `forward` on `conn` and read the response head.
async fn send_on(
    conn: &mut UpConn,
    head: &[u8],
    body: &[u8],
    head_request: bool,
) -> Result<ResponseHead, LeanError> {
    let broken = |received: bool, e: std::io::Error| LeanError::Broken {
        received,
        why: e.to_string(),
    };
    conn.stream
        .write_all(head)
        .await
        .map_err(|e| broken(false, e))?;
    if !body.is_empty() {
        conn.stream
            .write_all(body)
            .await
            .map_err(|e| broken(false, e))?;
    }
    loop {
        if !conn.buf.is_empty() {
            if let Some(response) = parse_response(&mut conn.buf, head_request)? {
                return Ok(response);
            }
        }
        match fill(&mut conn.stream, &mut conn.buf).await {
            Ok(0) => {
                return Err(LeanError::Broken {
                    received: !conn.buf.is_empty(),
                    why: "the upstream closed the connection before answering".into(),
                })
            }
            Ok(_) => {}
            Err(e) => return Err(broken(!conn.buf.is_empty(), e)),
        }
    }
}

/// One request and response head on a pooled connection to `address`, or a new one. A
/// pooled connection that the upstream closed just as it was reused (no byte of an answer)
/// is replaced by a new connection once, for a request that may be sent again.
async fn exchange(
    address: SocketAddr,
    connect_timeout: Duration,
    forward: &Forward,
    head: &[u8],
) -> Result<Exchange, LeanError> {
    let body = forward.separate_body();
    if let Some(mut conn) = take_idle(address) {
        match send_on(&mut conn, head, body, forward.head_method).await {
            Ok(head) => return Ok(Exchange { conn, head }),
            Err(LeanError::Broken {
                received: false, ..
            }) if forward.idempotent => {}
            Err(e) => return Err(e),
        }
    }
    let mut conn = connect(address, connect_timeout).await?;
    let head = send_on(&mut conn, head, body, forward.head_method).await?;
    Ok(Exchange { conn, head })
}

/// What one attempt produced (the lean path's `AttemptResult`).
// Moved a few times per request; boxing the exchange would allocate on every request.
#[allow(clippy::large_enum_variant)]
enum LeanResult {
    Done(Exchange),
    Retriable(Option<Exchange>, String),
    Fatal(StatusCode, String),
}

/// What goes back to the client.
#[allow(clippy::large_enum_variant)]
enum Reply {
    Upstream(Exchange, Option<HeaderValue>, u32),
    Text(StatusCode, String),
}

impl Service {
    async fn lean_try(
        &self,
        attempt: &Attempt,
        forward: &Forward,
        deadline: Deadline,
        first: bool,
    ) -> LeanResult {
        let remaining = deadline.remaining(self.clock.now());
        let per_try = self
            .config
            .retry
            .per_try_timeout_ms
            .map_or(remaining, |ms| Duration::from_millis(ms).min(remaining));
        let head = forward.encode(attempt, remaining);
        let connect_timeout = Duration::from_millis(self.config.timeout_ms.min(2000));
        let result = tokio::time::timeout(
            per_try,
            exchange(attempt.address, connect_timeout, forward, &head),
        )
        .await;
        match result {
            Ok(Ok(exchange)) if exchange.head.status >= 500 => {
                self.finish(attempt, Outcome::Failure, first);
                let why = format!("{} answered {}", attempt.id, exchange.head.status);
                if forward.idempotent {
                    LeanResult::Retriable(Some(exchange), why)
                } else {
                    LeanResult::Done(exchange)
                }
            }
            Ok(Ok(exchange)) => {
                self.finish(attempt, Outcome::Success, first);
                LeanResult::Done(exchange)
            }
            Ok(Err(e)) => {
                self.finish(attempt, Outcome::Failure, first);
                let why = format!("{}: {e}", attempt.id);
                // A failed connect never sent the request, so any method may be retried.
                if matches!(e, LeanError::Connect(_)) || forward.idempotent {
                    LeanResult::Retriable(None, why)
                } else {
                    LeanResult::Fatal(StatusCode::BAD_GATEWAY, why)
                }
            }
            Err(_) => {
                self.finish(attempt, Outcome::Failure, first);
                let why = format!("{} did not answer within {per_try:?}", attempt.id);
                if per_try < remaining && forward.idempotent {
                    LeanResult::Retriable(None, why)
                } else {
                    LeanResult::Fatal(StatusCode::GATEWAY_TIMEOUT, why)
                }
            }
        }
    }

    /// Attempts, retries and their pauses, as `handle_inner` makes them.
    async fn lean_forward(&self, forward: &Forward, deadline: Deadline, key: u64) -> Reply {
        let mut tried: Vec<usize> = Vec::new();
        let mut last_failure: Option<Exchange> = None;
        let mut last_reason = String::from("no attempt was made");
        let max_retries = self.config.retry.max_retries;
        for retry in 0..=max_retries {
            if retry > 0 && !self.pause_before_retry(retry, deadline).await {
                break;
            }
            if deadline.expired(self.clock.now()) {
                if let Some(old) = last_failure.take() {
                    old.discard();
                }
                return Reply::Text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("deadline passed; last: {last_reason}\n"),
                );
            }
            let Some(attempt) = self.acquire(key, &tried) else {
                if retry == 0 {
                    self.metrics.no_upstream.increment(1);
                    return Reply::Text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("no healthy upstream for {}\n", self.config.name),
                    );
                }
                break;
            };
            tried.push(attempt.index);
            match self.lean_try(&attempt, forward, deadline, retry == 0).await {
                LeanResult::Done(exchange) => {
                    if let Some(old) = last_failure.take() {
                        old.discard();
                    }
                    return Reply::Upstream(exchange, attempt.header.clone(), retry + 1);
                }
                LeanResult::Retriable(exchange, why) => {
                    last_reason = why;
                    if let Some(exchange) = exchange {
                        if let Some(old) = last_failure.replace(exchange) {
                            old.discard();
                        }
                    }
                }
                LeanResult::Fatal(status, why) => {
                    if let Some(old) = last_failure.take() {
                        old.discard();
                    }
                    return Reply::Text(status, format!("{why}\n"));
                }
            }
        }
        match last_failure {
            Some(exchange) => Reply::Upstream(exchange, None, max_retries + 1),
            None => Reply::Text(
                StatusCode::BAD_GATEWAY,
                format!("upstream failed: {last_reason}\n"),
            ),
        }
    }

    /// Serve one request whose head has been read; false if the client connection must
    /// close.
    async fn lean_request(
        &self,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        head: RequestHead,
        client: SocketAddr,
    ) -> bool {
        self.on_request();
        let received = self.clock.now();
        let close = head
            .header("connection")
            .is_some_and(|v| has_token(v, b"close"));
        let framing = match request_framing(&head) {
            Ok(framing) => framing,
            Err(why) => {
                let _ = write_text(stream, StatusCode::BAD_REQUEST, why, true).await;
                return false;
            }
        };
        let body = match read_body(stream, buf, framing, self.config.max_body_bytes).await {
            Ok(body) => body,
            Err((status, why)) => {
                let text = format!("cannot read the request body: {why}\n");
                let _ = write_text(stream, status, &text, true).await;
                return false;
            }
        };
        let timeout = match incoming_timeout(&head) {
            Ok(timeout) => timeout,
            Err(e) => {
                let text = format!("{e}\n");
                return write_text(stream, StatusCode::BAD_REQUEST, &text, close)
                    .await
                    .is_ok()
                    && !close;
            }
        };
        let deadline = Deadline::on_receive(
            received,
            timeout,
            Duration::from_millis(self.config.timeout_ms),
        );
        let key = match &self.config.hash_header {
            _ if !self.strategy.uses_key() => 0,
            Some(name) => head.header(name).map_or(0, hash_bytes),
            None => hash_str(&client.ip().to_string(), 0),
        };
        let forward = Forward::new(&head, framing, body);
        let reply = self.lean_forward(&forward, deadline, key).await;
        let status = match &reply {
            Reply::Upstream(exchange, ..) => exchange.head.status,
            Reply::Text(status, _) => status.as_u16(),
        };
        if status >= 500 {
            self.metrics.failed.increment(1);
        }
        match reply {
            Reply::Text(status, text) => {
                write_text(stream, status, &text, close).await.is_ok() && !close
            }
            Reply::Upstream(exchange, upstream, attempts) => {
                relay(stream, exchange, upstream, attempts, close)
                    .await
                    .unwrap_or(false)
            }
        }
    }
}

/// The proxy's own answer.
async fn write_text(
    stream: &mut TcpStream,
    status: StatusCode,
    text: &str,
    close: bool,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(128 + text.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        text.len(),
        if close { "connection: close\r\n" } else { "" }
    );
    out.extend_from_slice(text.as_bytes());
    stream.write_all(&out).await
}

/// Send the response head and stream its body from the upstream to the client. `Ok(true)`
/// if the client connection may carry another request.
async fn relay(
    stream: &mut TcpStream,
    exchange: Exchange,
    upstream: Option<HeaderValue>,
    attempts: u32,
    close: bool,
) -> std::io::Result<bool> {
    let Exchange { mut conn, head } = exchange;
    let mut out = Vec::with_capacity(head.raw.len() + 128 + conn.buf.len().min(COALESCE));
    let _ = write!(out, "HTTP/1.1 {} ", head.status);
    out.extend_from_slice(&head.raw[head.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    for (name, value) in head.fields() {
        let skip = HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || (name.eq_ignore_ascii_case(b"content-length") && head.framing != Framing::Empty)
            || name.eq_ignore_ascii_case(b"x-synod-upstream")
            || name.eq_ignore_ascii_case(b"x-synod-attempts");
        if skip {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(upstream) = upstream {
        out.extend_from_slice(b"x-synod-upstream: ");
        out.extend_from_slice(upstream.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(out, "x-synod-attempts: {attempts}\r\n");
    match head.framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::UntilClose => out.extend_from_slice(b"connection: close\r\n"),
    }
    if close && head.framing != Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let cut = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "upstream body cut short");
    let bad = |why: &'static str| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    match head.framing {
        Framing::Empty => stream.write_all(&out).await?,
        Framing::Length(n) => {
            let mut left = n;
            let mut pending = out;
            loop {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(conn.buf.len());
                if pending.is_empty() {
                    stream.write_all(&conn.buf[..take]).await?;
                } else {
                    pending.extend_from_slice(&conn.buf[..take]);
                    stream.write_all(&pending).await?;
                    pending = Vec::new();
                }
                conn.buf.advance(take);
                left -= take as u64;
                if left == 0 {
                    break;
                }
                if fill(&mut conn.stream, &mut conn.buf).await? == 0 {
                    return Err(cut());
                }
            }
        }
        Framing::Chunked => {
            let mut decoder = Chunked::default();
            let mut pending = out;
            loop {
                let used = decoder.feed(&conn.buf, |_| {}).map_err(bad)?;
                if pending.is_empty() {
                    stream.write_all(&conn.buf[..used]).await?;
                } else {
                    pending.extend_from_slice(&conn.buf[..used]);
                    stream.write_all(&pending).await?;
                    pending = Vec::new();
                }
                conn.buf.advance(used);
                if decoder.done() {
                    break;
                }
                if fill(&mut conn.stream, &mut conn.buf).await? == 0 {
                    return Err(cut());
                }
            }
        }
        Framing::UntilClose => {
            out.extend_from_slice(&conn.buf);
            conn.buf.clear();
            stream.write_all(&out).await?;
            while fill(&mut conn.stream, &mut conn.buf).await? > 0 {
                stream.write_all(&conn.buf).await?;
                conn.buf.clear();
            }
            return Ok(false);
        }
    }
    if head.keep_alive {
        put_idle(conn);
    }
    Ok(!close)
}

/// Serve a client connection on the lean path, handing it to hyper (with the bytes read so
/// far) when a request needs what only hyper does.
pub(super) async fn serve(service: Arc<Service>, mut stream: TcpStream, client: SocketAddr) {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    loop {
        let head = loop {
            if !buf.is_empty() {
                match next_request(&mut buf) {
                    Next::Lean(head) => break head,
                    Next::NeedMore => {}
                    Next::Fallback => {
                        let io = Prefixed {
                            prefix: buf.freeze(),
                            stream,
                        };
                        serve_hyper(service, io, client).await;
                        return;
                    }
                    Next::Reject(status, why) => {
                        let text = format!("{why}\n");
                        let _ = write_text(&mut stream, status, &text, true).await;
                        return;
                    }
                }
            }
            match fill(&mut stream, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        if !service
            .lean_request(&mut stream, &mut buf, head, client)
            .await
        {
            return;
        }
    }
}

/// A client connection with bytes already read from it, for hyper.
struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8]) -> Result<(usize, Vec<u8>, bool), &'static str> {
        let mut decoder = Chunked::default();
        let mut body = Vec::new();
        let used = decoder.feed(input, |d| body.extend_from_slice(d))?;
        Ok((used, body, decoder.done()))
    }

    #[test]
    fn chunked_decodes_with_extensions_and_trailers() {
        let input = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        let (used, body, done) = decode(input).unwrap();
        assert!(done);
        assert_eq!(body, b"hello world");
        assert_eq!(&input[used..], b"NEXT");
    }

    #[test]
    fn chunked_byte_at_a_time_matches_whole() {
        let input = b"a\r\n0123456789\r\n1\r\nX\r\n0\r\n\r\n";
        let mut decoder = Chunked::default();
        let mut body = Vec::new();
        for b in input.iter() {
            assert_eq!(decoder.feed(&[*b], |d| body.extend_from_slice(d)), Ok(1));
        }
        assert!(decoder.done());
        assert_eq!(body, b"0123456789X");
    }

    #[test]
    fn chunked_rejects_garbage() {
        assert!(decode(b"zz\r\n").is_err());
        assert!(decode(b"3\r\nabcd\r\n").is_err());
        assert!(decode(b"\r\n").is_err());
        assert!(decode(b"ffffffffffffffffff\r\n").is_err());
    }

    #[test]
    fn content_length_must_agree() {
        let one: [&[u8]; 1] = [b"12"];
        assert_eq!(content_length(one.into_iter()), Ok(Some(12)));
        let same: [&[u8]; 2] = [b"12", b"12, 12"];
        assert_eq!(content_length(same.into_iter()), Ok(Some(12)));
        let differ: [&[u8]; 2] = [b"12", b"13"];
        assert!(content_length(differ.into_iter()).is_err());
        let signed: [&[u8]; 1] = [b"+12"];
        assert!(content_length(signed.into_iter()).is_err());
    }

    #[test]
    fn response_framing() {
        let parse = |text: &[u8], head: bool| {
            let mut buf = BytesMut::from(text);
            parse_response(&mut buf, head).map(|r| r.map(|r| (r.status, r.framing, r.keep_alive)))
        };
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", false).unwrap(),
            Some((200, Framing::Length(3), true))
        );
        assert_eq!(
            parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", false).unwrap(),
            Some((200, Framing::Chunked, true))
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap(),
            Some((200, Framing::UntilClose, false))
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true).unwrap(),
            Some((200, Framing::Empty, true))
        );
        assert_eq!(
            parse(b"HTTP/1.0 204 No Content\r\n\r\n", false).unwrap(),
            Some((204, Framing::Empty, false))
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-le", false).unwrap(),
            None
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false).is_err());
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
        assert!(parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
    }

    #[test]
    fn requests_hyper_must_serve_fall_back() {
        let next = |text: &[u8]| next_request(&mut BytesMut::from(text));
        assert!(matches!(
            next(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"),
            Next::Lean(_)
        ));
        assert!(matches!(
            next(b"GET / HTTP/1.1\r\nhost: a\r\n"),
            Next::NeedMore
        ));
        assert!(matches!(
            next(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Next::Fallback
        ));
        assert!(matches!(next(b"GET / HTTP/1.0\r\n\r\n"), Next::Fallback));
        assert!(matches!(
            next(b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n"),
            Next::Fallback
        ));
        assert!(matches!(
            next(b"POST / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n"),
            Next::Fallback
        ));
        assert!(matches!(
            next(b"GET http://a/ HTTP/1.1\r\n\r\n"),
            Next::Fallback
        ));
        assert!(matches!(
            next(b"G\x01T / HTTP/1.1\r\n\r\n"),
            Next::Reject(StatusCode::BAD_REQUEST, _)
        ));
    }
}

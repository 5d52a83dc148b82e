//! WAL record framing and the record payloads.
//!
//! Frame: `len: u32 LE | crc: u32 LE | type: u8 | payload[len]`, `crc` = CRC32C over the
//! four length bytes, the type byte and the payload. Payloads (all integers little-endian):
//!
//! | type | record   | payload                                                      |
//! |------|----------|--------------------------------------------------------------|
//! | 1    | marker   | 8 magic bytes, batch number `u64`                            |
//! | 2    | header   | segment `u64`, first `u64`, next `u64`, count `u64`, then per pair: key length `u32`, key, value length `u32`, value |
//! | 3    | append   | log index `u64`, record bytes                                |
//! | 4    | truncate | first removed index `u64`                                    |
//! | 5    | compact  | new first index `u64`                                        |
//! | 6    | put      | key length `u32`, key, value                                 |
//! | 7    | delete   | key                                                          |

use super::MAX_RECORD_BYTES;
use std::collections::BTreeMap;
use synod_core::LogIndex;

/// Bytes before the payload: length, CRC, type.
pub(crate) const FRAME_HEADER_LEN: usize = 9;

/// The largest payload a frame may declare: a user record of [`MAX_RECORD_BYTES`] plus room
/// for the fixed fields in front of it. A larger length field is corruption.
pub(crate) const MAX_PAYLOAD_LEN: usize = MAX_RECORD_BYTES + 64;

/// Starts every batch marker's payload. Chosen to be unlikely in ordinary data; on open the
/// tail of the last segment is searched for it (see `wal::find_marker_after`).
pub(crate) const MARKER_MAGIC: [u8; 8] = [0xb7, 0x5e, 0x1a, 0x0d, b'W', b'A', b'L', 0x9c];

/// Payload length of a batch marker.
pub(crate) const MARKER_PAYLOAD_LEN: usize = 16;

/// Whole frame length of a batch marker.
pub(crate) const MARKER_FRAME_LEN: usize = FRAME_HEADER_LEN + MARKER_PAYLOAD_LEN;

/// The record types. Zero is not one, so zero-filled space never parses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Kind {
    Marker = 1,
    Header = 2,
    Append = 3,
    Truncate = 4,
    Compact = 5,
    Put = 6,
    Delete = 7,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Marker,
            2 => Kind::Header,
            3 => Kind::Append,
            4 => Kind::Truncate,
            5 => Kind::Compact,
            6 => Kind::Put,
            7 => Kind::Delete,
            _ => return None,
        })
    }
}

/// The fixed-size front of a frame, as read from disk (not yet checked).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameHeader {
    pub(crate) len: u32,
    crc: u32,
    kind: u8,
}

impl FrameHeader {
    pub(crate) fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            len: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            crc: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            kind: bytes[8],
        }
    }

    /// Check the payload against the CRC and the type byte.
    pub(crate) fn check(&self, payload: &[u8]) -> Result<Kind, String> {
        let actual = frame_crc(self.len, self.kind, &[payload]);
        if actual != self.crc {
            return Err(format!(
                "checksum mismatch (stored {:#010x}, computed {actual:#010x})",
                self.crc
            ));
        }
        Kind::from_byte(self.kind).ok_or_else(|| format!("unknown record type {}", self.kind))
    }
}

fn frame_crc(len: u32, kind: u8, parts: &[&[u8]]) -> u32 {
    let mut crc = crc32c::crc32c(&len.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &[kind]);
    for part in parts {
        crc = crc32c::crc32c_append(crc, part);
    }
    crc
}

/// Append one frame whose payload is the concatenation of `parts`. The caller keeps the
/// payload within [`MAX_PAYLOAD_LEN`].
pub(crate) fn encode_frame(out: &mut Vec<u8>, kind: Kind, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    debug_assert!(len <= MAX_PAYLOAD_LEN);
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let crc = frame_crc(len, kind as u8, parts);
    out.reserve(FRAME_HEADER_LEN + len as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind as u8);
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Payload length of a frame made of `parts`.
pub(crate) fn payload_len(parts: &[&[u8]]) -> usize {
    parts.iter().map(|p| p.len()).sum()
}

pub(crate) fn encode_marker(out: &mut Vec<u8>, batch: u64) {
    encode_frame(out, Kind::Marker, &[&MARKER_MAGIC, &batch.to_le_bytes()]);
}

/// The state a segment starts from: every key-value pair and the log bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) segment: u64,
    pub(crate) first: LogIndex,
    pub(crate) next: LogIndex,
    pub(crate) kv: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Encode a segment header's payload.
pub(crate) fn header_payload(
    segment: u64,
    first: LogIndex,
    next: LogIndex,
    kv: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Vec<u8> {
    let size: usize = 32 + kv.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&segment.to_le_bytes());
    out.extend_from_slice(&first.0.to_le_bytes());
    out.extend_from_slice(&next.0.to_le_bytes());
    out.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (key, value) in kv {
        out.extend_from_slice(&len_u32(key.len()).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&len_u32(value.len()).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Lengths written are bounded by [`MAX_PAYLOAD_LEN`] before encoding; saturate rather than
/// wrap if that check were ever missed, so the record fails to decode instead of misparsing.
pub(crate) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// A decoded record, borrowing from the payload.
#[derive(Debug)]
pub(crate) enum Record<'a> {
    Marker { batch: u64 },
    Header(SegmentHeader),
    Append { index: LogIndex, data: &'a [u8] },
    Truncate { from: LogIndex },
    Compact { before: LogIndex },
    Put { key: &'a [u8], value: &'a [u8] },
    Delete { key: &'a [u8] },
}

/// Decode a payload whose frame checked out. Every length is checked against what is left.
pub(crate) fn decode(kind: Kind, payload: &[u8]) -> Result<Record<'_>, String> {
    let mut cur = Cursor { buf: payload };
    let record = match kind {
        Kind::Marker => {
            if cur.take(8)? != MARKER_MAGIC {
                return Err("batch marker without its magic bytes".into());
            }
            Record::Marker { batch: cur.u64()? }
        }
        Kind::Header => {
            let segment = cur.u64()?;
            let first = LogIndex(cur.u64()?);
            let next = LogIndex(cur.u64()?);
            if next < first {
                return Err(format!(
                    "segment header has next index {next} before first {first}"
                ));
            }
            let count = cur.u64()?;
            let mut kv = BTreeMap::new();
            for _ in 0..count {
                let key_len = cur.u32()? as usize;
                let key = cur.take(key_len)?.to_vec();
                let value_len = cur.u32()? as usize;
                let value = cur.take(value_len)?.to_vec();
                kv.insert(key, value);
            }
            Record::Header(SegmentHeader {
                segment,
                first,
                next,
                kv,
            })
        }
        Kind::Append => {
            let index = LogIndex(cur.u64()?);
            let data = cur.rest();
            return Ok(Record::Append { index, data });
        }
        Kind::Truncate => Record::Truncate {
            from: LogIndex(cur.u64()?),
        },
        Kind::Compact => Record::Compact {
            before: LogIndex(cur.u64()?),
        },
        Kind::Put => {
            let key_len = cur.u32()? as usize;
            let key = cur.take(key_len)?;
            return Ok(Record::Put {
                key,
                value: cur.rest(),
            });
        }
        Kind::Delete => return Ok(Record::Delete { key: cur.rest() }),
    };
    if !cur.buf.is_empty() {
        return Err(format!(
            "{} trailing bytes in a {kind:?} record",
            cur.buf.len()
        ));
    }
    Ok(record)
}

/// A bounded reader over a payload: every read checks what is left.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.buf.len() {
            return Err(format!(
                "field of {n} bytes but only {} left in the record",
                self.buf.len()
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: Kind, parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, kind, parts);
        out
    }

    fn parse(bytes: &[u8]) -> Result<Kind, String> {
        let mut head = [0u8; FRAME_HEADER_LEN];
        head.copy_from_slice(&bytes[..FRAME_HEADER_LEN]);
        FrameHeader::parse(&head).check(&bytes[FRAME_HEADER_LEN..])
    }

    #[test]
    fn frames_round_trip_and_every_flipped_bit_is_caught() {
        let bytes = frame(Kind::Append, &[&7u64.to_le_bytes(), b"hello"]);
        assert_eq!(parse(&bytes), Ok(Kind::Append));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                // A damaged length fails too: the CRC covers the length bytes.
                assert!(
                    parse(&damaged).is_err(),
                    "flip of bit {bit} in byte {i} passed"
                );
            }
        }
    }

    #[test]
    fn zero_filled_space_is_not_a_record() {
        let zeros = [0u8; FRAME_HEADER_LEN];
        assert!(parse(&zeros).is_err());
    }

    #[test]
    fn header_round_trips_and_truncated_headers_are_errors() {
        let mut kv = BTreeMap::new();
        kv.insert(b"term".to_vec(), b"3".to_vec());
        kv.insert(b"vote".to_vec(), Vec::new());
        let payload = header_payload(4, LogIndex(10), LogIndex(12), &kv);
        match decode(Kind::Header, &payload) {
            Ok(Record::Header(h)) => {
                assert_eq!(
                    h,
                    SegmentHeader {
                        segment: 4,
                        first: LogIndex(10),
                        next: LogIndex(12),
                        kv
                    }
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        for cut in 0..payload.len() {
            assert!(
                decode(Kind::Header, &payload[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn huge_declared_counts_fail_without_allocating() {
        let mut payload = Vec::new();
        for v in [1u64, 1, 1, u64::MAX] {
            payload.extend_from_slice(&v.to_le_bytes());
        }
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(Kind::Header, &payload).is_err());
    }
}

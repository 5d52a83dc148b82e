//! The one encoding synod uses for messages and stored state: postcard, with a size bound.
//!
//! Anything decoded here may come from the network or a damaged disk, so decoding never
//! panics: it returns a [`CodecError`] that names what was wrong.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use std::cell::Cell;
use thiserror::Error;

/// The largest message or record [`decode`] accepts: 64 MiB. Larger payloads are streamed
/// in chunks by the driver, never decoded whole.
pub const MAX_DECODE_BYTES: usize = 64 << 20;

/// How deeply a type may contain itself in one decoded value (an etcd Txn nested in a
/// Txn, a message wrapped in a sequencing envelope). postcard decodes by recursion, so a
/// few hundred kilobytes of nesting from a peer would otherwise overflow the stack and
/// abort the process. gRPC's own limit (prost: 100 messages) allows about 50 nested Txns.
pub const MAX_NESTING: usize = 64;

thread_local! {
    /// How many [`nested`] fields the value being decoded on this thread is inside.
    static NESTING: Cell<usize> = const { Cell::new(0) };
}

/// serde `deserialize_with` for every field through which a type contains itself: it
/// refuses a value nested more than [`MAX_NESTING`] deep, so decoding stays within the
/// stack whatever a peer sends.
pub fn nested<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    /// Leaves the level on every way out, error or not.
    struct Level;
    impl Drop for Level {
        fn drop(&mut self) {
            NESTING.with(|n| n.set(n.get().saturating_sub(1)));
        }
    }
    let depth = NESTING.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    let _level = Level;
    if depth > MAX_NESTING {
        return Err(D::Error::custom(format!(
            "nested more than {MAX_NESTING} levels deep"
        )));
    }
    T::deserialize(deserializer)
}

/// Why bytes could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    /// The input is larger than the bound the caller allows.
    #[error("input is {len} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The bound that was exceeded.
        limit: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// The value decoded but bytes were left over, so the input is not what was expected.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
}

/// Encode a value. Encoding to memory cannot fail for the types synod uses; a type that
/// serde cannot represent (a map with non-string keys is fine in postcard) is a programming
/// error caught by the codec round-trip tests.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    match postcard::to_stdvec(value) {
        Ok(bytes) => bytes,
        Err(e) => panic!("synod codec: a value failed to encode ({e}); this is a bug"),
    }
}

/// Decode a value of at most [`MAX_DECODE_BYTES`], rejecting trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_bounded(bytes, MAX_DECODE_BYTES)
}

/// Decode a value of at most `limit` bytes, rejecting trailing bytes.
pub fn decode_bounded<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping(u64),
        Data { key: String, value: Vec<u8> },
    }

    #[test]
    fn round_trip() {
        for m in [
            Msg::Ping(u64::MAX),
            Msg::Data {
                key: "k".into(),
                value: vec![1, 2, 3],
            },
        ] {
            assert_eq!(decode::<Msg>(&encode(&m)), Ok(m));
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(decode::<Msg>(&[9]), Err(CodecError::Malformed(_))));
        assert!(matches!(decode::<Msg>(&[]), Err(CodecError::Malformed(_))));
        let mut bytes = encode(&Msg::Ping(1));
        bytes.push(0);
        assert_eq!(decode::<Msg>(&bytes), Err(CodecError::TrailingBytes(1)));
        assert!(matches!(
            decode_bounded::<Msg>(&[0; 10], 4),
            Err(CodecError::TooLarge { len: 10, limit: 4 })
        ));
        // A length prefix that claims far more than is there must not allocate or panic.
        let huge = [1u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode::<Msg>(&huge).is_err());
    }

    /// A list that may hold lists, as an etcd Txn holds Txns.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Tree {
        #[serde(deserialize_with = "nested")]
        children: Vec<Tree>,
    }

    fn chain(depth: usize) -> Vec<u8> {
        // Each level is a one-element list; the innermost is empty.
        let mut bytes = vec![1u8; depth];
        bytes.push(0);
        bytes
    }

    #[test]
    fn nesting_is_bounded_and_the_bound_resets() {
        let ok = decode::<Tree>(&chain(MAX_NESTING - 1)).expect("within the bound");
        assert_eq!(encode(&ok), chain(MAX_NESTING - 1));
        // A million levels would overflow any thread's stack without the bound.
        // (postcard drops serde's custom message, so the error says only "malformed".)
        assert!(matches!(
            decode::<Tree>(&chain(1_000_000)),
            Err(CodecError::Malformed(_))
        ));
        // The failed decode left the level count at zero, so the same depth decodes again.
        assert!(decode::<Tree>(&chain(MAX_NESTING - 1)).is_ok());
        assert!(decode::<Tree>(&chain(MAX_NESTING + 1)).is_err());
    }
}

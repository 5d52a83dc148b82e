//! The one encoding synod uses for messages and stored state: postcard, with a size bound.
//!
//! Anything decoded here may come from the network or a damaged disk, so decoding never
//! panics: it returns a [`CodecError`] that names what was wrong.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

/// The largest message or record [`decode`] accepts: 64 MiB. Larger payloads are streamed
/// in chunks by the driver, never decoded whole.
pub const MAX_DECODE_BYTES: usize = 64 << 20;

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
}

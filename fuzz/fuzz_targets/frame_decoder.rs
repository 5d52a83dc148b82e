//! Arbitrary bytes into the transport's frame decoders.
//!
//! Checks that neither decoder panics, that the pure decoder and the streaming codec agree
//! however the input is cut into reads, and that every frame that decodes re-encodes
//! within the same bound to a frame that decodes to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use synod_runtime::transport::{
    decode_frame, decode_handshake, encode_frame, FrameCodec, DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the bound and how the stream is cut into reads.
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let max = if control & 0x80 == 0 {
        HANDSHAKE_MAX_FRAME
    } else {
        DEFAULT_MAX_FRAME
    };

    let mut reference = Vec::new();
    let mut rest = bytes;
    while let Ok(Some((frame, used))) = decode_frame(rest, max) {
        assert!(used > 0 && used <= rest.len());
        let mut again = BytesMut::new();
        encode_frame(&frame, max, &mut again).expect("a decoded frame fits its bound");
        let (round, n) = decode_frame(&again, max)
            .expect("a re-encoded frame decodes")
            .expect("and is complete");
        assert_eq!(round, frame);
        assert_eq!(n, again.len());
        reference.push(frame);
        rest = &rest[used..];
    }

    let step = usize::from(control & 0x7f) + 1;
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut streamed = Vec::new();
    'feed: for piece in bytes.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => streamed.push(frame),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    assert_eq!(streamed, reference);

    let _ = decode_handshake(bytes);
});

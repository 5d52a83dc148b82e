//! Arbitrary bytes into the handshake decoder, the first thing an unauthenticated peer
//! reaches (in plaintext mode) or an authenticated one (under TLS).
#![no_main]

use libfuzzer_sys::fuzz_target;
use synod_runtime::transport::{decode_handshake, HANDSHAKE_MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((hello, used))) = decode_handshake(data) {
        assert!(used <= data.len() && used <= HANDSHAKE_MAX_FRAME + 4);
        assert!(hello.cluster_id.len() <= 255);
    }
});

//! Arbitrary bytes into the decoder of every message type a node accepts from its peers
//! (`synod_server::wire`): an error is fine, a panic, an abort or a value that does not
//! survive its own re-encoding is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = synod_server::wire::check_every_peer_decoder(data) {
        panic!("{e}");
    }
});

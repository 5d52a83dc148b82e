//! Every message type a node decodes from its peers, fed arbitrary bytes: decoding
//! returns an error or a value, never a panic or an abort, and a value that decodes
//! encodes to bytes that decode again. (The cargo-fuzz target `peer_messages` drives the
//! same decoders with coverage guidance; this runs on stable in every test run.)
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use proptest::prelude::*;
use synod_core::codec;
use synod_server::gateway::GatewayMsg;
use synod_server::wire::{check_every_peer_decoder, RaftMsg};

fn every_decoder(bytes: &[u8]) {
    if let Err(e) = check_every_peer_decoder(bytes) {
        panic!("{e}: input {bytes:?}");
    }
}

/// Bytes biased towards small values, which postcard reads as enum variants, lengths and
/// small integers, so that generated inputs get past the first field far more often than
/// uniform bytes would.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![3 => 0u8..8, 1 => any::<u8>()], 0..512)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn peer_message_decoders_never_panic(bytes in wire_bytes()) {
        every_decoder(&bytes);
    }
}

/// The shapes that used to abort: one variant nested as deep as the input allows.
#[test]
fn long_runs_of_one_byte_never_abort() {
    for byte in 0u8..8 {
        every_decoder(&vec![byte; 300_000]);
    }
    // An etcd Txn nested 100,000 deep after a few variant tags: refused by the codec's
    // nesting bound wherever the decoder meets it.
    let mut nested = vec![0u8, 0, 3];
    for _ in 0..100_000 {
        nested.extend([0, 1, 3]);
    }
    every_decoder(&nested);
}

/// A forwarded client write whose etcd Txn nests `depth` Txns, encoded.
fn forwarded_txn(depth: usize) -> Vec<u8> {
    use synod_protocols::mvcc::{MvccCommand, RequestOp, TxnRequest};
    use synod_protocols::raft::{RaftMsg as Msg, SessionId};
    // Building, encoding and dropping the value recurse once per level: do that on a
    // thread with room for it, as no node thread has.
    std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(move || {
            let mut txn = TxnRequest::default();
            for _ in 0..depth {
                txn = TxnRequest {
                    success: vec![RequestOp::Txn(txn)],
                    ..TxnRequest::default()
                };
            }
            let msg: GatewayMsg<RaftMsg> = GatewayMsg::Request {
                id: 1,
                msg: Msg::ClientWrite {
                    session: SessionId(1),
                    seq: 1,
                    command: MvccCommand::Txn(txn),
                },
            };
            codec::encode(&msg)
        })
        .expect("spawn")
        .join()
        .expect("encode")
}

/// A peer's gateway request nesting Txns 100,000 deep is refused by the decoder on the
/// node's own stack, while the nesting etcd's gRPC limit lets through still decodes.
#[test]
fn a_forwarded_txn_nested_past_the_bound_is_refused() {
    assert!(codec::decode::<GatewayMsg<RaftMsg>>(&forwarded_txn(50)).is_ok());
    let deep = forwarded_txn(100_000);
    assert!(codec::decode::<GatewayMsg<RaftMsg>>(&deep).is_err());
}

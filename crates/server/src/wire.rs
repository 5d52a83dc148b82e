//! Every message type a node decodes from its peers, in one list, so that the fuzz
//! target (`fuzz/fuzz_targets/peer_messages.rs`) and the decoder tests cover the same set
//! and a new service cannot be left out of one of them.

use serde::de::DeserializeOwned;
use serde::Serialize;
use synod_core::{codec, Actor};
use synod_protocols::beacon::Beacon;
use synod_protocols::chord::Chord;
use synod_protocols::clocks::ClockSync;
use synod_protocols::dynamo::Dynamo;
use synod_protocols::election::bully::Bully;
use synod_protocols::election::chang_roberts::ChangRoberts;
use synod_protocols::mutex::centralized::Centralized;
use synod_protocols::mutex::lamport::LamportMutex;
use synod_protocols::mutex::maekawa::Maekawa;
use synod_protocols::mutex::ricart_agrawala::RicartAgrawala;
use synod_protocols::mutex::token_ring::TokenRing;
use synod_protocols::swim::Swim;
use synod_protocols::txn::TxnNode;

use crate::gateway::GatewayMsg;
use crate::node::KvRaft;
use crate::txn::TxnGatewayMsg;

/// The Raft service's message type (service 3), which the gateway also wraps.
pub type RaftMsg = <KvRaft as Actor>::Msg;

/// Decode `bytes` as `T` the way the node does. Whatever decodes must re-encode to bytes
/// that decode again; `Err` names the type where that fails. A decode error is fine.
fn decodes_or_refuses<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<(), String> {
    match codec::decode::<T>(bytes) {
        Ok(value) if codec::decode::<T>(&codec::encode(&value)).is_err() => Err(format!(
            "{} re-encoded to bytes that do not decode",
            std::any::type_name::<T>()
        )),
        _ => Ok(()),
    }
}

/// Run `bytes` through the decoder of every peer message type: those of the node's
/// services (beacon, clock sync, Chord, Raft, SWIM, Dynamo, ranges), the two gateways',
/// and those of the mutex and election actors of `synod run`.
pub fn check_every_peer_decoder(bytes: &[u8]) -> Result<(), String> {
    decodes_or_refuses::<<Beacon as Actor>::Msg>(bytes)?;
    decodes_or_refuses::<<ClockSync as Actor>::Msg>(bytes)?;
    decodes_or_refuses::<<Chord as Actor>::Msg>(bytes)?;
    decodes_or_refuses::<RaftMsg>(bytes)?;
    decodes_or_refuses::<<Swim as Actor>::Msg>(bytes)?;
    decodes_or_refuses::<<Dynamo as Actor>::Msg>(bytes)?;
    decodes_or_refuses::<<TxnNode as Actor>::Msg>(bytes)?;
    decodes_or_refuses::<GatewayMsg<RaftMsg>>(bytes)?;
    decodes_or_refuses::<TxnGatewayMsg>(bytes)?;
    decodes_or_refuses::<<Centralized as Actor>::Msg>(bytes)?;
    decodes_or_refuses::<<LamportMutex as Actor>::Msg>(bytes)?;
    decodes_or_refuses::<<Maekawa as Actor>::Msg>(bytes)?;
    decodes_or_refuses::<<RicartAgrawala as Actor>::Msg>(bytes)?;
    decodes_or_refuses::<<TokenRing as Actor>::Msg>(bytes)?;
    decodes_or_refuses::<<Bully as Actor>::Msg>(bytes)?;
    decodes_or_refuses::<<ChangRoberts as Actor>::Msg>(bytes)
}

//! # Distributed mutual exclusion: five algorithms behind one client interface
//!
//! Every algorithm here is an [`synod_core::Actor`] with the same client face, so that one
//! simulation harness, one checker and `synod compare mutex` serve all five:
//!
//! - a client sends its node an *acquire* request ([`MutualExclusion::acquire_request`]);
//! - the node replies with a *granted* response ([`MutualExclusion::is_granted`]) when it
//!   has entered the critical section on the client's behalf;
//! - the client later sends a *release* request ([`MutualExclusion::release_request`]) and
//!   the node leaves the critical section.
//!
//! A node serves its clients one at a time, in arrival order ([`ClientQueue`]); while one
//! client holds the section, later acquires wait at the node and start the protocol again
//! once the holder releases.
//!
//! | module | algorithm | messages per entry (light load) |
//! |---|---|---|
//! | [`centralized`] | coordinator with a FIFO queue | 3 |
//! | [`token_ring`] | token ring with regeneration | 1 … ∞ hops (each hop is the token plus its ack) |
//! | [`ricart_agrawala`] | Ricart & Agrawala 1981 | 2(N−1) |
//! | [`lamport`] | Lamport 1978 | 3(N−1) |
//! | [`maekawa`] | Maekawa 1985 + Sanders 1987 | 3(K−1) … 5(K−1), K = 2⌈√N⌉−1 |
//!
//! Each actor exposes [`MutexCounters`] (messages sent to other nodes, entries granted) so
//! that a driver can compute messages per entry; messages a node sends to itself are local
//! calls and are not counted.
//!
//! Safety (the property the simulation suites check after every event): at most one node
//! reports [`MutualExclusion::in_critical_section`] at any time.
//!
//! ## Crashes
//!
//! - [`token_ring`] tolerates crashes (synchronous model): a silent successor is skipped
//!   and a token lost with its holder is regenerated; tested under crash faults.
//! - [`centralized`]: a crashed coordinator stops the system. The remedy (elect a new
//!   coordinator, e.g. with [`crate::election::bully`], and rebuild the queue by asking
//!   every node whether it holds or wants the lock) is not implemented yet.
//! - [`ricart_agrawala`]: without a detector a crashed node never answers, so every
//!   request blocks (mutual exclusion still holds; tested). With
//!   [`ricart_agrawala::RicartAgrawala::with_failure_detector`] a timeout-based detector
//!   (heartbeats every 10 ms, suspicion after 50 ms of silence) removes the crashed node
//!   from the set waited for, and a restarted node announces `Rejoin` so that requesters
//!   send it their request again; safe while delays stay below the timeout (a synchronous
//!   network), tested with a crash and rejoin and with random crashes over many seeds.
//! - [`lamport`]: a crashed node blocks every request (its acknowledgement never comes).
//!   The same detector would apply, but a rejoin must also reset the per-link FIFO
//!   numbering ([`FifoLinks`]) and every queue's copy of the crashed node's request; not
//!   implemented.
//! - [`maekawa`]: a crashed node blocks every quorum it belongs to (about 2√N of them).
//!
//! Lamport's and Maekawa's algorithms need FIFO channels; they number their messages per
//! link and deliver them in order ([`FifoLinks`]), so they are safe on a reordering
//! network. Ricart–Agrawala, the centralized algorithm and the token ring do not need
//! FIFO.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use synod_core::NodeId;
use synod_core::{Actor, ClientId};

pub mod centralized;
pub mod lamport;
pub mod maekawa;
pub mod ricart_agrawala;
pub mod token_ring;

#[cfg(test)]
mod harness;

/// Per-node counters for comparing algorithms. Volatile: a crash resets them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MutexCounters {
    /// Protocol messages this node sent to other nodes.
    pub messages_sent: u64,
    /// Critical-section entries this node granted to its clients.
    pub entries: u64,
}

/// The client face shared by every mutual-exclusion actor.
pub trait MutualExclusion: Actor {
    /// The message a client sends to ask for the critical section.
    fn acquire_request() -> Self::Msg;
    /// The message a client sends to leave the critical section.
    fn release_request() -> Self::Msg;
    /// Whether `msg`, sent by a node to a client, grants it the critical section.
    fn is_granted(msg: &Self::Msg) -> bool;
    /// Whether this node is in the critical section now (holds it for a client).
    fn in_critical_section(&self) -> bool;
    /// This node's counters.
    fn counters(&self) -> MutexCounters;
}

/// Implements [`MutualExclusion`] for an actor whose message enum wraps [`ClientMsg`] in a
/// `Client` variant and which keeps `in_critical_section` and `counters` fields, as every
/// algorithm here does.
macro_rules! client_face {
    ($actor:ty, $msg:ident) => {
        impl $crate::mutex::MutualExclusion for $actor {
            fn acquire_request() -> $msg {
                $msg::Client($crate::mutex::ClientMsg::Acquire)
            }
            fn release_request() -> $msg {
                $msg::Client($crate::mutex::ClientMsg::Release)
            }
            fn is_granted(msg: &$msg) -> bool {
                *msg == $msg::Client($crate::mutex::ClientMsg::Granted)
            }
            fn in_critical_section(&self) -> bool {
                self.in_critical_section
            }
            fn counters(&self) -> $crate::mutex::MutexCounters {
                self.counters
            }
        }
    };
}
use client_face;

/// The clients waiting at one node, served one at a time in arrival order.
#[derive(Clone, Debug, Default)]
pub struct ClientQueue {
    waiting: VecDeque<ClientId>,
    holder: Option<ClientId>,
}

impl ClientQueue {
    /// Queue `client`'s acquire. Returns true if the node was idle (no holder, nobody
    /// else waiting), i.e. the protocol should start a request now. A repeated acquire
    /// from a client that is already waiting (a client's retry) is ignored. One from the
    /// holder is queued: on a reordering network a client's next acquire can overtake its
    /// release.
    pub fn push(&mut self, client: ClientId) -> bool {
        if self.waiting.contains(&client) {
            return false;
        }
        let idle = self.holder.is_none() && self.waiting.is_empty();
        self.waiting.push_back(client);
        idle
    }

    /// The node entered the critical section: the first waiting client now holds it.
    pub fn enter(&mut self) -> Option<ClientId> {
        self.holder = self.waiting.pop_front();
        self.holder
    }

    /// `client` released. Returns true if it was the holder.
    pub fn release(&mut self, client: ClientId) -> bool {
        if self.holder == Some(client) {
            self.holder = None;
            true
        } else {
            false
        }
    }

    /// Whether a client is waiting for the next entry.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The client in the critical section, if any.
    pub fn holder(&self) -> Option<ClientId> {
        self.holder
    }
}

/// The client messages every mutual-exclusion actor embeds in its message enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Client → node: enter the critical section for me.
    Acquire,
    /// Node → client: you are in the critical section.
    Granted,
    /// Client → node: I have left the critical section.
    Release,
}

/// Most out-of-order messages held per link before further ones are dropped: a bound on
/// what an untrusted peer can make a node buffer.
pub const MAX_HELD_PER_LINK: usize = 4096;

/// FIFO delivery per link over a network that may reorder (Lamport 1978 and Maekawa 1985
/// both assume FIFO channels). The sender numbers its messages per destination; the
/// receiver holds a message until every earlier one from the same sender has arrived.
/// TCP gives the same guarantee within one connection. Sequence numbers are volatile, so
/// this does not survive crashes; neither algorithm does.
#[derive(Debug)]
pub struct FifoLinks<M> {
    next_out: BTreeMap<NodeId, u64>,
    next_in: BTreeMap<NodeId, u64>,
    held: BTreeMap<NodeId, BTreeMap<u64, M>>,
}

impl<M> Default for FifoLinks<M> {
    fn default() -> Self {
        FifoLinks {
            next_out: BTreeMap::new(),
            next_in: BTreeMap::new(),
            held: BTreeMap::new(),
        }
    }
}

impl<M> FifoLinks<M> {
    /// The sequence number of the next message to `to`.
    pub fn next_seq(&mut self, to: NodeId) -> u64 {
        let next = self.next_out.entry(to).or_insert(0);
        let seq = *next;
        *next += 1;
        seq
    }

    /// Message `seq` arrived from `from`: the messages now deliverable, in order.
    /// Duplicates and messages beyond [`MAX_HELD_PER_LINK`] are dropped.
    pub fn accept(&mut self, from: NodeId, seq: u64, msg: M) -> Vec<M> {
        let expected = self.next_in.get(&from).copied().unwrap_or(0);
        let held = self.held.entry(from).or_default();
        if seq < expected || held.len() >= MAX_HELD_PER_LINK {
            return Vec::new();
        }
        held.insert(seq, msg);
        let mut next = expected;
        let mut ready = Vec::new();
        while let Some(m) = held.remove(&next) {
            ready.push(m);
            next += 1;
        }
        self.next_in.insert(from, next);
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_links_deliver_in_send_order_and_drop_duplicates() {
        let mut links = FifoLinks::default();
        let from = NodeId(1);
        assert!(links.accept(from, 2, 'c').is_empty());
        assert!(links.accept(from, 1, 'b').is_empty());
        assert_eq!(links.accept(from, 0, 'a'), vec!['a', 'b', 'c']);
        assert!(
            links.accept(from, 1, 'b').is_empty(),
            "a duplicate is dropped"
        );
        assert_eq!(links.accept(from, 3, 'd'), vec!['d']);
        assert_eq!((links.next_seq(from), links.next_seq(from)), (0, 1));
    }
}

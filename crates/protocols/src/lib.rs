//! # synod-protocols: every synod algorithm as a pure state machine
//!
//! This crate does no I/O. It opens no socket and no file, reads no OS clock and draws no
//! OS randomness. Each algorithm is a value that takes inputs and records outputs, and
//! nothing else:
//!
//! - An actor (a type implementing [`synod_core::Actor`]) takes its inputs through
//!   `on_start`, `on_message` and `on_timer`, and records its outputs (sends, replies,
//!   timers) on the [`synod_core::Ctx`] it is handed. Time comes only from
//!   [`synod_core::Ctx::now`], randomness only from [`synod_core::Ctx::rng`] and durable
//!   state only from [`synod_core::Ctx::storage`].
//! - Plain data structures (clocks, filters, version vectors) take the current time as an
//!   argument wherever they need it.
//!
//! A driver owns everything else. `synod-sim` runs these state machines in virtual time
//! under a seeded fault model, and `synod-runtime` runs the same code over TCP with a real
//! disk. Because nothing here can observe which driver it runs under, a failure found by
//! the simulator replays from its seed, and what passed there is what runs on the network.
//!
//! The workspace lints enforce the promise: `HashMap`/`HashSet` (random iteration order),
//! `std::time` and `thread_rng` are disallowed in this crate.
//!
//! ## Families
//!
//! One module per family of algorithms, each opening with a header that states the
//! algorithm, its fault and timing model, the invariants it keeps and the paper it follows:
//!
//! - [`clocks`]: Lamport clocks, vector clocks, dotted version vectors (DVV sets),
//!   hybrid logical clocks, NTP and PTP offset arithmetic, and a clock-synchronization
//!   actor.
//! - [`hashing`]: consistent hashing (a ring with virtual nodes, weights, zones and exact
//!   movement), jump consistent hash and rendezvous hashing.
//! - [`chord`]: the Chord distributed hash table (Stoica et al. 2001/2003) as an actor.
#![warn(missing_docs)]

pub mod beacon;
pub mod bft;
pub mod chord;
pub mod clocks;
pub mod dynamo;
pub mod election;
pub mod hashing;
#[cfg(any(test, feature = "harness"))]
pub mod kv_clients;
pub mod mutex;
pub mod mvcc;
pub mod paxos;
pub mod raft;
pub mod swim;
pub mod twopc;
pub mod txn;

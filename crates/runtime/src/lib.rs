//! # synod-runtime: synod actors as real processes
//!
//! The same [`synod_core::Actor`]s that run in the simulator run here over TCP, with
//! durable storage, under the group-commit loop of DESIGN.md.
#![warn(missing_docs)]
// The runtime is a driver: it reads the OS clock and uses hash maps off the protocol path.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod driver;
pub mod knobs;
pub mod storage;
pub mod transport;

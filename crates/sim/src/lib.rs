//! # synod-sim: a deterministic, fault-injecting simulator for synod actors
//!
//! The simulator runs any [`synod_core::Actor`] on many simulated nodes in virtual
//! nanosecond time, in one thread, with every source of nondeterminism drawn from one seed.
//! The same seed replays the same run exactly, down to the trace hash, so a failing seed is
//! a complete bug report. The style follows FoundationDB's simulation and TigerBeetle's
//! VOPR: faults are first-class and unsynced writes vanish on crash.
//!
//! What it models:
//!
//! - **Network** ([`NetConfig`]): a minimum latency plus an exponential tail, loss,
//!   duplication, reordering, link clogging, and partitions (symmetric, asymmetric,
//!   isolate-one, random split) that heal after a minimum duration.
//! - **Nodes**: crash (volatile state, timers, held output and unsynced writes are lost; a
//!   random prefix of unsynced writes may survive, as on a real disk), restart through
//!   [`synod_core::Actor::on_start`], pause, and per-node clock skew and drift
//!   ([`ClockConfig`]).
//! - **Disk** ([`DiskConfig`]): fsync latency and fsync failures, which stop the node.
//! - **Group commit**, exactly as the real driver does it (DESIGN.md): a handler's writes
//!   join the open batch; `send` and `reply` are held until every write issued so far is
//!   durable; `send_unsynced` leaves at once; one sync is in flight at a time and the next
//!   batch collects meanwhile. Releasing held output before its batch is durable is an
//!   assertion failure.
//!
//! Two modes: **safety** ([`Sim::run_until`] with [`Sim::invariant`]s checked after every
//! event, faults unbounded) and **liveness** ([`Sim::run_liveness`]: faults, then heal,
//! then a convergence predicate must hold by a deadline).
//!
//! Output: a JSONL trace ([`Sim::trace_to_file`]) of every send, delivery, drop, timer,
//! sync, crash and fault, and its hash ([`Sim::trace_hash`]) for determinism checks.
//! [`swarm()`] runs many seeds across cores with a progress bar and prints each failing seed
//! with its replay command.
#![warn(missing_docs)]
// The simulator is a driver, not a protocol: it may use std time for progress bars.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod config;
pub mod fixtures;
mod sim;
pub mod swarm;
mod trace;
mod workload;

pub use config::{ClockConfig, DiskConfig, FaultConfig, NetConfig, SimConfig};
pub use sim::{stream_rng, Sim, SimFailure, SimStats};
pub use swarm::{
    assert_seeds, swarm, swarm_config, swarm_faults, swarm_net, SwarmFailure, SwarmOptions,
    SwarmReport,
};
pub use trace::TraceEvent;
pub use workload::{ClientCtl, Workload};

//! History recording and checkers for synod runs.
//!
//! The simulator (and, later, real-cluster tests) records what every client asked for
//! and what it was told in a [`History`](history::History): an invocation and at most one
//! completion per operation, with times in nanoseconds. A completion is `Ok` (took
//! effect, with a result), `Fail` (certainly did not take effect) or `Info` (unknown:
//! it may take effect at any later time, or never). Histories round-trip through JSON
//! Lines so that a failing run can be saved and checked again.
//!
//! [`linearizability`] decides whether a key-value or register history is linearizable
//! (Herlihy & Wing, "Linearizability: a correctness condition for concurrent objects",
//! TOPLAS 1990): whether every operation can be given one instant inside its interval
//! at which it takes effect, such that the sequential run in that order is legal.
//!
//! - The search is Wing & Gong's ("Testing and verifying concurrent objects", JPDC 1993):
//!   walk the operations in time order, place one whose invocation has been reached,
//!   backtrack when a completed operation is still unplaced.
//! - Explored configurations (the set of placed operations and the model state) are
//!   cached, as proposed by Lowe ("Testing for linearizability", CCPE 2017), so that no
//!   configuration is expanded twice.
//! - Linearizability is local (Herlihy & Wing 1990, Theorem 1), so a key-value history
//!   is checked one key at a time: P-compositionality (Horn & Kroening, "Faster
//!   linearizability checking via P-compositionality", FORTE 2015).
//! - Operations of unknown outcome may be placed anywhere after their invocation or not
//!   at all, the treatment of Jepsen's Knossos checker.
//! - A violation comes back as a shrunk [`CounterExample`](linearizability::CounterExample)
//!   that prints as a timeline; a search over its step budget answers `Unknown`.
//!
//! [`synthetic`] makes linearizable histories of a correct store for tests and benchmarks.
//!
//! This crate is standalone: it does not depend on `synod-core`, so any driver can
//! record histories for it.
//!
//! ```
//! use synod_check::history::{History, Op, OpResult, Process};
//! use synod_check::linearizability::{check_kv, CheckResult};
//!
//! let mut history = History::new();
//! let key = || "x".to_owned();
//! let write = history.invoke(Process(1), Op::Write { key: key(), value: 1 }, 10);
//! history.ok(write, OpResult::WriteOk, 20)?;
//! // A read that starts after the write returned must see it.
//! let read = history.invoke(Process(2), Op::Read { key: key() }, 30);
//! history.ok(read, OpResult::ReadOk(None), 40)?;
//! let CheckResult::Violation(counter_example) = check_kv(&history) else {
//!     panic!("a stale read is a violation");
//! };
//! assert_eq!(counter_example.key.as_deref(), Some("x"));
//! # Ok::<(), synod_check::history::HistoryError>(())
//! ```

#![warn(missing_docs)]
// The memo table of the linearizability search is a hash set: it is only probed, never
// iterated, so hash order cannot leak into results, and it is the hot path. The
// workspace ban on std hash collections exists for determinism inside protocols.
#![allow(clippy::disallowed_types)]

pub mod history;
pub mod linearizability;
pub mod synthetic;

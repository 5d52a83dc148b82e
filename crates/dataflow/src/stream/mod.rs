//! # Stream processing: event time, windows, watermarks and exactly-once checkpoints
//!
//! A streaming dataflow in the line of Apache Flink's design:
//!
//! - **Model.** Akidau et al., "The Dataflow Model: A Practical Approach to Balancing
//!   Correctness, Latency, and Cost in Massive-Scale, Unbounded, Out-of-Order Data
//!   Processing", VLDB 2015: event time, windows (tumbling, sliding, sessions, §2.2), watermarks
//!   (§2.3), triggers with early, on-time and late firings and allowed lateness (§2.4).
//! - **Exactly-once.** Carbone et al., "Lightweight Asynchronous Snapshots for Distributed
//!   Dataflows", arXiv:1506.08603, 2015 (ABS): barriers injected at the sources, barrier
//!   alignment at tasks with several inputs (§4.1), snapshots written in the background, and
//!   recovery of every task from the latest complete checkpoint with sources rewound to its
//!   offsets (§4.3). ABS is the acyclic-graph variant of Chandy & Lamport, "Distributed
//!   Snapshots: Determining Global States of Distributed Systems", ACM TOCS 3(1), 1985: the
//!   barrier is the marker; on a DAG with FIFO channels and alignment no channel state needs
//!   saving.
//! - **Sinks.** Output is exactly-once end to end because the sink is transactional: output
//!   between barriers `n-1` and `n` is written to a pending file and made durable
//!   (pre-commit) when barrier `n` passes the sink, and published (commit, an atomic rename)
//!   only when checkpoint `n` is complete. Recovery commits pending output of complete
//!   checkpoints (commit is idempotent) and discards the rest.
//!
//! ## Pieces
//!
//! - [`time`]: event time, bounded out-of-orderness watermarks, the min-over-inputs tracker
//!   with idle channels.
//! - [`window`]: assigners, triggers, aggregates and the pure keyed window operator.
//! - [`checkpoint`]: barrier alignment and the checkpoint coordinator's bookkeeping.
//! - [`pipeline`]: the typed API, `source → map/filter/flat_map → key_by → window →
//!   aggregate → sink`.
//! - [`exec`]: the executor: parallel source and window tasks on threads, hash partitioning
//!   by key, credit-based flow control, checkpoints in a durable state backend (files with
//!   fsync), the two-phase-commit file sink, and restart from the latest checkpoint.
//! - [`dist`]: the same tasks spread over worker processes: a job manager that assigns
//!   tasks, coordinates checkpoints over TCP and restarts the job from the latest complete
//!   checkpoint when a worker dies; a TCP shuffle with length-prefixed frames and credits.
//! - [`file`]: a file source split into byte ranges, replayable by byte offset.
//! - [`jobs`]: built-in jobs (windowed counts, sessionization, the Yahoo streaming benchmark
//!   shape) with their batch reference answers.
//! - `sim` (tests and the `harness` feature): the coordinator and checkpoint protocol as
//!   actors in `synod-sim`, crashed at random, checked for exactly-once output.
//!
//! ## Faults assumed
//!
//! Tasks fail by crashing (fail-stop); a crash anywhere restarts every task from the latest
//! complete checkpoint (Flink's global failover). Channels are FIFO while both ends live.
//! Sources are replayable from an offset (deterministic generators or files). Files that
//! were fsynced survive a crash.
//!
//! ## Differences from the chapter's sketch
//!
//! The chapter's `StreamProcessor` applies operators to one in-memory stream with processing
//! time windows and no fault tolerance. Here time is event time with watermarks, operators are
//! parallel and partitioned by key, and state and output are exactly-once across crashes.

pub mod bench;
pub mod checkpoint;
pub mod dist;
pub mod exec;
pub mod file;
pub mod jobs;
pub mod pipeline;
pub mod time;
pub mod window;

#[cfg(any(test, feature = "harness"))]
pub mod sim;

#[cfg(test)]
mod tests;

pub use checkpoint::{CheckpointCoordinator, CheckpointId};
pub use pipeline::{Event, Pipeline, Source, SourcePoll};
pub use time::EventTime;
pub use window::{Aggregate, Count, Fired, Timing, Trigger, Window, WindowAssigner};

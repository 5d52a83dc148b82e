//! # MapReduce (Dean & Ghemawat, "MapReduce: Simplified Data Processing on Large
//! Clusters", OSDI 2004)
//!
//! A job is a map function over input records and a reduce function over each key's
//! values. The input is cut into M splits; each map task partitions its output into R
//! parts by a hash of the key, sorts each part and writes it to the worker's local disk.
//! Each of the R reduce tasks fetches its part from every map output over the network,
//! merges the sorted runs and applies the reduce function, writing one output file.
//!
//! The master ([`master`]) is a pure, deterministic state machine (§3.2): each task is
//! idle, in progress (with one or more attempts) or completed. Workers poll it; a worker
//! that stops polling for `worker_timeout` is dead (§3.3), its in-progress tasks become
//! idle, and so do its *completed map* tasks, whose output was on its local disk. Near the
//! end of a phase idle workers get backup attempts of the stragglers (§3.6); the first
//! completion wins. Reduce output is committed by an atomic rename of the attempt's
//! temporary file (§3.3, "Semantics in the Presence of Failures"); the master records one
//! commit per reduce task. The master persists its state (fsync) so a restarted master
//! resumes the job.
//!
//! Fault model: crash-stop workers (a restarted worker is a new worker with an empty
//! disk), lost, duplicated and reordered messages, partitions, and master crashes with
//! durable state. Byzantine faults are out of scope. Map and reduce functions must be
//! deterministic; then the job's output is byte-identical whatever fails (§3.3).
//!
//! Differences from the chapter's sketch: the sketch's master hands out tasks once and
//! never re-executes completed map tasks; here map output on a dead worker is re-executed,
//! reducers that cannot fetch report it, and stragglers get backups.
//!
//! Differences from the paper: reduce tasks start only when every map task is complete
//! (the paper lets reducers fetch while maps still run); the combiner is a fold of two
//! values (associative and commutative), not a general function. One master and its
//! workers may run several jobs in a row (a session: PageRank's build and iterations), with
//! requests and map output tagged by job. PageRank keeps its graph in binary partitions
//! that are not shuffled (Lin & Schatz, "Design Patterns for Efficient Graph Algorithms in
//! MapReduce", MLG 2010) and runs all its iterations in one job of persistent workers that
//! keep their partitions in memory and exchange only rank contributions, in supersteps
//! with checkpoints ([`iterate`]; as Pregel, Malewicz et al., SIGMOD 2010); each worker
//! process caches the parsed, loop-invariant partitions (HaLoop, Bu et al., VLDB 2010).

pub mod master;

pub mod api;
pub mod driver;
pub mod gen;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
pub mod iterate;
pub mod jobs;
mod radix;
pub mod shuffle;
pub mod task;
pub mod wire;
pub mod worker;

pub mod baseline;
#[cfg(test)]
mod tests;

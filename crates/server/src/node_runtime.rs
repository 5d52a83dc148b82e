//! The tokio runtime a node process runs on.
//!
//! Experiment knobs (environment variables read once at start, for
//! `bench/etcd-cpu-per-write.sh`): `SYNOD_WORKER_THREADS` (default: one per core),
//! `SYNOD_EVENT_INTERVAL` (ticks between I/O polls; tokio's default 61) and
//! `SYNOD_GLOBAL_QUEUE_INTERVAL`, and `SYNOD_FOLLOWER_PROPOSALS=1` (followers propose
//! writes through Raft instead of forwarding them to the leader's gateway), and
//! `SYNOD_REPLICATE_PER_WRITE=1` (the leader sends `AppendEntries` after every client
//! write, as before session 8, instead of once per group-commit batch),
//! `SYNOD_APPEND_ENTRIES` and `SYNOD_APPEND_IN_FLIGHT` (Raft's entries per
//! `AppendEntries` and requests in flight per follower; before session 8: 64 and 8).
//! Session 9: `SYNOD_WAL_PREALLOCATE` (bytes zero-filled ahead of the Raft WAL; default
//! 0, off), `SYNOD_DIRECT_DELIVERY=1` (the router puts a peer message straight into the
//! actor's inbox when nothing is queued before it), and in the driver
//! `SYNOD_GROUP_COMMIT_LINGER_US` / `SYNOD_GROUP_COMMIT_YIELDS` (`Gather::from_env`).

use synod_runtime::knobs::{flag, number};

/// The multi-threaded runtime of `synod node`.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = number::<usize>("SYNOD_WORKER_THREADS").filter(|&n| n > 0) {
        builder.worker_threads(n);
    }
    if let Some(n) = number::<u32>("SYNOD_EVENT_INTERVAL").filter(|&n| n > 0) {
        builder.event_interval(n);
    }
    if let Some(n) = number::<u32>("SYNOD_GLOBAL_QUEUE_INTERVAL").filter(|&n| n > 0) {
        builder.global_queue_interval(n);
    }
    builder.build()
}

/// Whether followers propose client writes through Raft (`RaftConfig::follower_proposals`)
/// rather than forward them to the leader's gateway. Off unless `SYNOD_FOLLOWER_PROPOSALS=1`:
/// under `check perf --load=l` on a loaded machine it gave more writes/s in the CPU probe
/// but longer stalls in whole check perf runs (docs/etcdperf.md, session 5).
pub fn follower_proposals() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| flag("SYNOD_FOLLOWER_PROPOSALS"))
}

/// Whether the leader replicates after every client write (the behaviour before
/// `RaftConfig::replicate_at_batch_end`), for A/B runs: `SYNOD_REPLICATE_PER_WRITE=1`.
pub fn replicate_per_write() -> bool {
    flag("SYNOD_REPLICATE_PER_WRITE")
}

/// Raft's most entries per `AppendEntries` and most requests in flight per follower:
/// 4096 and 32 unless `SYNOD_APPEND_ENTRIES` / `SYNOD_APPEND_IN_FLIGHT` say otherwise.
pub fn append_limits() -> (usize, usize) {
    let entries = number::<usize>("SYNOD_APPEND_ENTRIES").filter(|&n| n > 0);
    let in_flight = number::<usize>("SYNOD_APPEND_IN_FLIGHT").filter(|&n| n > 0);
    (entries.unwrap_or(4096), in_flight.unwrap_or(32))
}

/// Bytes zero-filled ahead of the Raft WAL (`DiskOptions::preallocate_bytes`):
/// `SYNOD_WAL_PREALLOCATE=1048576` for A/B runs. Off by default: it makes each fdatasync
/// cheaper in isolation but showed no gain in node CPU per write under `check perf`
/// (docs/etcdperf.md, session 9).
pub fn wal_preallocate_bytes() -> u64 {
    number::<u64>("SYNOD_WAL_PREALLOCATE").unwrap_or(0)
}

/// Whether peer messages skip the per-service forwarding task when it has nothing queued:
/// `SYNOD_DIRECT_DELIVERY=1`.
pub fn direct_delivery() -> bool {
    flag("SYNOD_DIRECT_DELIVERY")
}
